"""C-FIND / C-MOVE / C-GET Identifiers ↔ :mod:`dicomvault.model.query` values.

Decoding (PS3.4 C.4.1.1.3, C.2.2.2): the Identifier is read with our own reader
(:mod:`dicomvault.dicom.reader`) and its text decoded with the request's Specific
Character Set exactly as ingest decodes stored data (:mod:`dicomvault.dicom.values`),
so a key and a stored value compare as the same Unicode text.

Encoding (PS3.4 C.4.1.1.3.2, C.2.2.2 "Specific Character Set"): a response carries the
character set of the matched data — the stored study's (0008,0005) — when it can encode
every value; otherwise (e.g. a patient whose studies use different sets) the whole
response is ISO_IR 192 (UTF-8). With no stored set, ASCII values go without (0008,0005)
and anything else as ISO_IR 192. pydicom writes the data set in the negotiated syntax.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import UID

from dicomvault.dicom.charset import DEFAULT_CHARSET, Charset, resolve_charset
from dicomvault.dicom.reader import DataSet, Reader
from dicomvault.dicom.values import SINGLE_VALUED, STRING_VRS, strings
from dicomvault.model.errors import CannotParse
from dicomvault.model.query import (
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
    QUERY_RETRIEVE_LEVEL,
    SPECIFIC_CHARACTER_SET,
    UNABLE_TO_PROCESS,
    InformationModel,
    InvalidQuery,
    Level,
    Match,
    Query,
    QueryKey,
)

RETRIEVE_AE_TITLE = 0x00080054
_NOT_KEYS = frozenset({QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET, RETRIEVE_AE_TITLE})
_TEXT_VRS = frozenset({"SH", "LO", "UC", "ST", "LT", "UT", "PN"})
UTF8 = "ISO_IR 192"


@lru_cache(maxsize=64)
def _encoding(transfer_syntax_uid: str) -> tuple[bool, bool, bool]:
    uid = UID(transfer_syntax_uid)
    if not uid.is_transfer_syntax:
        raise InvalidQuery(
            f"unknown transfer syntax {transfer_syntax_uid}", status=UNABLE_TO_PROCESS
        )
    return uid.is_implicit_VR, uid.is_little_endian, uid.is_deflated


def _vr(tag: int, sent: str) -> str:
    try:
        vr = str(dictionary_VR(tag))
    except KeyError:
        return sent
    return sent if " or " in vr else vr


def _charset(ds: DataSet) -> Charset:
    element = ds.get(SPECIFIC_CHARACTER_SET)
    if element is None or not isinstance(element.value, bytes) or not element.value:
        return DEFAULT_CHARSET
    terms = element.value.decode("ascii", errors="replace").rstrip(" \0").split("\\")
    charset, _problems = resolve_charset(terms)  # unknown sets read as ISO-IR 6 (C.2.2.2)
    return charset


def _keys(ds: DataSet, charset: Charset, little: bool) -> tuple[QueryKey, ...]:
    keys = []
    ignored: list[str] = []
    for tag in sorted(ds):
        if tag >> 16 in (0x0000, 0x0002) or tag & 0xFFFF == 0 or tag in _NOT_KEYS:
            continue
        element = ds[tag]
        vr = _vr(tag, element.vr)
        keyword = keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
        if vr == "SQ" or isinstance(element.value, list):
            items_raw = element.value if isinstance(element.value, list) else []
            items = (
                None
                if not items_raw
                else _keys(items_raw[0], _item_charset(items_raw[0], charset), little)
            )
            keys.append(QueryKey(tag, keyword, "SQ", None, items))
            continue
        raw = element.value if isinstance(element.value, bytes) else b""
        if not raw:
            value = ""
        elif vr in STRING_VRS:
            parts = strings(raw, vr, charset, ignored)
            value = parts[0] if vr in SINGLE_VALUED else "\\".join(parts)
            if vr == "PN":
                value = "\\".join(v.rstrip("=") for v in value.split("\\"))
        else:
            value = _binary_text(raw, vr, little)
        keys.append(QueryKey(tag, keyword, vr, value))
    return tuple(keys)


def _item_charset(item: DataSet, parent: Charset) -> Charset:
    return _charset(item) if SPECIFIC_CHARACTER_SET in item else parent


def _binary_text(raw: bytes, vr: str, little: bool) -> str:
    from dicomvault.dicom.values import BINARY_NUMBER_FORMATS, binary_numbers

    if vr in BINARY_NUMBER_FORMATS:
        return "\\".join(str(n) for n in binary_numbers(raw, vr, little, []))
    return raw.decode("latin-1").rstrip(" \0")


def read_identifier(data: bytes, transfer_syntax_uid: str) -> tuple[DataSet, bool]:
    """A C-FIND Identifier's data set (inflated first under Deflated Explicit VR Little
    Endian), and whether it is little endian.

    Raises
    ------
    InvalidQuery
        0xC000 when the data set cannot be read (or inflated).
    """
    implicit, little, deflated = _encoding(transfer_syntax_uid)
    if deflated:
        try:
            data = zlib.decompress(data, -zlib.MAX_WBITS)
        except zlib.error:
            raise InvalidQuery("the deflated Identifier cannot be inflated") from None
    try:
        reader = Reader(io.BytesIO(data), 0, len(data), bulk_threshold=1 << 30)
        ds, _ = reader.read_dataset(0, None, implicit, little)
    except CannotParse as exc:
        raise InvalidQuery(f"the Identifier cannot be read: {exc}") from None
    return ds, little


def decode_identifier(
    data: bytes,
    transfer_syntax_uid: str,
    model: InformationModel,
    *,
    relational: bool = False,
    combined_datetime: bool = False,
) -> Query:
    """A C-FIND / C-MOVE / C-GET request Identifier as a :class:`Query`.

    Parameters
    ----------
    data : bytes
        The Identifier data set, encoded in *transfer_syntax_uid*.
    transfer_syntax_uid : str
        The presentation context's transfer syntax.
    model : InformationModel
        From the SOP Class.
    relational : bool
        Relational queries / retrieval were negotiated (PS3.4 C.5.1.1.1).
    combined_datetime : bool
        Combined date-time matching was negotiated (PS3.4 Table C.5-2 byte 2).

    Returns
    -------
    Query

    Raises
    ------
    InvalidQuery
        0xA900 when Query/Retrieve Level (0008,0052) is missing or names no level of the
        model (PS3.4 C.4.1.1.3.1); 0xC000 when the data set cannot be read.
    """
    ds, little = read_identifier(data, transfer_syntax_uid)
    level_element = ds.get(QUERY_RETRIEVE_LEVEL)
    raw_level = level_element.value if level_element is not None else None
    if not isinstance(raw_level, bytes) or not raw_level.strip(b" \0"):
        raise InvalidQuery(
            "QueryRetrieveLevel (0008,0052) is missing or empty",
            status=IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
            keyword="QueryRetrieveLevel",
        )
    text = raw_level.decode("ascii", errors="replace").strip(" \0")
    try:
        level = Level(text)
    except ValueError:
        raise InvalidQuery(
            f"QueryRetrieveLevel {text!r} is not PATIENT, STUDY, SERIES or IMAGE",
            status=IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
            keyword="QueryRetrieveLevel",
        ) from None
    if level not in model.levels:
        raise InvalidQuery(
            f"QueryRetrieveLevel {level.value} is not a level of the "
            f"{model.name.replace('_', ' ').title()} information model",
            status=IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
            keyword="QueryRetrieveLevel",
        )
    keys = _keys(ds, _charset(ds), little)
    return Query(model, level, keys, relational=relational, combined_datetime=combined_datetime)


# -- encoding ---------------------------------------------------------------------------


def _texts(values: dict[int, object]) -> list[str]:
    out: list[str] = []
    for tag, value in values.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                out.extend(_texts(item))
            continue
        vr = _safe_vr(tag)
        if vr not in _TEXT_VRS:
            continue
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, list):
            out.extend(v for v in value if isinstance(v, str))
    return out


@lru_cache(maxsize=4096)
def _safe_vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


@lru_cache(maxsize=64)
def _codecs(terms: tuple[str, ...]) -> tuple[str, ...] | None:
    try:
        return tuple(convert_encodings(list(terms)))
    except (LookupError, ValueError):
        return None


def _can_encode(texts: list[str], terms: list[str]) -> bool:
    if all(text.isascii() for text in texts):
        codecs = _codecs(tuple(terms))
        return codecs is not None
    codecs = _codecs(tuple(terms))
    if codecs is None:
        return False
    for text in texts:
        for char in text:
            if char.isascii():
                continue
            if not any(_encodes(char, codec) for codec in codecs):
                return False
    return True


def _encodes(char: str, codec: str) -> bool:
    try:
        char.encode(codec)
    except (UnicodeError, LookupError):
        return False
    return True


def response_charset(match: Match) -> list[str] | None:
    """The Specific Character Set of a response: the stored one when it can encode every
    value, else ISO_IR 192; ``None`` (absent) for ASCII-only values without one."""
    texts = _texts({k: v for k, v in match.values.items() if k != SPECIFIC_CHARACTER_SET})
    return _charset_for(match.values.get(SPECIFIC_CHARACTER_SET), texts)


def _charset_for(stored: object, texts: list[str]) -> list[str] | None:
    """:func:`response_charset` of a stored character set and the values' texts."""
    terms = (
        [stored] if isinstance(stored, str) else list(stored) if isinstance(stored, list) else []
    )
    terms = [str(t) for t in terms]
    if terms and _can_encode(texts, terms):
        return terms
    if all(text.isascii() for text in texts) and not terms:
        return None
    return [UTF8]


