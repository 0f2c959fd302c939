"""HL7 v2 message plumbing shared by every message type: the delimiters, the character
set (MSH-18), reading an unescaped field value, the error of HL7 Table 0357 with its
location, and the original-mode acknowledgement (HL7 v2.5.1 Chapter 2: 2.5 message
construction, 2.7 escapes, 2.9.2 acknowledgement, 2.14.9 MSH, 2.15.8 MSA, 2.15.5 ERR).

Pure functions, no I/O. :mod:`dicomvault.hl7.orm` uses them for ORM^O01.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from typing import Any, Literal

from dicomvault.model.digits import ascii_digits

#: The delimiters (HL7 v2.5.1 2.5.4): the field separator and the four encoding characters
#: (component, repetition, escape, subcomponent). HL7 v2.7 adds an
#: optional fifth one, the truncation character ``#``; both forms are accepted.
FIELD_SEPARATOR = "|"
ENCODING_CHARACTERS = ("^~\\&", "^~\\&#")

#: MSH-12 versions accepted: 2.3 and later (IHE RAD-4 is specified for 2.3.1 and 2.5.1).
VERSION = re.compile(r"^2\.([3-9])(\.\d+)*$")

# HL7 Table 0357 (Message error condition codes).
SEGMENT_SEQUENCE_ERROR = 100
REQUIRED_FIELD_MISSING = 101
DATA_TYPE_ERROR = 102
TABLE_VALUE_NOT_FOUND = 103
UNSUPPORTED_MESSAGE_TYPE = 200
UNSUPPORTED_EVENT_CODE = 201
UNSUPPORTED_VERSION_ID = 203
UNKNOWN_KEY_IDENTIFIER = 204
APPLICATION_INTERNAL_ERROR = 207

_ERROR_TEXT = {
    0: "Message accepted",
    SEGMENT_SEQUENCE_ERROR: "Segment sequence error",
    REQUIRED_FIELD_MISSING: "Required field missing",
    DATA_TYPE_ERROR: "Data type error",
    TABLE_VALUE_NOT_FOUND: "Table value not found",
    UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    UNSUPPORTED_EVENT_CODE: "Unsupported event code",
    UNSUPPORTED_VERSION_ID: "Unsupported version id",
    UNKNOWN_KEY_IDENTIFIER: "Unknown key identifier",
    APPLICATION_INTERNAL_ERROR: "Application internal error",
}

#: MSH-18 character sets (HL7 Table 0211) → Python codecs. Empty means the HL7 default,
#: ASCII; UTF-8 is accepted then too (a superset many senders use without saying so).
_CHARSETS = {
    "": "utf-8",
    "ASCII": "ascii",
    "UNICODE UTF-8": "utf-8",
    "UNICODE": "utf-8",
    "8859/1": "iso8859-1",
    "8859/2": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/6": "iso8859-6",
    "8859/7": "iso8859-7",
    "8859/8": "iso8859-8",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
}


@dataclass(frozen=True)
class Location:
    """Where an error is (HL7 v2.5.1 ERL data type): segment id, its sequence, field."""

    segment: str
    field: int = 0
    sequence: int = 1

    def __str__(self) -> str:
        return f"{self.segment}-{self.field}" if self.field else self.segment


class Hl7Error(Exception):
    """A message that is answered with a negative acknowledgement.

    Parameters
    ----------
    message
        One line, naming the field (it goes to MSA-3 and ERR-8).
    ack_code
        ``AR`` (application reject: the message itself is unacceptable) or ``AE``
        (application error: its content cannot be applied), HL7 Table 0008.
    code
        HL7 Table 0357 error condition code.
    location
        Segment and field at fault, when one is.
    """

    def __init__(
        self,
        message: str,
        *,
        ack_code: Literal["AR", "AE"] = "AE",
        code: int = REQUIRED_FIELD_MISSING,
        location: Location | None = None,
    ) -> None:
        super().__init__(message)
        self.ack_code = ack_code
        self.code = code
        self.location = location


@dataclass(frozen=True)
class Header:
    """The MSH fields an acknowledgement needs (HL7 v2.5.1 2.14.9)."""

    sending_application: str = ""
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    message_type: str = ""
    trigger_event: str = ""
    control_id: str = ""
    processing_id: str = "P"
    version: str = "2.5.1"
    charset: str = ""
    codec: str = "utf-8"


# --------------------------------------------------------------------------- header


def guess_header(data: bytes) -> Header:
    """Best-effort MSH fields of a message that may not parse, for its NACK.

    Reads the first line as ``|``-separated ASCII; whatever is missing stays empty, so a
    NACK can always be written and MSA-2 echoes MSH-10 whenever the sender put one.
    """
    first = data.lstrip()[:4096].replace(b"\n", b"\r").split(b"\r", 1)[0]
    text = first.decode("latin-1")
    if not text.startswith("MSH") or len(text) < 4:
        return Header()
    parts = text.split(text[3])
    # parts[1] is MSH-2, so MSH-n is parts[n - 1] (MSH-1 is the separator itself).

    def at(n: int) -> str:
        return parts[n - 1].split("^", 1)[0].strip() if len(parts) >= n else ""

    kind = parts[8].split("^") if len(parts) >= 9 else []
    version = at(12)
    return Header(
        sending_application=at(3),
        sending_facility=at(4),
        receiving_application=at(5),
        receiving_facility=at(6),
        message_type=kind[0].strip() if kind else "",
        trigger_event=kind[1].strip() if len(kind) > 1 else "",
        control_id=at(10)[:199],
        processing_id=at(11) or "P",
        version=version if VERSION.match(version) else "2.5.1",
    )


def decode(data: bytes) -> tuple[str, str]:
    """The message text and the codec used, from MSH-18 (HL7 v2.5.1 2.15.9.18).

    Segments end with CR (HL7 v2.5.1 2.5.1); LF and CR LF, which file-based tools and some
    senders produce, are read as CR.

    Raises
    ------
    Hl7Error
        AR when MSH-18 names a character set we do not know or the bytes do not decode.
    """
    header = data.lstrip()[:4096].replace(b"\n", b"\r").split(b"\r", 1)[0].decode("latin-1")
    parts = header.split(header[3]) if header.startswith("MSH") and len(header) > 3 else []
    charset = parts[17].split("~", 1)[0].split("^", 1)[0].strip().upper() if len(parts) > 17 else ""
    codec = _CHARSETS.get(charset)
    if codec is None:
        raise Hl7Error(
            f"MSH-18 character set {charset!r} is not supported"
            f" (use one of {', '.join(repr(c) for c in _CHARSETS if c)})",
            ack_code="AR",
            code=TABLE_VALUE_NOT_FOUND,
            location=Location("MSH", 18),
        )
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as exc:
        if charset:
            raise Hl7Error(
                f"the message is not valid {charset} (MSH-18) at byte {exc.start}",
                ack_code="AR",
                code=DATA_TYPE_ERROR,
                location=Location("MSH", 18),
            ) from None
        # No MSH-18 and not UTF-8: Latin-1 is what such senders almost always mean.
        codec = "iso8859-1"
        text = data.decode(codec)
    text = text.replace("\r\n", "\r").replace("\n", "\r").strip("\r\n\t ")
    return text, codec


#: HL7 v2.5.1 2.7.4: escape sequences for the delimiters themselves.
_DELIMITER_ESCAPES = {"F": "|", "S": "^", "T": "&", "R": "~", "E": "\\"}
_HEX = re.compile(r"^X(?:[0-9A-Fa-f]{2})+$")


def unescape(text: str) -> str:
    """Decode the escape sequences of a value (HL7 v2.5.1 2.7).

    ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\`` → the delimiter; ``\\Xhh…\\`` → those bytes
    as ISO 8859-1; highlighting ``\\H\\``/``\\N\\`` is dropped and formatting commands
    (``\\.br\\`` …) become a space — a DICOM value has neither. python-hl7's own
    unescaping logs and drops what it does not know; here it is an error instead.

    Raises
    ------
    Hl7Error
        AE 102 for an unterminated, empty or unsupported escape sequence (character set
        switching ``\\C…\\``/``\\M…\\`` included).
    """
    if "\\" not in text:
        return text
    out: list[str] = []
    pos = 0
    while pos < len(text):
        start = text.find("\\", pos)
        if start < 0:
            out.append(text[pos:])
            break
        out.append(text[pos:start])
        end = text.find("\\", start + 1)
        if end < 0:
            raise Hl7Error(f"unterminated escape sequence in {text[:80]!r}", code=DATA_TYPE_ERROR)
        sequence = text[start + 1 : end]
        if sequence in _DELIMITER_ESCAPES:
            out.append(_DELIMITER_ESCAPES[sequence])
        elif _HEX.match(sequence):
            out.append(bytes.fromhex(sequence[1:]).decode("latin-1"))
        elif sequence.startswith("."):
            out.append(" ")
        elif sequence not in ("H", "N"):
            shown = "\\" + sequence + "\\"
            raise Hl7Error(f"escape sequence {shown} is not supported", code=DATA_TYPE_ERROR)
        pos = end + 1
    return "".join(out)


def value(segment: Any, field_num: int, component: int = 1, sub: int = 1, rep: int = 1) -> str:
    """One unescaped value of a python-hl7 segment: field ``field_num``, repetition
    ``rep``, component, subcomponent (1-based, as HL7 numbers them); ``""`` when absent.

    A tree shallower than asked for answers its leaf for position 1 and ``""`` beyond
    (``PID-5.1`` of ``Doe`` is ``Doe``, ``PID-5.2`` is empty); a deeper one answers its
    first leaf. The HL7 null ``""`` (HL7 v2.5.1 2.5.3: "delete the value") also reads as
    empty: a worklist item has no separate "unknown" and "deleted". Not for MSH-1/MSH-2,
    which hold the delimiters themselves.

    Raises
    ------
    Hl7Error
        AE 102 naming the field, for a malformed escape sequence.
    """
    if field_num >= len(segment):
        return ""
    node: Any = segment[field_num]
    for index in (rep, component, sub):
        if isinstance(node, str):
            if index != 1:
                return ""
            continue
        if index > len(node):
            return ""
        node = node[index - 1]
    while not isinstance(node, str):
        node = node[0] if len(node) else ""
    raw = node.strip()
    if raw == '""':
        return ""
    try:
        return unescape(raw).strip()
    except Hl7Error as exc:
        where = Location(str(segment[0]).strip(), field_num)
        raise Hl7Error(f"{where}: {exc}", code=DATA_TYPE_ERROR, location=where) from None


# --------------------------------------------------------------------------- ACK


def escape(text: str) -> str:
    """HL7 v2.5.1 2.7.4 escapes for the delimiters, so free text cannot break the ACK."""
    out = text.replace("\\", "\\E\\")
    for char, code in (("|", "F"), ("^", "S"), ("&", "T"), ("~", "R")):
        out = out.replace(char, f"\\{code}\\")
    return re.sub(r"[\r\n]+", " ", out)


def build_ack(
    header: Header,
    ack_code: Literal["AA", "AE", "AR"],
    *,
    text: str = "",
    error: Hl7Error | None = None,
    control_id: str,
    now: datetime.datetime | None = None,
) -> bytes:
    """The original-mode acknowledgement (HL7 v2.5.1 2.9.2, ACK: MSH MSA [ERR]).

    MSH-3/4 and 5/6 swap the request's sender and receiver; MSH-9 is ACK (with the
    request's trigger event from v2.4 on: ``ACK^O01^ACK``); MSH-10 is ``control_id``, our
    own; MSA-1 the acknowledgement code, MSA-2 the request's MSH-10, MSA-3 the text. An
    error adds ERR: v2.5+ form (ERR-2 location, ERR-3 Table 0357 code, ERR-4 severity E,
    ERR-8 user message) or, for 2.3/2.4 senders, ERR-1 (segment^sequence^field^code).
    The ACK is encoded in the request's character set.
    """
    stamp = (now or datetime.datetime.now()).strftime("%Y%m%d%H%M%S")
    minor = tuple(int(p) for p in header.version.split(".")[1:3] if ascii_digits(p))
    kind = "ACK"
    if minor >= (4,) and header.trigger_event:
        kind = f"ACK^{escape(header.trigger_event)}^ACK"
    msh = "|".join(
        [
            "MSH",
            "^~\\&",
            escape(header.receiving_application) or "DICOMVAULT",
            escape(header.receiving_facility),
            escape(header.sending_application),
            escape(header.sending_facility),
            stamp,
            "",
            kind,
            escape(control_id),
            escape(header.processing_id),
            escape(header.version),
        ]
    )
    if header.charset:
        msh += "||||||" + escape(header.charset)
    message = error_text = escape(str(error) if error is not None else text)
    segments = [msh, f"MSA|{ack_code}|{escape(header.control_id)}|{message}"]
    if error is not None:
        where = error.location or Location("")
        code = f"{error.code}^{escape(_ERROR_TEXT.get(error.code, ''))}^HL70357"
        if minor >= (5,):
            location = f"{where.segment}^{where.sequence}^{where.field or ''}".rstrip("^")
            segments.append(f"ERR||{location if where.segment else ''}|{code}|E||||{error_text}")
        else:
            sub = code.replace("^", "&")
            segments.append(
                f"ERR|{where.segment}^{where.sequence if where.segment else ''}"
                f"^{where.field or ''}^{sub}"
            )
    return ("\r".join(segments) + "\r").encode(header.codec, errors="replace")
