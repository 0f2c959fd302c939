"""The DICOM JSON Model (PS3.18 F.2) of a data set, without bulk data.

Encoded directly from the raw elements of :mod:`dicomvault.dicom.reader` to JSON text:
pydicom's ``Dataset.to_json_dict`` took 4-5 ms for the CT_small header (before
``json.dumps``), against a budget of about 1 ms for the whole parse.

Bulk data (PS3.18 F.2.6): every value of VR OB, OD, OF, OL, OV, OW or UN, and every value
longer than the bulk data threshold whose VR PS3.18 F.2.2 allows a BulkDataURI for,
becomes ``{"vr": VR, "BulkDataURI": URI}``. The URI is relative; for a top-level element
it is ``bulkdata/<TAG>`` (``bulkdata/7FE00010``), and for an element nested in
sequences each enclosing sequence adds ``<TAG>/<item index>``:
``bulkdata/00540016/0/00181072`` is (0018,1072) in item 0 of (0054,0016). The web layer
prefixes it with the instance's URL.

Other rules applied (PS3.18 F.2.2-F.2.5): keys are 8 upper-case hex digits in ascending
order; PN values are objects with ``Alphabetic``, ``Ideographic`` and ``Phonetic``
(absent components left out); IS and DS are JSON numbers; AT values are hex strings;
an empty value has no ``Value``; an empty member of a multi-valued value is ``null``.
Group 0002 (file meta), group 0000 (command) and group lengths (gggg,0000) are not part
of the data set's model and are left out. A value that JSON cannot hold (a DS that is not
a decimal number, a NaN in FL/FD) becomes ``null`` and is reported as a warning.
"""

from __future__ import annotations

import math
import struct
from json.encoder import encode_basestring as _quote
from typing import Any

from dicomvault.dicom.charset import ESC, Charset, resolve_charset
from dicomvault.dicom.reader import US_OR_SS, DataSet, tag_name
from dicomvault.dicom.values import (
    BINARY_NUMBER_FORMATS,
    attribute_tags,
    binary_numbers,
    decimal_string,
    integer_string,
    strings,
)

#: VRs of PS3.5 Table 6.2-1; anything else is written as UN.
VALID_VRS = frozenset(
    {
        "AE",
        "AS",
        "AT",
        "CS",
        "DA",
        "DS",
        "DT",
        "FL",
        "FD",
        "IS",
        "LO",
        "LT",
        "OB",
        "OD",
        "OF",
        "OL",
        "OV",
        "OW",
        "PN",
        "SH",
        "SL",
        "SQ",
        "SS",
        "ST",
        "SV",
        "TM",
        "UC",
        "UI",
        "UL",
        "UN",
        "UR",
        "US",
        "UT",
        "UV",
    }
)
SPECIFIC_CHARACTER_SET = 0x00080005
PIXEL_REPRESENTATION = 0x00280103
#: Multi-valued string VRs that are not numbers and whose padding may lead or trail
#: (PS3.5 Table 6.2-1). An ASCII value without ESC decodes the same in every character
#: set, so for those a split and a strip are all the decoding needed.
_PLAIN_STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI", "SH", "LO"})
_NUMBER_STRUCTS = {
    little: {
        vr: struct.Struct(("<" if little else ">") + code)
        for vr, code in BINARY_NUMBER_FORMATS.items()
    }
    for little in (False, True)
}


#: ``"GGGGEEEE":{"vr":"VR"`` — the start of each member — per (tag, VR) met so far,
#: formatted once (bounded: private tags vary).
_HEADS: dict[tuple[int, str], str] = {}
_HEADS_LIMIT = 4096


def _head(tag: int, vr: str) -> str:
    head = f'"{tag:08X}":{{"vr":"{vr}"'
    if len(_HEADS) < _HEADS_LIMIT:
        _HEADS[(tag, vr)] = head
    return head


def item_charset(ds: DataSet, parent: Charset, warnings: list[str]) -> Charset:
    """The character set of a data set: its own (0008,0005) or its parent's (PS3.3 C.12)."""
    element = ds.get(SPECIFIC_CHARACTER_SET)
    if element is None or not isinstance(element.value, bytes):
        return parent
    terms = element.value.decode("ascii", errors="replace").rstrip(" \0").split("\\")
    if terms == [""]:
        return parent
    charset, problems = resolve_charset(terms)
    warnings.extend(problems)
    return charset


def _person_name(value: str | None) -> dict[str, str] | None:
    if not value:
        return None
    groups = value.split("=")
    name = {}
    for key, group in zip(("Alphabetic", "Ideographic", "Phonetic"), groups, strict=False):
        group = group.rstrip(" ")
        if group:
            name[key] = group
    return name or None


def _finite(numbers: list[int | float], vr: str, warnings: list[str]) -> list[Any]:
    if vr not in ("FL", "FD") or all(math.isfinite(n) for n in numbers):
        return numbers
    warnings.append("NaN or infinite value written as null (JSON has no such number)")
    return [n if math.isfinite(n) else None for n in numbers]