def _fill(ds: Dataset, values: dict[int, object], vrs: dict[int, str]) -> None:
    for tag, value in values.items():
        if tag == SPECIFIC_CHARACTER_SET:
            continue
        vr = vrs.get(tag) or _safe_vr(tag)
        if vr == "SQ" or (isinstance(value, list) and value and isinstance(value[0], dict)):
            items = []
            for item_values in value if isinstance(value, list) else []:
                item = Dataset()
                _fill(item, item_values, {})
                items.append(item)
            ds.add_new(tag, "SQ", items)
            continue
        if vr in ("UN", "US or SS"):
            vr = "LO" if isinstance(value, str) else "UN"
        ds.add_new(tag, vr, _element_value(value, vr))


def _element_value(value: object, vr: str) -> Any:
    if value is None:
        return None
    if vr in ("DS", "IS") and isinstance(value, int | float):
        return str(value)
    if isinstance(value, list) and vr in ("DS", "IS"):
        return [str(v) for v in value]
    return value


def encode_identifier(
    match: Match,
    query: Query,
    transfer_syntax_uid: str,
    *,
    retrieve_ae_title: str | None = None,
) -> bytes:
    """A C-FIND-RSP pending Identifier (PS3.4 C.4.1.1.3.2) in the negotiated syntax.

    It holds Specific Character Set (see :func:`response_charset`), Query/Retrieve Level,
    every key of the query with its matched value (zero length when none is stored), the
    unique keys of the levels, and Retrieve AE Title when *retrieve_ae_title* is given.
    For many matches of one query, build one :class:`IdentifierEncoder` instead.

    Parameters
    ----------
    match : Match
    query : Query
        Gives the VR of each key as the requestor sent it (for tags not in the dictionary).
    transfer_syntax_uid : str
    retrieve_ae_title : str, optional

    Returns
    -------
    bytes
    """
    return IdentifierEncoder(query, transfer_syntax_uid, retrieve_ae_title=retrieve_ae_title)(match)


