"""Replacement values of the de-identification actions (PS3.15 E.1.1, Table E.1-1a):
the dummy of each VR (action D), date shifting (the Retain Longitudinal Temporal
Information with Modified Dates Option, E.3.6) and the descriptor check of the "clean"
action (C; the Clean Descriptors Option, E.3.5).

Pure functions over strings; :mod:`dicomvault.dicom.deidentify` applies them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date, timedelta

#: Action D: a non-zero-length value consistent with the VR (PS3.15 Table E.1-1a). Text
#: VRs get a word that says what happened; dates and times the earliest plausible
#: values (1900-01-01 is a valid DA that no modern acquisition has, and dciodvfy accepts
#: it); numbers zero. UI is never dummied here (D on a UI becomes a remapped UID), SQ
#: neither (a dummied sequence keeps its items, each de-identified in turn).
DUMMY_TEXT = "ANONYMIZED"
DUMMY_BY_VR: dict[str, str | int | float | bytes] = {
    "AE": DUMMY_TEXT,
    "AS": "000D",
    "CS": DUMMY_TEXT,
    "DA": "19000101",
    "DS": "0",
    "DT": "19000101000000",
    "IS": "0",
    "LO": DUMMY_TEXT,
    "LT": DUMMY_TEXT,
    "PN": DUMMY_TEXT,
    "SH": DUMMY_TEXT,
    "ST": DUMMY_TEXT,
    "TM": "000000",
    "UC": DUMMY_TEXT,
    "UR": DUMMY_TEXT,
    "UT": DUMMY_TEXT,
    "AT": 0,
    "FD": 0.0,
    "FL": 0.0,
    "SL": 0,
    "SS": 0,
    "SV": 0,
    "UL": 0,
    "US": 0,
    "UV": 0,
    "OB": b"\0\0",
    "OD": bytes(8),
    "OF": bytes(4),
    "OL": bytes(4),
    "OV": bytes(8),
    "OW": b"\0\0",
    "UN": b"\0\0",
}

#: VRs whose values are free text a person may have typed a name or an ID into.
TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
TEMPORAL_VRS = frozenset({"DA", "DT", "TM"})

_DA = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
#: PS3.5 6.2 DT: YYYYMMDD then anything (time, fraction, offset) that stays as it is.
_DT = re.compile(r"^(\d{4})(\d{2})(\d{2})(.*)$")


def dummy(vr: str) -> str | int | float | bytes:
    """The action D value of ``vr`` (:data:`DUMMY_BY_VR`); KeyError for SQ and UI."""
    return DUMMY_BY_VR[vr]


def _shift(year: str, month: str, day: str, days: int) -> str | None:
    try:
        moved = date(int(year), int(month), int(day)) + timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    return moved.strftime("%Y%m%d") if moved.year >= 1 else None


def shift_date(value: str, days: int) -> str | None:
    """A DA value moved by ``days``; ``None`` when it is not a full YYYYMMDD date (a
    partial or malformed date cannot be moved without guessing, so the caller replaces
    it with the dummy instead of keeping it)."""
    value = value.strip()
    if value == "":
        return ""
    match = _DA.match(value)
    return _shift(match[1], match[2], match[3], days) if match else None


def shift_datetime(value: str, days: int) -> str | None:
    """A DT value whose date part moved by ``days``; the time, fraction and UTC offset
    are kept (PS3.15 E.3.6 keeps intervals, and a shift of whole days keeps times).
    ``None`` when the value has no full date."""
    value = value.strip()
    if value == "":
        return ""
    match = _DT.match(value)
    if not match:
        return None
    moved = _shift(match[1], match[2], match[3], days)
    return None if moved is None else moved + match[4]


def identifying_terms(
    names: Iterable[str], identifiers: Iterable[str]
) -> tuple[re.Pattern[str] | None, tuple[str, ...]]:
    """What the clean action looks for in free text: the components of person names
    (``^`` / ``=`` / space separated, two characters or more, matched as whole words, any
    case) and identifiers (IDs, accession numbers, dates: three characters or more,
    matched anywhere, any case)."""
    words: set[str] = set()
    for name in names:
        for part in re.split(r"[\^=\s,]+", name):
            if len(part) >= 2:
                words.add(part.casefold())
    pattern = (
        re.compile(r"\b(?:" + "|".join(map(re.escape, sorted(words))) + r")\b", re.IGNORECASE)
        if words
        else None
    )
    ids = tuple(sorted({i.strip().casefold() for i in identifiers if len(i.strip()) >= 3}))
    return pattern, ids


def mentions(text: str, terms: tuple[re.Pattern[str] | None, tuple[str, ...]]) -> bool:
    """Whether ``text`` contains one of the instance's identifying values."""
    pattern, ids = terms
    if pattern is not None and pattern.search(text):
        return True
    folded = text.casefold()
    return any(i in folded for i in ids)
