"""Modality Worklist C-FIND matching (PS3.4 K.4.1, K.6.1.2) over the stored items of
:mod:`dicomvault.archive.worklist`.

One response per matching Scheduled Procedure Step, its Identifier holding every key
asked for — the stored value, or zero length when there is none — with the Scheduled
Procedure Step Sequence reduced to that one step. Keys are matched as PS3.4 C.2.2.2
defines (:mod:`dicomvault.model.matching`): single value, list of UIDs, wild card,
range, empty value, and sequence matching (C.2.2.2.6) within the step, on any attribute
of the item. Scheduled Procedure Step Start Date and Start Time with values in both are
matched together as one date-time range (C.2.2.2.5.1, as a worklist query means "from
this date and time to that date and time"). A sequence key whose item holds only
universal keys is a return key: it matches items without that sequence too. Keys of
bulk-data VRs are not supported: answered empty, with pending status 0xFF01. The SQL
pre-filter narrows by status, patient ID, accession number, Study Instance UID,
Requested Procedure ID, modality, Scheduled Station AE Title, step ID and start date;
the match is finished on the stored JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import ColumnElement, and_, or_

from dicomvault.archive.query_metadata import stored_of
from dicomvault.archive.worklist import OPEN, element_text, element_values
from dicomvault.dicom import worklist as dicom_worklist
from dicomvault.dicom.worklist import BULK_VRS
from dicomvault.index import worklist as sql
from dicomvault.index.schema import worklist_items, worklist_steps
from dicomvault.model.matching import (
    Condition,
    Kind,
    matches,
    normalize_tm,
    parse_key,
    parse_range,
)
from dicomvault.model.query import QueryKey

if TYPE_CHECKING:
    from dicomvault.archive.archive import Archive


_SPS_TAG: Final = int(dicom_worklist.SPS_SEQUENCE, 16)
_DATE_TAG: Final = int(dicom_worklist.SPS_START_DATE, 16)
_TIME_TAG: Final = int(dicom_worklist.SPS_START_TIME, 16)
#: Keys the SQL pre-filter narrows on: top-level tag -> column of ``worklist_items``.
_ITEM_COLUMNS: Final = {
    0x00100020: worklist_items.c.patient_id,
    0x00080050: worklist_items.c.accession_number,
    0x0020000D: worklist_items.c.study_instance_uid,
    0x00401001: worklist_items.c.requested_procedure_id,
}
#: Scheduled Procedure Step Sequence item tag -> column of ``worklist_steps``.
_STEP_COLUMNS: Final = {
    0x00080060: worklist_steps.c.modality,
    0x00400009: worklist_steps.c.scheduled_procedure_step_id,
}


@dataclass(frozen=True)
class _Key:
    """One key of the query with its parsed condition; ``items`` for a sequence."""

    key: QueryKey
    condition: Condition
    items: tuple[_Key, ...] = ()
    supported: bool = True


@dataclass(frozen=True)
class WorklistQuery:
    """A checked Modality Worklist C-FIND Identifier (see :func:`plan`)."""

    keys: tuple[_Key, ...]
    case_insensitive: bool
    #: Scheduled Procedure Step Start Date + Time as one range (``YYYYMMDDHHMMSS.FFFFFF``
    #: bounds, ``None`` open), when both keys have values (PS3.4 C.2.2.2.5.1).
    combined: tuple[str | None, str | None] | None
    clauses: tuple[ColumnElement[bool], ...]
    #: Some key is not supported (answered empty): pending status 0xFF01.
    unsupported: bool


def _universal(condition: Condition) -> bool:
    """Universal, or a sequence whose item keys are all universal (a return key)."""
    if condition.kind is Kind.UNIVERSAL:
        return True
    return condition.kind is Kind.SEQUENCE and all(_universal(c) for c in condition.items)


def _plan_key(key: QueryKey, case_insensitive: bool) -> _Key:
    if key.vr in BULK_VRS:
        return _Key(key, Condition(key, Kind.UNIVERSAL), supported=False)
    condition = parse_key(key, case_insensitive=case_insensitive)
    if key.vr == "SQ":
        items = tuple(_plan_key(k, case_insensitive) for k in key.items or ())
        return _Key(key, condition, items, all(k.supported for k in items))
    return _Key(key, condition)


def _equal_values(condition: Condition) -> list[str] | None:
    """The values of a key SQL can select by equality (a superset of the matches), or
    ``None`` when the key needs Python (wild cards, ranges, universal, empty)."""
    if condition.kind is Kind.UID_LIST:
        return [t.value for t in condition.terms]
    if condition.kind is Kind.SINGLE and all(t.kind is Kind.SINGLE for t in condition.terms):
        return [t.value for t in condition.terms]
    return None


def _combined(
    date: Condition | None, time: Condition | None
) -> tuple[str | None, str | None] | None:
    if date is None or time is None:
        return None
    usable = (Kind.SINGLE, Kind.RANGE)
    if date.kind not in usable or time.kind not in usable:
        return None
    if len(date.terms) != 1 or len(time.terms) != 1:
        return None
    d, t = date.terms[0], time.terms[0]
    if d.kind is not Kind.RANGE:
        d = parse_range(date.key, f"{d.value}-{d.value}")
    if t.kind is not Kind.RANGE:
        t = parse_range(time.key, f"{t.value}-{t.value}")
    low = None if d.low is None else d.low + (t.low or "000000.000000")
    high = None if d.high is None else d.high + (t.high or "235959.999999")
    return low, high


def _date_clause(condition: Condition) -> ColumnElement[bool] | None:
    column = worklist_steps.c.start_date
    if condition.kind not in (Kind.SINGLE, Kind.RANGE):
        return None
    parts: list[ColumnElement[bool]] = []
    for term in condition.terms:
        if term.kind is Kind.RANGE:
            bounds = []
            if term.low is not None:
                bounds.append(column >= term.low)
            if term.high is not None:
                bounds.append(column <= term.high)
            parts.append(and_(*bounds))
        else:
            parts.append(column == term.value)
    return or_(*parts) if parts else None


def plan(keys: Sequence[QueryKey], *, case_insensitive: bool = True) -> WorklistQuery:
    """Check and prepare the keys of a Modality Worklist C-FIND (PS3.4 K.6.1.2.2).

    Raises
    ------
    InvalidQuery
        0xC000 for a value that cannot be matched (malformed range or date, wild card
        in a UID), naming the key.
    """
    planned = tuple(_plan_key(key, case_insensitive) for key in keys)
    clauses: list[ColumnElement[bool]] = []
    combined = None
    for k in planned:
        column = _ITEM_COLUMNS.get(k.key.tag)
        values = _equal_values(k.condition) if column is not None else None
        if column is not None and values is not None:
            clauses.append(column.in_(values))
        if k.key.tag != _SPS_TAG:
            continue
        by_tag = {item.key.tag: item.condition for item in k.items}
        combined = _combined(by_tag.get(_DATE_TAG), by_tag.get(_TIME_TAG))
        for tag, step_column in _STEP_COLUMNS.items():
            values = _equal_values(by_tag[tag]) if tag in by_tag else None
            if values is not None:
                clauses.append(step_column.in_(values))
        if _DATE_TAG in by_tag:
            clause = _date_clause(by_tag[_DATE_TAG])
            if clause is not None:
                clauses.append(clause)
        station = by_tag.get(0x00400001)
        values = _equal_values(station) if station is not None else None
        if values:
            # Several titles per step are joined by "\" in the column: a containment
            # test selects a superset, the JSON decides.
            stations = worklist_steps.c.station_ae_titles
            clauses.append(or_(*(stations.contains(v, autoescape=True) for v in values)))
        if station is not None and station.kind is Kind.EMPTY:
            clauses.append(_no_station())
    unsupported = not all(k.supported for k in planned)
    return WorklistQuery(planned, case_insensitive, combined, tuple(clauses), unsupported)


def _no_station() -> ColumnElement[bool]:
    column = worklist_steps.c.station_ae_titles
    return or_(column.is_(None), column == "")


def _combined_match(step: Mapping[str, Any], bounds: tuple[str | None, str | None]) -> bool:
    date = element_text(step, dicom_worklist.SPS_START_DATE)
    if not date:
        return False
    time = element_text(step, dicom_worklist.SPS_START_TIME)
    earliest = date + (normalize_tm(time) if time else "000000.000000")
    latest = date + (normalize_tm(time) if time else "235959.999999")
    low, high = bounds
    return (low is None or latest >= low) and (high is None or earliest <= high)


def _matches(k: _Key, element: Mapping[str, Any] | None, ci: bool, skip: frozenset[int]) -> bool:
    """Whether the stored ``element`` matches key ``k`` (PS3.4 C.2.2.2); sequence item
    keys with tags in ``skip`` are matched elsewhere (the combined date-time)."""
    if not k.supported and k.key.vr != "SQ":
        return True
    if _universal(k.condition):
        return True
    if k.condition.kind is Kind.SEQUENCE:
        items = [] if element is None else element.get("Value") or []
        return any(_item_matches(k.items, item, ci, skip) for item in items)
    return matches(k.condition, stored_of(element), case_insensitive=ci)


def _item_matches(
    keys: Sequence[_Key], item: Mapping[str, Any], ci: bool, skip: frozenset[int] = frozenset()
) -> bool:
    """Sequence matching within one item (PS3.4 C.2.2.2.6): every key in the same item."""
    for k in keys:
        if k.key.tag in skip:
            continue
        if not _matches(k, item.get(f"{k.key.tag:08X}"), ci, frozenset()):
            return False
    return True


def _returned(k: _Key, element: Mapping[str, Any] | None, ci: bool) -> dict[str, Any]:
    """What a response holds for key ``k``: the stored element, zero length when absent
    or unsupported; for a sequence, the items that match with the requested keys (every
    attribute of them for an empty key item, PS3.4 C.2.2.2.6)."""
    if not k.supported and k.key.vr != "SQ":
        return {"vr": k.key.vr}
    if element is None:
        return {"vr": k.key.vr}
    if k.key.vr != "SQ" and element.get("vr") != "SQ":
        return dict(element)
    items = element.get("Value") or []
    if not k.items:
        return dict(element)
    chosen = []
    for item in items:
        if not _item_matches(k.items, item, ci):
            continue
        chosen.append(
            {
                f"{sub.key.tag:08X}": _returned(sub, item.get(f"{sub.key.tag:08X}"), ci)
                for sub in k.items
            }
        )
    return {"vr": "SQ", "Value": chosen} if chosen else {"vr": "SQ"}


def _answer(
    query: WorklistQuery, dataset: Mapping[str, Any], position: int
) -> dict[str, Any] | None:
    """The response data set for step ``position`` of ``dataset``, or ``None``."""
    steps = element_values(dataset, dicom_worklist.SPS_SEQUENCE)
    if position >= len(steps):
        return None
    step = steps[position]
    view = dict(dataset)
    view[dicom_worklist.SPS_SEQUENCE] = {"vr": "SQ", "Value": [step]}
    ci = query.case_insensitive
    response: dict[str, Any] = {}
    for k in query.keys:
        key = f"{k.key.tag:08X}"
        element = view.get(key)
        if k.key.tag == _SPS_TAG and query.combined is not None:
            if not _combined_match(step, query.combined):
                return None
            skip = frozenset({_DATE_TAG, _TIME_TAG})
            if not _item_matches(k.items, step, ci, skip):
                return None
        elif not _matches(k, element, ci, frozenset()):
            return None
        response[key] = _returned(k, element, ci)
    return dict(sorted(response.items()))


class WorklistMatches(Iterator[dict[str, Any]]):
    """The responses of one worklist C-FIND, streamed: DICOM JSON data sets.

    After iteration, :attr:`truncated` says whether the cap (setting
    ``query.max_results``) cut the result short. Close it to release the cursor early
    (C-CANCEL).
    """

    def __init__(
        self, query: WorklistQuery, rows: Iterator[tuple[str, str, int, str]], limit: int | None
    ) -> None:
        self.query = query
        self._rows = rows
        self._limit = limit
        self.count = 0
        self.truncated = False
        self.closed = False

    def __iter__(self) -> WorklistMatches:
        return self

    def __next__(self) -> dict[str, Any]:
        if self.closed:
            raise StopIteration
        for _item_id, dataset_json, position, _status in self._rows:
            answer = _answer(self.query, json.loads(dataset_json), position)
            if answer is None:
                continue
            if self._limit is not None and self.count >= self._limit:
                self.truncated = True
                self.close()
                raise StopIteration
            self.count += 1
            return answer
        self.close()
        raise StopIteration

    def close(self) -> None:
        """Release the cursor; idempotent."""
        if not self.closed:
            self.closed = True
            close = getattr(self._rows, "close", None)
            if close is not None:
                close()


def find(archive: Archive, keys: Sequence[QueryKey]) -> WorklistMatches:
    """Answer a Modality Worklist C-FIND (PS3.4 K.4.1.3.1): the open steps matching
    ``keys``, in schedule order (start date and time), one response data set each.

    Raises
    ------
    InvalidQuery
        Before anything is read, for a key that cannot be matched (0xC000).
    """
    query = plan(keys, case_insensitive=archive.settings.query.case_insensitive_names)
    rows = sql.candidates(
        archive.index, item_statuses=OPEN, step_statuses=OPEN, clauses=query.clauses
    )
    cap = archive.settings.query.max_results or None
    return WorklistMatches(query, rows, cap)