def encode_identifier_pydicom(
    match: Match,
    query: Query,
    transfer_syntax_uid: str,
    *,
    retrieve_ae_title: str | None = None,
) -> bytes:
    """:func:`encode_identifier` through pydicom's writer: the reference the fast path
    must equal byte for byte, and the path for what it does not handle."""
    implicit, little, deflated = _encoding(transfer_syntax_uid)
    ds = Dataset()
    charset = response_charset(match)
    if charset is not None:
        ds.SpecificCharacterSet = charset if len(charset) > 1 else charset[0]
    vrs = {key.tag: key.vr for key in query.keys}
    values = dict(match.values)
    values.setdefault(QUERY_RETRIEVE_LEVEL, query.level.value)
    if retrieve_ae_title is not None:
        values[RETRIEVE_AE_TITLE] = retrieve_ae_title
    _fill(ds, dict(sorted(values.items())), vrs)
    fp = DicomBytesIO()
    fp.is_little_endian = little
    fp.is_implicit_VR = implicit
    write_dataset(fp, ds)
    data = fp.getvalue()
    if deflated:
        data = _deflate(data)
    return bytes(data)


def _deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


# -- fast path --------------------------------------------------------------------------
#
# A hand-written writer for what C-FIND responses hold in practice: little endian
# (implicit or explicit VR, optionally deflated), string values of the string VRs, ints
# of IS and the binary integer VRs, no sequences, and a Specific Character Set that is
# absent or one single-byte / UTF-8 / GB set (no ISO 2022 code extensions). It writes
# what pydicom's ``write_dataset`` writes for the same Dataset (tests/query compare the
# two on random matches); anything else goes to :func:`encode_identifier_pydicom`.


class _Unsupported(Exception):
    """The fast writer does not handle this match; pydicom's does."""