def _value(raw: bytes, vr: str, charset: Charset, little: bool, warnings: list[str]) -> list[Any]:
    """The JSON ``Value`` array of one non-empty, non-bulk, non-sequence element."""
    if vr in BINARY_NUMBER_FORMATS:
        return _finite(binary_numbers(raw, vr, little, warnings), vr, warnings)
    if vr == "AT":
        return list(attribute_tags(raw, little))
    values = strings(raw, vr, charset, warnings)
    if vr == "PN":
        return [_person_name(v) for v in values]
    if vr == "IS" or vr == "DS":
        convert = integer_string if vr == "IS" else decimal_string
        numbers: list[Any] = []
        for v in values:
            number = convert(v) if v else None
            if number is None and v:
                warnings.append(f"{vr} value {v[:32]!r} is not a valid number; written as null")
            numbers.append(number)
        return numbers
    return [v or None for v in values]


def _json_values(values: list[Any]) -> str:
    """A JSON array of the values :func:`_value` returns (str, int, float, PN dict, None)."""
    out = []
    for v in values:
        if v is None:
            out.append("null")
        elif isinstance(v, str):
            out.append(_quote(v))
        elif isinstance(v, dict):
            out.append("{" + ",".join(f'"{k}":{_quote(c)}' for k, c in v.items()) + "}")
        else:
            out.append(repr(v))  # int, or a finite float: repr is what json.dumps writes
    return "[" + ",".join(out) + "]"


def _signed_pixels(ds: DataSet, little: bool, parent: bool) -> bool:
    """Whether (0028,0103) Pixel Representation is 1 here (or, if absent, above).

    It decides the VR of "US or SS" elements read from implicit VR data (PS3.5 A.1 (c)),
    as pydicom's ``correct_ambiguous_vr`` does.
    """
    element = ds.get(PIXEL_REPRESENTATION)
    if element is None or not isinstance(element.value, bytes) or len(element.value) != 2:
        return parent
    return element.value == (b"\x01\x00" if little else b"\x00\x01")


def dataset_json(
    ds: DataSet,
    charset: Charset,
    little: bool,
    warnings: list[str],
    prefix: str = "bulkdata",
    signed: bool = False,
) -> str:
    """Return the PS3.18 F.2 model of ``ds`` as compact JSON text; see the module docstring.

    The text is written directly, not via a ``dict`` and :func:`json.dumps` (which cost
    twice as long); it is what ``json.dumps(model, separators=(",", ":"),
    ensure_ascii=False)`` would give for the same model.

    Parameters
    ----------
    ds : DataSet
        Raw elements from :class:`~dicomvault.dicom.reader.Reader`.
    charset : Charset
        The character set in force (the data set's own (0008,0005) overrides it).
    little : bool
        Byte order of binary values.
    warnings : list of str
        Problems met are appended here, each naming its data element.
    prefix : str
        BulkDataURI prefix for this level.
    signed : bool
        Pixel Representation of the enclosing data set is 1 (signed pixels).

    Returns
    -------
    str
        A JSON object (RFC 8259: no NaN, no Infinity).
    """
    charset = item_charset(ds, charset, warnings)
    signed = _signed_pixels(ds, little, signed)
    numbers = _NUMBER_STRUCTS[little]
    parts: list[str] = []
    append = parts.append
    for tag in sorted(ds):
        if tag & 0xFFFF == 0 or tag >> 16 in (0x0000, 0x0002):
            continue
        element = ds[tag]
        vr = element.vr
        if vr not in VALID_VRS:
            vr = ("SS" if signed else "US") if vr == US_OR_SS else "UN"
        head = _HEADS.get((tag, vr)) or _head(tag, vr)
        value = element.value
        if value.__class__ is bytes and vr != "UN":
            # Fast paths for the common cases: one binary number; plain ASCII strings.
            if not value:
                append(head + "}")
                continue
            number = numbers.get(vr)
            if number is not None and len(value) == number.size:
                (n,) = number.unpack(value)
                if vr not in ("FL", "FD") or math.isfinite(n):
                    append(f'{head},"Value":[{n!r}]}}')
                    continue
            elif vr in _PLAIN_STRING_VRS and value.isascii() and ESC not in value:
                texts = [t.strip(" \0") for t in value.decode("ascii").split("\\")]
                if any(texts):
                    array = ",".join(_quote(t) if t else "null" for t in texts)
                    append(f'{head},"Value":[{array}]}}')
                else:
                    append(head + "}")
                continue
        if vr == "SQ":
            items = value if isinstance(value, list) else []
            if items:
                key = f"{tag:08X}"
                encoded = ",".join(
                    dataset_json(item, charset, little, warnings, f"{prefix}/{key}/{index}", signed)
                    for index, item in enumerate(items)
                )
                append(f'{head},"Value":[{encoded}]}}')
            else:
                append(head + "}")
        elif not isinstance(value, bytes) or vr == "UN":
            if element.length == 0:
                append(head + "}")
            else:
                uri = _quote(f"{prefix}/{tag:08X}")
                append(f'{head},"BulkDataURI":{uri}}}')
        else:
            seen = len(warnings)
            values = _value(value, vr, charset, little, warnings)
            if len(warnings) > seen:
                warnings[seen:] = [f"{tag_name(tag)}: {w}" for w in warnings[seen:]]
            if values.count(None) != len(values):
                append(f'{head},"Value":{_json_values(values)}}}')
            else:
                append(head + "}")
    return "{" + ",".join(parts) + "}"
