"""Attribute matching as PS3.4 C.2.2.2 defines it: parsing keys, and matching in Python.

:func:`parse_key` turns a :class:`~dicomvault.model.query.QueryKey` into a
:class:`Condition` once, validating it (a malformed range or a wildcard in a UID raises
:class:`~dicomvault.model.query.InvalidQuery` naming the key). ``index/query.py`` turns
conditions into SQL; :func:`matches` applies them in Python to values the index cannot
match exactly in SQL (keys answered from stored metadata, wild cards over multi-valued
columns, DT ranges, sequences).

Choices where PS3.4 leaves them to the SCP:

- Multiple values in a key (``CT\\MR``) match when any value matches (the semantics is
  undefined without Multiple Value Matching negotiated, PS3.4 C.2.2.2.8 note 4, and "any"
  is what users of a worklist/archive expect). LT, ST, UT and UR are single-valued: a
  backslash there is literal.
- A key of exactly ``""`` (two QUOTATION MARKs) is Empty Value Matching (PS3.4
  C.2.2.2.7): it matches entities whose attribute is empty or absent.
- Person names are matched per component group (Alphabetic=Ideographic=Phonetic); an
  empty or ``*`` group in the key places no constraint. Case-insensitivity (setting
  ``query.case_insensitive_names``) folds each character with Unicode lower case.
- Range bounds: the lower bound is read as the earliest instant it names, the upper as
  the latest (``-1030`` includes 10:30:59.999999); a stored value is read as the earliest
  instant it names. DT offsets (``&ZZXX``) are not applied.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from dicomvault.model.query import UNABLE_TO_PROCESS, InvalidQuery, QueryKey

#: PS3.4 C.2.2.2.4: the VRs Wild Card Matching applies to.
WILDCARD_VRS: Final = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
#: PS3.4 C.2.2.2.5: the VRs Range Matching applies to.
RANGE_VRS: Final = frozenset({"DA", "TM", "DT"})
#: PS3.5 6.4: a backslash is part of the value, not a delimiter.
SINGLE_VALUED_VRS: Final = frozenset({"LT", "ST", "UT", "UR"})
#: VRs whose values are numbers: single value matching compares numerically.
NUMERIC_VRS: Final = frozenset({"IS", "DS", "US", "UL", "SS", "SL", "FL", "FD", "SV", "UV"})

_DA = re.compile(r"^\d{8}$")
_TM = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")
_DT = re.compile(
    r"^(\d{4}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?)?)?)([+-]\d{4})?$"
)
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
EMPTY_VALUE: Final = '""'


class Kind(enum.Enum):
    """The matching types of PS3.4 C.2.2.2."""

    UNIVERSAL = "universal"  # C.2.2.2.3
    EMPTY = "empty"  # C.2.2.2.7
    SINGLE = "single"  # C.2.2.2.1
    UID_LIST = "uid-list"  # C.2.2.2.2
    WILDCARD = "wildcard"  # C.2.2.2.4
    RANGE = "range"  # C.2.2.2.5
    SEQUENCE = "sequence"  # C.2.2.2.6


@dataclass(frozen=True)
class Term:
    """One value of a key: single, wildcard or range.

    For a range, ``low``/``high`` are normalized bounds (``None`` when open); for a PN
    key, ``groups`` holds the component group values (``None`` = no constraint).
    """

    kind: Kind
    value: str
    low: str | None = None
    high: str | None = None
    groups: tuple[str | None, ...] = ()


@dataclass(frozen=True)
class Condition:
    """A parsed key: its kind and, for SINGLE/WILDCARD/RANGE/UID_LIST, its terms (any
    one matching is a match); for SEQUENCE, the item conditions."""

    key: QueryKey
    kind: Kind
    terms: tuple[Term, ...] = ()
    items: tuple[Condition, ...] = ()


def _invalid(key: QueryKey, why: str) -> InvalidQuery:
    return InvalidQuery(f"{key.keyword}: {why}", status=UNABLE_TO_PROCESS, keyword=key.keyword)


# -- normalization (shared with the SQL side: the same formulas) ---------------------


def normalize_tm(value: str) -> str:
    """A stored TM as ``HHMMSS.FFFFFF``, its earliest instant (PS3.5 6.2 TM)."""
    if "." in value:
        return (value + "000000")[:13]
    return (value + "000000")[:6] + ".000000"


def normalize_dt(value: str) -> str:
    """A stored DT as ``YYYYMMDDHHMMSS.FFFFFF``, its earliest instant; offset dropped."""
    match = _DT.match(value)
    if match is None:
        return value
    return _pad_dt(match.group(1), high=False)


def _pad_dt(value: str, *, high: bool) -> str:
    date_time, _, fraction = value.partition(".")
    template = "99991231235959" if high else "00000101000000"
    full = date_time + template[len(date_time) :]
    return full + "." + (fraction + ("9" if high else "0") * 6)[:6]


def _pad_tm(value: str, *, high: bool) -> str:
    hhmmss, _, fraction = value.partition(".")
    template = "235959" if high else "000000"
    full = hhmmss + template[len(hhmmss) :]
    return full + "." + (fraction + ("9" if high else "0") * 6)[:6]


def _bound(key: QueryKey, text: str, *, high: bool) -> str:
    vr = key.vr
    if vr == "DA":
        if not _DA.match(text):
            raise _invalid(key, f"{text!r} is not a date (YYYYMMDD) in a range")
        return text
    if vr == "TM":
        if not _TM.match(text):
            raise _invalid(key, f"{text!r} is not a time (HHMMSS.FFFFFF) in a range")
        return _pad_tm(text, high=high)
    match = _DT.match(text)
    if match is None:
        raise _invalid(key, f"{text!r} is not a date-time (YYYYMMDDHHMMSS.FFFFFF&ZZXX)")
    return _pad_dt(match.group(1), high=high)


def parse_range(key: QueryKey, value: str) -> Term:
    """PS3.4 C.2.2.2.5 Range Matching: ``A-B``, ``A-`` or ``-A`` of DA, TM or DT."""
    low_text, _, high_text = value.partition("-")
    if "-" in high_text or (not low_text and not high_text):
        raise _invalid(key, f"malformed range {value!r}")
    low = _bound(key, low_text, high=False) if low_text else None
    high = _bound(key, high_text, high=True) if high_text else None
    if low is not None and high is not None and low > high:
        raise _invalid(key, f"range {value!r} ends before it starts")
    return Term(Kind.RANGE, value, low, high)


def fold(text: str) -> str:
    """Case folding for Person Names: each character's Unicode lower case (when that is
    one character), as PostgreSQL's ``lower()`` does under a UTF-8 locale."""
    out = []
    for char in text:
        lower = char.lower()
        out.append(lower if len(lower) == 1 else char)
    return "".join(out)