#: Specific Character Set terms (one term) whose text is ``str.encode(codec)`` in pydicom.
_FAST_CHARSETS: Final = frozenset(
    {
        "ISO_IR 100",
        "ISO_IR 101",
        "ISO_IR 109",
        "ISO_IR 110",
        "ISO_IR 126",
        "ISO_IR 127",
        "ISO_IR 138",
        "ISO_IR 144",
        "ISO_IR 148",
        "ISO_IR 166",
        "ISO_IR 192",
        "GB18030",
        "GBK",
    }
)
#: VRs written with the character set (pydicom's CUSTOMIZABLE_CHARSET_VR).
_CHARSET_VRS: Final = frozenset({"PN", "SH", "LO", "ST", "LT", "UC", "UT"})
#: VRs whose value is a string written in the default repertoire (ISO 8859-1 in pydicom).
_PLAIN_VRS: Final = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UR", "UI"})
_INT_FORMATS: Final = {"US": "H", "UL": "L", "SS": "h", "SL": "l"}
#: Explicit VR with a 4-byte length (PS3.5 7.1.2), of the VRs written here.
_LONG_VRS: Final = frozenset({"UC", "UR", "UT"})
_FAST_VRS: Final = _CHARSET_VRS | _PLAIN_VRS | {"IS", "DS"} | _INT_FORMATS.keys()
_IS: Final = re.compile(r"[+-]?[0-9]{1,12}")
_DS: Final = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_SYNTAXES_LE: Final = frozenset(
    {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99"}
)


class IdentifierEncoder:
    """Encodes the C-FIND-RSP Identifiers of one query: :func:`encode_identifier` with
    the per-query work (VRs of the keys, the syntax) done once, and a hand-written writer
    for the common case.

    Parameters
    ----------
    query : Query
    transfer_syntax_uid : str
    retrieve_ae_title : str, optional
    """

    def __init__(
        self, query: Query, transfer_syntax_uid: str, *, retrieve_ae_title: str | None = None
    ) -> None:
        self.query = query
        self.transfer_syntax_uid = transfer_syntax_uid
        self.retrieve_ae_title = retrieve_ae_title
        implicit, little, deflated = _encoding(transfer_syntax_uid)
        self._implicit = implicit
        self._deflated = deflated
        self._fast = little and transfer_syntax_uid in _SYNTAXES_LE
        self._vrs = {key.tag: key.vr for key in query.keys}
        self._level = query.level.value
        #: The layout of each set of tags met so far (matches of one query share one).
        self._layouts: dict[tuple[tuple[int, ...], bool], _Layout] = {}

    def __call__(self, match: Match) -> bytes:
        """The encoded Identifier of *match*."""
        if self._fast:
            try:
                data = self._write(match)
            except (_Unsupported, UnicodeError):
                pass
            else:
                return _deflate(data) if self._deflated else data
        return encode_identifier_pydicom(
            match,
            self.query,
            self.transfer_syntax_uid,
            retrieve_ae_title=self.retrieve_ae_title,
        )

    def _write(self, match: Match) -> bytes:
        values = match.values
        tags = tuple(values)
        layout = self._layouts.get((tags, True))
        if layout is None:  # the texts' tags: the same layout for either character set
            layout = self._layouts[(tags, True)] = self._layout(tags, with_charset=True)
        texts: list[str] = []
        for tag in layout.text_tags:
            text = values[tag]
            if isinstance(text, str):
                texts.append(text)
            elif isinstance(text, list):
                texts.extend(v for v in text if isinstance(v, str))
        charset = _charset_for(values.get(SPECIFIC_CHARACTER_SET), texts)
        if charset is None:
            codec = "latin_1"
            plain = self._layouts.get((tags, False))
            if plain is None:
                plain = self._layouts[(tags, False)] = self._layout(tags, with_charset=False)
            layout = plain
        elif len(charset) == 1 and charset[0] in _FAST_CHARSETS:
            codecs = _codecs((charset[0],))
            if codecs is None:  # pragma: no cover - the whitelist is all known sets
                raise _Unsupported
            codec = codecs[0]
        else:
            raise _Unsupported
        out: list[bytes] = []
        for tag, vr, kind, prefix in layout.elements:
            if tag == SPECIFIC_CHARACTER_SET:
                assert charset is not None
                value: object = charset[0]
            elif tag == RETRIEVE_AE_TITLE and self.retrieve_ae_title is not None:
                value = self.retrieve_ae_title
            elif tag in values:
                value = values[tag]
            else:  # only Query/Retrieve Level can be missing
                value = self._level
            if type(value) is str and kind:
                if kind is _PLAIN:
                    raw = value.encode("latin_1")
                    if len(raw) % 2:
                        raw += b"\0" if vr == "UI" else b" "
                else:
                    if kind is _NAME and "=" in value:
                        raise _Unsupported
                    raw = value.encode(codec)
                    if len(raw) % 2:
                        raw += b" "
            elif kind is _ANY_STRING:  # a tag of no known VR takes a string only
                raise _Unsupported
            else:
                raw = _value_bytes(value, vr, codec)
            length = len(raw)
            if self._implicit or vr in _LONG_VRS:
                out.append(prefix + length.to_bytes(4, "little"))
            elif length > 0xFFFF:
                raise _Unsupported  # pydicom rewrites the VR as UN
            else:
                out.append(prefix + length.to_bytes(2, "little"))
            out.append(raw)
        return b"".join(out)

    def _layout(self, tags: tuple[int, ...], *, with_charset: bool) -> _Layout:
        """The elements a match with these *tags* is written as, in tag order: for each,
        its VR, how a string value is encoded and the encoded tag (and explicit VR)."""
        written = {t for t in tags if t != SPECIFIC_CHARACTER_SET} | {QUERY_RETRIEVE_LEVEL}
        if with_charset:
            written.add(SPECIFIC_CHARACTER_SET)
        if self.retrieve_ae_title is not None:
            written.add(RETRIEVE_AE_TITLE)
        elements: list[tuple[int, str, object, bytes]] = []
        for tag in sorted(written):
            vr = self._vrs.get(tag) or _safe_vr(tag) if tag != SPECIFIC_CHARACTER_SET else "CS"
            kind: object
            if vr in ("UN", "US or SS"):
                vr, kind = "LO", _ANY_STRING
            elif vr not in _FAST_VRS:
                raise _Unsupported
            elif vr == "PN":
                kind = _NAME
            elif vr in _CHARSET_VRS:
                kind = _TEXT
            elif vr in _PLAIN_VRS:
                kind = _PLAIN
            else:
                kind = None  # numbers: _value_bytes checks and writes them
            if self._implicit:
                prefix = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
            elif vr in _LONG_VRS:
                prefix = struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), 0)
            else:
                prefix = struct.pack("<HH2s", tag >> 16, tag & 0xFFFF, vr.encode())
            elements.append((tag, vr, kind, prefix))
        text_tags = tuple(
            t for t in tags if t != SPECIFIC_CHARACTER_SET and _safe_vr(t) in _TEXT_VRS
        )
        return _Layout(elements, text_tags)


