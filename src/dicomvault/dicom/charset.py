"""Specific Character Set handling without Python warnings.

PS3.3 C.12.1.1.2 names the character sets; PS3.5 6.1.2.4 / 6.1.2.5 say how values with
ISO 2022 code extensions switch between them with escape sequences, and that the
delimiters (``\\``, ``^``, ``=`` in PN; CR, LF, TAB, FF in text) reset to the first set.

pydicom implements the same decoding but reports problems with :func:`warnings.warn`,
which is process-global state and unsafe to capture from several ingest threads at once.
Here every problem is returned as a string instead, so it can be kept in
:attr:`~dicomvault.model.records.IndexRecord.warnings`. The tables themselves are pydicom's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.charset import CODES_TO_ENCODINGS, STAND_ALONE_ENCODINGS, handled_encodings
from pydicom.charset import python_encoding as _PYTHON_ENCODING

#: Python codec for ISO-IR 6 (ASCII). Latin-1 so that stray 8-bit bytes in a data set
#: without (0008,0005) still decode instead of failing, as every viewer does.
DEFAULT_ENCODING = "iso8859"

#: ISO 2022 ESC: a value without it that is ASCII decodes as ASCII in every character
#: set (PS3.5 6.1.2.5.3), so it needs no codec.
ESC = 0x1B
_FRAGMENTS = re.compile(rb"(^[^\x1b]+|[\x1b][^\x1b]*)")

#: PS3.5 6.1.2.5.3: delimiters that return to the default character repertoire.
PN_DELIMITERS = frozenset(b"\\^=")
TEXT_DELIMITERS = frozenset(b"\r\n\t\f")
MULTI_VALUE_DELIMITERS = frozenset(b"\\")


@dataclass(frozen=True, slots=True)
class Charset:
    """The Python codecs for one data set's (0008,0005) value, first one default."""

    encodings: tuple[str, ...]


DEFAULT_CHARSET = Charset((DEFAULT_ENCODING,))


def _corrected_term(term: str) -> str | None:
    """Return the defined term ``term`` was probably meant to be (common misspellings)."""
    if re.match(r"^ISO[^_]IR", term):
        return "ISO_IR" + term[6:]
    if re.match(r"^(?=ISO.2022.IR.)(?!ISO 2022 IR )", term):
        return "ISO 2022 IR " + term[12:]
    return None


def resolve_charset(terms: Sequence[str]) -> tuple[Charset, list[str]]:
    """Map the defined terms of (0008,0005) to Python codecs (PS3.3 C.12.1.1.2).

    Parameters
    ----------
    terms : sequence of str
        The values of Specific Character Set, in order; the first may be empty
        (meaning ISO-IR 6 when code extensions follow).

    Returns
    -------
    Charset, list of str
        The codecs, and one warning per term that was misspelled or unknown. An unknown
        term is replaced by ISO-IR 6 (decoded as Latin-1 so no byte is lost).
    """
    warnings: list[str] = []
    if not terms:
        return DEFAULT_CHARSET, warnings
    codecs_: list[str] = []
    for index, raw_term in enumerate(terms):
        term = raw_term.strip()
        if term == "" and index == 0:
            codecs_.append(DEFAULT_ENCODING)
            continue
        codec = _PYTHON_ENCODING.get(term)
        if codec is None:
            patched = _corrected_term(term)
            if patched is not None and patched in _PYTHON_ENCODING:
                codec = _PYTHON_ENCODING[patched]
                warnings.append(f"misspelled Specific Character Set {term!r}; read as {patched!r}")
            else:
                codec = DEFAULT_ENCODING
                warnings.append(
                    f"unknown Specific Character Set {term!r}; text decoded as ISO_IR 6"
                )
        codecs_.append(codec)
    # PS3.5 6.1.2.5.4 (d): UTF-8, GB18030 and GBK allow no code extensions.
    stripped = [t.strip() for t in terms]
    if len(terms) > 1:
        if stripped[0] in STAND_ALONE_ENCODINGS:
            warnings.append(
                f"Specific Character Set {stripped[0]!r} allows no code extensions; "
                f"ignored {', '.join(stripped[1:])}"
            )
            codecs_ = codecs_[:1]
        else:
            kept = [codecs_[0]]
            for term, codec in zip(stripped[1:], codecs_[1:], strict=True):
                if term in STAND_ALONE_ENCODINGS:
                    warnings.append(
                        f"Specific Character Set {term!r} cannot be a code extension; ignored"
                    )
                else:
                    kept.append(codec)
            codecs_ = kept
    return Charset(tuple(codecs_)), warnings


def _decode_escaped(fragment: bytes, charset: Charset, delimiters: frozenset[int]) -> str:
    """Decode one fragment that starts with an escape sequence (PS3.5 6.1.2.5)."""
    seq_length = 4 if fragment.startswith((b"\x1b$(", b"\x1b$)")) else 3
    codec = CODES_TO_ENCODINGS.get(fragment[:seq_length])
    encodings = charset.encodings
    if codec is None or (codec not in encodings and codec != DEFAULT_ENCODING):
        raise UnicodeError("unknown escape sequence")
    if codec in handled_encodings:
        # Python's ISO 2022 codecs consume the escape sequence themselves.
        return fragment.decode(codec)
    body = fragment[seq_length:]
    for index, byte in enumerate(body):
        if byte in delimiters:
            # A delimiter resets to the first character set (PS3.5 6.1.2.5.3).
            return body[:index].decode(codec) + body[index:].decode(encodings[0])
    return body.decode(codec)


def decode_text(raw: bytes, charset: Charset, delimiters: frozenset[int]) -> tuple[str, str | None]:
    """Decode ``raw`` with ``charset``; return the text and a warning, if any.

    Bytes that cannot be decoded become U+FFFD and the warning says so: the data set is
    still stored byte for byte, only its index text is lossy.
    """
    if raw.isascii() and ESC not in raw:
        return raw.decode("ascii"), None
    encodings = charset.encodings
    try:
        if ESC not in raw:
            return raw.decode(encodings[0]), None
        parts = []
        for fragment in _FRAGMENTS.findall(raw):
            if fragment[0] == ESC:
                parts.append(_decode_escaped(fragment, charset, delimiters))
            else:
                parts.append(fragment.decode(encodings[0]))
        return "".join(parts), None
    except (UnicodeError, LookupError):
        text = raw.decode(encodings[0], errors="replace")
        return text, (
            f"text not valid in Specific Character Set ({', '.join(charset.encodings)}); "
            "undecodable bytes replaced"
        )
