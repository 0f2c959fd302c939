"""The Modality Worklist (PS3.4 Annex K): stored worklist items and the C-FIND matches.

A worklist item is one Requested Procedure for one patient with one or more Scheduled
Procedure Steps (PS3.4 K.6.1.1.2, PS3.3 C.4.10-C.4.11), kept as DICOM JSON (PS3.18 F.2)
beside summary columns. Items come from the HTTP API (``/api/worklist``), the CLI
(``dicomvault worklist``) and the HL7 v2 order feed; MPPS moves their steps along
(:func:`set_step_status`).

Statuses. Each step is ``SCHEDULED``, ``IN PROGRESS``, ``COMPLETED``, ``DISCONTINUED`` or
``CANCELLED``, written into the stored item as Scheduled Procedure Step Status
(0040,0020) — ``SCHEDULED``, ``STARTED``, ``COMPLETED``, ``DISCONTINUED``, ``CANCELED``
(PS3.3 C.4.10 defined terms). The item's status follows its steps: ``IN PROGRESS`` when
one is, else ``SCHEDULED`` when one is, else ``COMPLETED`` when one is, else
``DISCONTINUED``; :func:`cancel_item` makes it ``CANCELLED`` whatever its steps. Only
steps ``SCHEDULED`` or ``IN PROGRESS`` of items in those states are worklist entries a
modality finds.

C-FIND: :mod:`dicomvault.archive.worklist_find`.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import ColumnElement

from dicomvault.dicom import worklist as dicom_worklist
from dicomvault.dicom.worklist import InvalidItem, normalize_item
from dicomvault.index import worklist as sql
from dicomvault.index.schema import worklist_items, worklist_steps
from dicomvault.model.errors import DicomVaultError, NotFound
from dicomvault.model.matching import (
    Kind,
    parse_key,
)
from dicomvault.model.query import InvalidQuery, QueryKey

if TYPE_CHECKING:
    from dicomvault.archive.archive import Archive

SCHEDULED: Final = "SCHEDULED"
IN_PROGRESS: Final = "IN PROGRESS"
COMPLETED: Final = "COMPLETED"
DISCONTINUED: Final = "DISCONTINUED"
CANCELLED: Final = "CANCELLED"
STATUSES: Final = (SCHEDULED, IN_PROGRESS, COMPLETED, DISCONTINUED, CANCELLED)
#: The statuses a modality finds on the worklist.
OPEN: Final = (SCHEDULED, IN_PROGRESS)
#: Step status -> Scheduled Procedure Step Status (0040,0020), PS3.3 C.4.10.
SPS_STATUS_OF: Final = {
    SCHEDULED: "SCHEDULED",
    IN_PROGRESS: "STARTED",
    COMPLETED: "COMPLETED",
    DISCONTINUED: "DISCONTINUED",
    CANCELLED: "CANCELED",
}
#: What MPPS may move a step to, from which statuses (PS3.4 F.7.2.1: N-CREATE makes the
#: performed step IN PROGRESS, N-SET ends it COMPLETED or DISCONTINUED).
_TRANSITIONS: Final = {
    IN_PROGRESS: frozenset({SCHEDULED}),
    COMPLETED: frozenset({SCHEDULED, IN_PROGRESS}),
    DISCONTINUED: frozenset({SCHEDULED, IN_PROGRESS}),
}


class WorklistError(DicomVaultError):
    """An invalid worklist item or request; the message names the problem."""


class WorklistConflict(WorklistError):
    """A change the item's status does not allow (e.g. updating a cancelled item)."""


@dataclass(frozen=True)
class WorklistStep:
    """One Scheduled Procedure Step of an item."""

    scheduled_procedure_step_id: str
    status: str
    modality: str | None
    station_ae_titles: tuple[str, ...]
    start_date: str
    start_time: str | None