def _has_wildcard(text: str) -> bool:
    return "*" in text or "?" in text


def _pn_term(value: str, case_insensitive: bool) -> Term:
    groups: list[str | None] = []
    for group in value.split("=")[:3]:
        groups.append(None if group in ("", "*") else (fold(group) if case_insensitive else group))
    kind = Kind.WILDCARD if _has_wildcard(value) else Kind.SINGLE
    return Term(kind, value, groups=tuple(groups))


def parse_key(key: QueryKey, *, case_insensitive: bool = True) -> Condition:
    """Classify and validate one key (PS3.4 C.2.2.2).

    Parameters
    ----------
    key : QueryKey
        The key as decoded from the Identifier.
    case_insensitive : bool
        Fold Person Names (setting ``query.case_insensitive_names``).

    Returns
    -------
    Condition

    Raises
    ------
    InvalidQuery
        0xC000: a malformed range, a wild card in a UID or a date, a value that is not a
        number for a numeric VR.
    """
    if key.vr == "SQ":
        if not key.items:
            return Condition(key, Kind.UNIVERSAL)
        items = tuple(parse_key(item, case_insensitive=case_insensitive) for item in key.items)
        return Condition(key, Kind.SEQUENCE, items=items)
    value = key.value
    if value is None or value == "":
        return Condition(key, Kind.UNIVERSAL)  # C.2.2.2.3
    if value == EMPTY_VALUE:
        return Condition(key, Kind.EMPTY)  # C.2.2.2.7
    values = [value] if key.vr in SINGLE_VALUED_VRS else value.split("\\")
    if key.vr == "UI":  # C.2.2.2.2
        for uid in values:
            if _has_wildcard(uid):
                raise _invalid(key, f"wild card in UID {uid!r} (PS3.4 C.2.2.2.2)")
            if not _UID.match(uid):
                raise _invalid(key, f"{uid!r} is not a UID")
        return Condition(key, Kind.UID_LIST, tuple(Term(Kind.SINGLE, uid) for uid in values))
    if key.vr in WILDCARD_VRS and any(v.strip("*") == "" for v in values):
        return Condition(key, Kind.UNIVERSAL)  # "*" is Universal Matching (C.2.2.2.4)
    terms = [_term(key, v, case_insensitive) for v in values]
    kinds = {t.kind for t in terms}
    kind = (
        Kind.RANGE
        if Kind.RANGE in kinds
        else (Kind.WILDCARD if Kind.WILDCARD in kinds else Kind.SINGLE)
    )
    return Condition(key, kind, tuple(terms))