#: How the fast writer encodes a string value (``_Layout.elements``' third field).
_PLAIN: Final = "plain"  # default repertoire (ISO 8859-1), UI padded with NUL
_TEXT: Final = "text"  # the response's character set
_NAME: Final = "name"  # PN: the character set, one component group only
_ANY_STRING: Final = "any-string"  # no known VR: a string becomes LO (pydicom does)


@dataclass(frozen=True, slots=True)
class _Layout:
    """Per set of tags: the elements to write and the tags whose values are texts."""

    elements: list[tuple[int, str, object, bytes]]
    text_tags: tuple[int, ...]


def _parts(value: object) -> list[Any] | None:
    """The values of a single or multiple value (``None`` = empty), or raise."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, list):
        return value
    return [value]


def _value_bytes(value: object, vr: str, codec: str) -> bytes:
    parts = _parts(value)
    if parts is None:
        return b""
    if vr in _INT_FORMATS:
        if not all(type(p) is int for p in parts):
            raise _Unsupported
        return struct.pack(f"<{len(parts)}{_INT_FORMATS[vr]}", *parts)
    texts: list[str] = []
    for part in parts:
        if type(part) is not str:
            number = type(part) is int or (vr == "DS" and type(part) is float)
            if not (vr in ("IS", "DS") and number):
                raise _Unsupported
            part = str(part)
        texts.append(part)
    if vr in _CHARSET_VRS:
        if vr == "PN":
            if any("=" in t for t in texts):
                raise _Unsupported
        elif vr in ("ST", "LT", "UT") and len(texts) > 1:
            raise _Unsupported
        raw = "\\".join(texts).encode(codec)
        return raw + b" " if len(raw) % 2 else raw
    if vr in ("IS", "DS"):
        pattern, limit = (_IS, 12) if vr == "IS" else (_DS, 16)
        split = [p for t in texts for p in t.split("\\")]
        if not all(len(p) <= limit and pattern.fullmatch(p) for p in split):
            raise _Unsupported
    elif vr not in _PLAIN_VRS:
        raise _Unsupported
    raw = "\\".join(texts).encode("latin_1")
    if len(raw) % 2:
        raw += b"\0" if vr == "UI" else b" "
    return raw
