"""Decode raw element values per VR (PS3.5 6.2) into Python values.

One set of rules for the DICOM JSON encoder and the index records, so both read a value
the same way. Problems (undecodable text, a DS that is not a number) are appended to a
warnings list rather than raised: the instance is still stored as it arrived.
"""

from __future__ import annotations

import math
import re
import struct

from dicomvault.dicom.charset import (
    MULTI_VALUE_DELIMITERS,
    PN_DELIMITERS,
    TEXT_DELIMITERS,
    Charset,
    decode_text,
)

#: PS3.5 6.1.2.3: only these VRs use the Specific Character Set.
CHARSET_VRS = frozenset({"SH", "LO", "UC", "ST", "LT", "UT", "PN"})
#: Single-valued string VRs: a backslash is part of the value (PS3.5 6.4).
SINGLE_VALUED = frozenset({"LT", "ST", "UT", "UR"})
#: VRs whose leading spaces are padding too (PS3.5 Table 6.2-1).
STRIP_LEADING = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "SH", "TM", "UI"})
STRING_VRS = frozenset(
    {
        "AE",
        "AS",
        "CS",
        "DA",
        "DS",
        "DT",
        "IS",
        "LO",
        "LT",
        "PN",
        "SH",
        "ST",
        "TM",
        "UC",
        "UI",
        "UR",
        "UT",
    }
)
#: Binary numeric VRs: struct code and size.
BINARY_NUMBER_FORMATS = {
    "US": "H",
    "SS": "h",
    "UL": "L",
    "SL": "l",
    "FL": "f",
    "FD": "d",
    "SV": "q",
    "UV": "Q",
}
_DS = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_IS = re.compile(r"^[+-]?\d+$")


def text(raw: bytes, vr: str, charset: Charset, warnings: list[str]) -> str:
    """The whole value of a string VR as one ``str`` (backslashes kept), padding removed."""
    if vr in CHARSET_VRS:
        if vr == "PN":
            delimiters = PN_DELIMITERS
        elif vr in SINGLE_VALUED:
            delimiters = TEXT_DELIMITERS
        else:
            delimiters = MULTI_VALUE_DELIMITERS
        value, problem = decode_text(raw, charset, delimiters)
        if problem:
            warnings.append(problem)
    elif raw.isascii():
        value = raw.decode("ascii")
    else:
        value, problem = decode_text(raw, charset, MULTI_VALUE_DELIMITERS)
        if problem:
            warnings.append(problem)
    return value.rstrip(" \0")


def strings(raw: bytes, vr: str, charset: Charset, warnings: list[str]) -> list[str]:
    """The values of a string VR: split on ``\\`` unless single-valued, padding removed."""
    value = text(raw, vr, charset, warnings)
    if vr in SINGLE_VALUED:
        return [value]
    parts = value.split("\\")
    if vr in STRIP_LEADING:
        return [p.strip(" \0") for p in parts]
    return [p.rstrip(" \0") for p in parts]


def integer_string(value: str) -> int | None:
    """An IS value as ``int`` (PS3.5 Table 6.2-1), ``None`` when it is not one."""
    value = value.strip(" ")
    # int() alone would also take "1_000", "\u0661" and surrounding tabs.
    if not _IS.match(value):
        return None
    return int(value)


def decimal_string(value: str) -> int | float | None:
    """A DS value as a JSON-safe number, ``None`` when it is not a finite decimal.

    Integral values without a decimal point or exponent stay ``int`` ("12" -> 12).
    """
    value = value.strip(" ")
    if not _DS.match(value):
        return None
    if "." in value or "e" in value or "E" in value:
        number = float(value)
        return number if math.isfinite(number) else None
    return int(value)


def binary_numbers(raw: bytes, vr: str, little: bool, warnings: list[str]) -> list[int | float]:
    """The values of US, SS, UL, SL, FL, FD, SV, UV (PS3.5 Table 6.2-1)."""
    code = BINARY_NUMBER_FORMATS[vr]
    size = struct.calcsize("<" + code)
    count, extra = divmod(len(raw), size)
    if extra:
        warnings.append(f"{vr} value of {len(raw)} bytes is not a multiple of {size}")
    return list(struct.unpack(("<" if little else ">") + code * count, raw[: count * size]))


def attribute_tags(raw: bytes, little: bool) -> list[str]:
    """AT values as 8 upper-case hex digits (PS3.18 F.2.3)."""
    count = len(raw) // 4
    pairs = struct.unpack(("<" if little else ">") + "HH" * count, raw[: count * 4])
    return [f"{pairs[i]:04X}{pairs[i + 1]:04X}" for i in range(0, len(pairs), 2)]