def _term(key: QueryKey, value: str, case_insensitive: bool) -> Term:
    vr = key.vr
    if vr in RANGE_VRS:
        if "-" in value:
            return parse_range(key, value)
        _bound(key, value, high=False)  # validates
        return Term(Kind.SINGLE, value)
    if vr == "PN":
        return _pn_term(value, case_insensitive)
    if vr in WILDCARD_VRS and _has_wildcard(value):
        return Term(Kind.WILDCARD, value)
    if vr in NUMERIC_VRS:
        try:
            number = float(value) if vr in ("DS", "FL", "FD") else int(value)
        except ValueError:
            raise _invalid(key, f"{value!r} is not a number") from None
        return Term(Kind.SINGLE, str(number))
    return Term(Kind.SINGLE, value.strip(" ") if vr not in ("PN", "LT", "ST", "UT") else value)


# -- matching in Python ------------------------------------------------------------


def wildcard_regex(pattern: str) -> re.Pattern[str]:
    """PS3.4 C.2.2.2.4: ``*`` any sequence (also none), ``?`` any one character."""
    parts = []
    for char in pattern:
        parts.append(".*" if char == "*" else "." if char == "?" else re.escape(char))
    return re.compile("".join(parts), re.DOTALL)


def _numeric_equal(vr: str, stored: str, wanted: str) -> bool:
    try:
        if vr in ("DS", "FL", "FD"):
            return float(stored) == float(wanted)
        return int(stored) == int(wanted)
    except ValueError:
        return False


def _match_pn(term: Term, stored: str, case_insensitive: bool) -> bool:
    groups = stored.split("=")
    for index, wanted in enumerate(term.groups):
        if wanted is None:
            continue
        have = groups[index] if index < len(groups) else ""
        if case_insensitive:
            have = fold(have)
        if _has_wildcard(wanted):
            if not wildcard_regex(wanted).fullmatch(have):
                return False
        elif have != wanted:
            return False
    return True


def match_term(term: Term, vr: str, stored: str, *, case_insensitive: bool = True) -> bool:
    """One key value against one stored value (PS3.4 C.2.2.2.1, .4, .5)."""
    if vr == "PN":
        return _match_pn(term, stored, case_insensitive)
    if term.kind is Kind.RANGE:
        if not stored:
            return False
        if vr == "TM":
            have = normalize_tm(stored)
        elif vr == "DT":
            have = normalize_dt(stored)
        else:
            have = stored
        return (term.low is None or have >= term.low) and (term.high is None or have <= term.high)
    if term.kind is Kind.WILDCARD:
        return wildcard_regex(term.value).fullmatch(stored) is not None
    if vr in NUMERIC_VRS:
        return _numeric_equal(vr, stored, term.value)
    return stored == term.value


StoredValue = Sequence[str] | None


@dataclass(frozen=True)
class Stored:
    """A stored attribute for matching: its values as text (PN as ``A=I=P``), or for a
    sequence its items, each a mapping of tag -> :class:`Stored`."""

    texts: Sequence[str] = ()
    items: Sequence[Mapping[int, Stored]] = ()


def matches(
    condition: Condition,
    stored: StoredValue | Stored,
    *,
    case_insensitive: bool = True,
) -> bool:
    """Whether a stored attribute matches a parsed key (PS3.4 C.2.2.2).

    Parameters
    ----------
    condition : Condition
    stored : sequence of str, Stored or None
        The stored values as text; ``None`` or empty when the attribute is absent or
        empty. A :class:`Stored` also carries sequence items (C.2.2.2.6: a match when
        every item key matches within one same item, recursively).
    case_insensitive : bool
        Fold Person Names.
    """
    kind = condition.kind
    if kind is Kind.UNIVERSAL:
        return True
    if isinstance(stored, Stored):
        texts: Sequence[str] = stored.texts
        items: Sequence[Mapping[int, Stored]] = stored.items
    else:
        texts, items = stored or (), ()
    values = [v for v in texts if v != ""]
    if kind is Kind.EMPTY:
        return not values and not items
    if kind is Kind.SEQUENCE:
        return any(
            all(
                matches(c, item.get(c.key.tag), case_insensitive=case_insensitive)
                for c in condition.items
            )
            for item in items
        )
    vr = condition.key.vr
    return any(
        match_term(term, vr, value, case_insensitive=case_insensitive)
        for term in condition.terms
        for value in values
    )