@dataclass(frozen=True)
class WorklistItem:
    """A stored worklist item.

    ``id`` is the archive's own key (a UUID hex), never a DICOM value; ``dataset`` is the
    item in the DICOM JSON Model (PS3.18 F.2), keys ``"00100020"`` …
    """

    id: str
    status: str
    dataset: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    patient_id: str = ""
    patient_name: str | None = None
    accession_number: str | None = None
    study_instance_uid: str = ""
    requested_procedure_id: str | None = None
    steps: tuple[WorklistStep, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        """The item as the HTTP API and ``worklist show --json`` give it."""
        return {
            "id": self.id,
            "status": self.status,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "patient_id": self.patient_id,
            "patient_name": self.patient_name,
            "accession_number": self.accession_number,
            "study_instance_uid": self.study_instance_uid,
            "requested_procedure_id": self.requested_procedure_id,
            "steps": [
                {
                    "scheduled_procedure_step_id": s.scheduled_procedure_step_id,
                    "status": s.status,
                    "modality": s.modality,
                    "station_ae_titles": list(s.station_ae_titles),
                    "start_date": s.start_date,
                    "start_time": s.start_time,
                }
                for s in self.steps
            ],
            "dataset": self.dataset,
        }


# -- records <-> items ---------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime) -> datetime:
    # SQLite hands timezone-aware columns back naive; they are stored in UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def element_values(dataset: Mapping[str, Any], key: str) -> list[Any]:
    """The ``Value`` array of element ``key`` of a DICOM JSON data set (``[]`` if none)."""
    element = dataset.get(key)
    values = element.get("Value") if isinstance(element, Mapping) else None
    return list(values) if values else []


def element_text(dataset: Mapping[str, Any], key: str) -> str | None:
    """The first value of element ``key`` as text (PN as ``A=I=P``), ``None`` if none."""
    values = element_values(dataset, key)
    if not values:
        return None
    value = values[0]
    if isinstance(value, Mapping):  # PN
        return "=".join(value.get(k, "") for k in ("Alphabetic", "Ideographic", "Phonetic")).rstrip(
            "="
        )
    return str(value)


def _step_items(dataset: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [dict(item) for item in element_values(dataset, dicom_worklist.SPS_SEQUENCE)]


def _record(
    item_id: str,
    dataset: dict[str, Any],
    step_statuses: Sequence[str],
    status: str,
    created_at: datetime,
    updated_at: datetime,
) -> sql.ItemRecord:
    """The index record of ``dataset`` (statuses written into its steps first)."""
    dataset = copy.deepcopy(dataset)
    items = _step_items(dataset)
    steps = []
    for position, (step, step_status) in enumerate(zip(items, step_statuses, strict=True)):
        step[dicom_worklist.SPS_STATUS] = {"vr": "CS", "Value": [SPS_STATUS_OF[step_status]]}
        items[position] = dict(sorted(step.items()))
        stations = [str(v) for v in element_values(step, dicom_worklist.SCHEDULED_STATION_AE_TITLE)]
        steps.append(
            sql.StepRecord(
                position=position,
                status=step_status,
                scheduled_procedure_step_id=element_text(step, dicom_worklist.SPS_ID) or "",
                modality=element_text(step, dicom_worklist.MODALITY),
                station_ae_titles="\\".join(stations) or None,
                start_date=element_text(step, dicom_worklist.SPS_START_DATE) or "",
                start_time=element_text(step, dicom_worklist.SPS_START_TIME),
            )
        )
    dataset[dicom_worklist.SPS_SEQUENCE] = {"vr": "SQ", "Value": items}
    return sql.ItemRecord(
        item_id=item_id,
        status=status,
        patient_id=element_text(dataset, dicom_worklist.PATIENT_ID) or "",
        issuer_of_patient_id=element_text(dataset, dicom_worklist.ISSUER_OF_PATIENT_ID) or "",
        patient_name=element_text(dataset, dicom_worklist.PATIENT_NAME),
        accession_number=element_text(dataset, dicom_worklist.ACCESSION_NUMBER),
        study_instance_uid=element_text(dataset, dicom_worklist.STUDY_INSTANCE_UID) or "",
        requested_procedure_id=element_text(dataset, dicom_worklist.REQUESTED_PROCEDURE_ID),
        dataset_json=json.dumps(dataset, ensure_ascii=False, separators=(",", ":")),
        created_at=created_at,
        updated_at=updated_at,
        steps=tuple(steps),
    )


def _item(record: sql.ItemRecord) -> WorklistItem:
    return WorklistItem(
        id=record.item_id,
        status=record.status,
        dataset=json.loads(record.dataset_json),
        created_at=_utc(record.created_at),
        updated_at=_utc(record.updated_at),
        patient_id=record.patient_id,
        patient_name=record.patient_name,
        accession_number=record.accession_number,
        study_instance_uid=record.study_instance_uid,
        requested_procedure_id=record.requested_procedure_id,
        steps=tuple(
            WorklistStep(
                scheduled_procedure_step_id=s.scheduled_procedure_step_id,
                status=s.status,
                modality=s.modality,
                station_ae_titles=tuple(s.station_ae_titles.split("\\"))
                if s.station_ae_titles
                else (),
                start_date=s.start_date,
                start_time=s.start_time,
            )
            for s in record.steps
        ),
    )


def item_status(step_statuses: Sequence[str]) -> str:
    """The status of an item that is not cancelled, from its steps' (module docstring)."""
    for status in (IN_PROGRESS, SCHEDULED, COMPLETED, DISCONTINUED):
        if status in step_statuses:
            return status
    return CANCELLED


def _normalized(
    item: Mapping[str, Any], previous: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    try:
        return normalize_item(item, previous=previous)
    except InvalidItem as exc:
        raise WorklistError(str(exc)) from None


# -- the public API (a contract: the HL7 feed and MPPS call these) ---------------------


def add_item(archive: Archive, item: Mapping[str, Any]) -> WorklistItem:
    """Add a worklist item; its steps are ``SCHEDULED``.

    Parameters
    ----------
    archive : Archive
    item : mapping
        The DICOM JSON Model (``{"00100020": {"vr": "LO", "Value": ["123"]}, …}``) or the
        keyword form (``{"PatientID": "123", "ScheduledProcedureStepSequence": [{…}]}``);
        see :func:`dicomvault.dicom.worklist.normalize_item` for what is required and
        generated.

    Returns
    -------
    WorklistItem

    Raises
    ------
    WorklistError
        The item is invalid; the message names the attribute.
    """
    dataset = _normalized(item)
    now = _now()
    statuses = [SCHEDULED] * len(_step_items(dataset))
    record = _record(uuid.uuid4().hex, dataset, statuses, SCHEDULED, now, now)
    sql.insert_item(archive.index, record)
    return _item(record)


def get_item(archive: Archive, item_id: str) -> WorklistItem:
    """The item ``item_id``.

    Raises
    ------
    NotFound
    """
    record = sql.get_item(archive.index, item_id) if _is_item_id(item_id) else None
    if record is None:
        raise NotFound(f"no worklist item {item_id[:64]!r}")
    return _item(record)


def _is_item_id(item_id: str) -> bool:
    return len(item_id) == 32 and all(c in "0123456789abcdef" for c in item_id)


def _one(
    archive: Archive,
    item_id: str,
    change: Callable[[sql.ItemRecord], sql.ItemRecord | None],
) -> WorklistItem:
    if not _is_item_id(item_id):
        raise NotFound(f"no worklist item {item_id[:64]!r}")
    written = sql.update_items(archive.index, [worklist_items.c.item_id == item_id], change)
    if written:
        return _item(written[0])
    return get_item(archive, item_id)  # NotFound, or unchanged


def update_item(archive: Archive, item_id: str, item: Mapping[str, Any]) -> WorklistItem:
    """Replace the item's data set with ``item`` (same forms as :func:`add_item`).

    Study Instance UID, Requested Procedure ID and step IDs that ``item`` leaves out are
    kept from the stored item (step IDs by position); steps keep their status by
    Scheduled Procedure Step ID, new steps are ``SCHEDULED``.

    Raises
    ------
    NotFound
    WorklistError
        The item is invalid.
    WorklistConflict
        The item is ``CANCELLED``, ``COMPLETED`` or ``DISCONTINUED``.
    """

    def change(record: sql.ItemRecord) -> sql.ItemRecord:
        if record.status not in OPEN:
            raise WorklistConflict(
                f"worklist item {item_id} is {record.status}: it cannot be changed"
            )
        dataset = _normalized(item, previous=json.loads(record.dataset_json))
        old = {s.scheduled_procedure_step_id: s.status for s in record.steps}
        statuses = [
            old.get(element_text(step, dicom_worklist.SPS_ID) or "", SCHEDULED)
            for step in _step_items(dataset)
        ]
        return _record(item_id, dataset, statuses, item_status(statuses), record.created_at, _now())

    return _one(archive, item_id, change)


def cancel_item(archive: Archive, item_id: str) -> WorklistItem:
    """Cancel the item: status ``CANCELLED``, its open steps ``CANCELLED`` (0040,0020
    ``CANCELED``); it leaves the worklist. Cancelling a cancelled item changes nothing.

    Raises
    ------
    NotFound
    WorklistConflict
        The item is ``COMPLETED`` or ``DISCONTINUED``.
    """

    def change(record: sql.ItemRecord) -> sql.ItemRecord | None:
        if record.status == CANCELLED:
            return None
        if record.status not in OPEN:
            raise WorklistConflict(
                f"worklist item {item_id} is {record.status}: it cannot be cancelled"
            )
        statuses = [CANCELLED if s.status in OPEN else s.status for s in record.steps]
        return _record(
            item_id,
            json.loads(record.dataset_json),
            statuses,
            CANCELLED,
            record.created_at,
            _now(),
        )

    return _one(archive, item_id, change)


def _date_bounds(date: str) -> tuple[str | None, str | None]:
    key = QueryKey(0x00400002, "date", "DA", date)
    try:
        condition = parse_key(key)
    except InvalidQuery as exc:
        raise WorklistError(f"date: {str(exc).removeprefix('date: ')}") from None
    if condition.kind not in (Kind.SINGLE, Kind.RANGE) or len(condition.terms) != 1:
        raise WorklistError(f"date: {date!r} is not YYYYMMDD or a range YYYYMMDD-YYYYMMDD")
    term = condition.terms[0]
    if term.kind is Kind.RANGE:
        return term.low, term.high
    return term.value, term.value


def list_items(
    archive: Archive,
    *,
    status: str | None = None,
    patient_id: str | None = None,
    accession_number: str | None = None,
    modality: str | None = None,
    date: str | None = None,
    limit: int = 1000,
) -> list[WorklistItem]:
    """Stored items, newest first, filtered by exact values: item status, Patient ID,
    Accession Number, and a step of that modality / starting on that date (``YYYYMMDD``
    or a range ``YYYYMMDD-YYYYMMDD``, either end open).

    Raises
    ------
    WorklistError
        An unknown status, a malformed date, a limit below 1.
    """
    if status is not None and status not in STATUSES:
        raise WorklistError(f"status: {status!r} is not one of {', '.join(STATUSES)}")
    if limit < 1:
        raise WorklistError(f"limit: must be 1 or more, got {limit}")
    low = high = None
    if date is not None:
        low, high = _date_bounds(date)
    steps = sql.step_clauses(modality=modality, date_low=low, date_high=high)
    records = sql.list_items(
        archive.index,
        status=status,
        patient_id=patient_id,
        accession_number=accession_number,
        steps=steps,
        limit=limit,
    )
    return [_item(record) for record in records]


def set_step_status(
    archive: Archive,
    *,
    study_instance_uid: str | None = None,
    accession_number: str | None = None,
    scheduled_procedure_step_id: str | None = None,
    status: str,
) -> int:
    """Move the steps an MPPS refers to (PS3.4 F.7.2.1) to ``status``.

    The steps are those of items not cancelled that have every identifier given (Study
    Instance UID, Accession Number, Scheduled Procedure Step ID — all of an item's steps
    when no step ID is given). ``IN PROGRESS`` applies to ``SCHEDULED`` steps,
    ``COMPLETED`` and ``DISCONTINUED`` to ``SCHEDULED`` or ``IN PROGRESS`` ones; other
    steps are left as they are. The items' statuses follow.

    Returns
    -------
    int
        How many items changed.

    Raises
    ------
    WorklistError
        No identifier given, or a status other than the three above.
    """
    if status not in _TRANSITIONS:
        raise WorklistError(
            f"status: {status!r} is not one of {', '.join(_TRANSITIONS)} (set by MPPS)"
        )
    where: list[ColumnElement[bool]] = [worklist_items.c.status != CANCELLED]
    if study_instance_uid:
        where.append(worklist_items.c.study_instance_uid == study_instance_uid)
    if accession_number:
        where.append(worklist_items.c.accession_number == accession_number)
    step_where: list[ColumnElement[bool]] = []
    if scheduled_procedure_step_id:
        step_where.append(
            worklist_steps.c.scheduled_procedure_step_id == scheduled_procedure_step_id
        )
    if len(where) == 1 and not step_where:
        raise WorklistError(
            "a Study Instance UID, an Accession Number or a Scheduled Procedure Step ID "
            "is needed to find the worklist item"
        )
    allowed_from = _TRANSITIONS[status]

    def change(record: sql.ItemRecord) -> sql.ItemRecord | None:
        statuses = []
        changed = False
        for step in record.steps:
            chosen = (
                not scheduled_procedure_step_id
                or step.scheduled_procedure_step_id == scheduled_procedure_step_id
            )
            if chosen and step.status in allowed_from:
                statuses.append(status)
                changed = True
            else:
                statuses.append(step.status)
        if not changed:
            return None
        return _record(
            record.item_id,
            json.loads(record.dataset_json),
            statuses,
            item_status(statuses),
            record.created_at,
            _now(),
        )

    return len(sql.update_items(archive.index, where, change, steps=step_where))
