"""SQL of the Modality Worklist (tables ``worklist_items`` and ``worklist_steps``).

Plain records in, plain records out: what an item means (validation, statuses, DICOM
JSON) lives in ``archive/worklist.py``. An item's row and its steps' rows are always
written together in one transaction. Reads that filter (:func:`candidates`,
:func:`list_items`) select a superset through the summary columns; the caller finishes
the match on the stored JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Select, delete, insert, select, update

from dicomvault.index.db import Index
from dicomvault.index.query import stream
from dicomvault.index.schema import worklist_items, worklist_steps


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One Scheduled Procedure Step of an item (a row of ``worklist_steps``)."""

    position: int
    status: str
    scheduled_procedure_step_id: str
    modality: str | None
    station_ae_titles: str | None
    start_date: str
    start_time: str | None


@dataclass(frozen=True, slots=True)
class ItemRecord:
    """One worklist item (a row of ``worklist_items``) with its steps in sequence order."""

    item_id: str
    status: str
    patient_id: str
    issuer_of_patient_id: str
    patient_name: str | None
    accession_number: str | None
    study_instance_uid: str
    requested_procedure_id: str | None
    dataset_json: str
    created_at: datetime
    updated_at: datetime
    steps: tuple[StepRecord, ...] = ()


class ItemExists(Exception):
    """:func:`insert_item` of an ``item_id`` already taken."""


_ITEM_COLUMNS = (
    worklist_items.c.pk,
    worklist_items.c.item_id,
    worklist_items.c.status,
    worklist_items.c.patient_id,
    worklist_items.c.issuer_of_patient_id,
    worklist_items.c.patient_name,
    worklist_items.c.accession_number,
    worklist_items.c.study_instance_uid,
    worklist_items.c.requested_procedure_id,
    worklist_items.c.dataset_json,
    worklist_items.c.created_at,
    worklist_items.c.updated_at,
)
_STEP_FIELDS = (
    "position",
    "status",
    "scheduled_procedure_step_id",
    "modality",
    "station_ae_titles",
    "start_date",
    "start_time",
)


def _item_values(record: ItemRecord) -> dict[str, Any]:
    return {
        "item_id": record.item_id,
        "status": record.status,
        "patient_id": record.patient_id,
        "issuer_of_patient_id": record.issuer_of_patient_id,
        "patient_name": record.patient_name,
        "accession_number": record.accession_number,
        "study_instance_uid": record.study_instance_uid,
        "requested_procedure_id": record.requested_procedure_id,
        "dataset_json": record.dataset_json,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
    }


def _insert_steps(conn: Connection, item_pk: int, steps: Sequence[StepRecord]) -> None:
    if steps:
        conn.execute(
            insert(worklist_steps),
            [
                {"item_pk": item_pk, **{name: getattr(step, name) for name in _STEP_FIELDS}}
                for step in steps
            ],
        )


def insert_item(index: Index, record: ItemRecord) -> None:
    """Record a new item and its steps.

    Raises
    ------
    ItemExists
        ``record.item_id`` is taken.
    """
    with index._writing() as conn:
        taken = conn.execute(
            select(worklist_items.c.pk).where(worklist_items.c.item_id == record.item_id)
        ).first()
        if taken is not None:
            raise ItemExists(record.item_id)
        pk = conn.execute(
            insert(worklist_items).values(**_item_values(record)).returning(worklist_items.c.pk)
        ).scalar_one()
        _insert_steps(conn, int(pk), record.steps)


def _steps_of(conn: Connection, item_pks: Sequence[int]) -> dict[int, list[StepRecord]]:
    out: dict[int, list[StepRecord]] = {pk: [] for pk in item_pks}
    if not item_pks:
        return out
    rows = conn.execute(
        select(worklist_steps.c.item_pk, *(worklist_steps.c[name] for name in _STEP_FIELDS))
        .where(worklist_steps.c.item_pk.in_(item_pks))
        .order_by(worklist_steps.c.item_pk, worklist_steps.c.position)
    ).all()
    for row in rows:
        values = row._asdict()
        out[values.pop("item_pk")].append(StepRecord(**values))
    return out


def _records(conn: Connection, statement: Select[Any]) -> list[tuple[int, ItemRecord]]:
    rows = [row._asdict() for row in conn.execute(statement).all()]
    steps = _steps_of(conn, [row["pk"] for row in rows])
    out = []
    for row in rows:
        pk = row.pop("pk")
        out.append((pk, ItemRecord(**row, steps=tuple(steps[pk]))))
    return out


def get_item(index: Index, item_id: str) -> ItemRecord | None:
    """The item ``item_id`` with its steps, or ``None``."""
    statement = select(*_ITEM_COLUMNS).where(worklist_items.c.item_id == item_id)
    with index._read.connect() as conn:
        found = _records(conn, statement)
    return found[0][1] if found else None


def step_clauses(
    *,
    modality: str | None = None,
    date_low: str | None = None,
    date_high: str | None = None,
) -> list[ColumnElement[bool]]:
    """WHERE clauses on ``worklist_steps`` for :func:`list_items`' ``steps`` filter."""
    clauses: list[ColumnElement[bool]] = []
    if modality is not None:
        clauses.append(worklist_steps.c.modality == modality)
    if date_low is not None:
        clauses.append(worklist_steps.c.start_date >= date_low)
    if date_high is not None:
        clauses.append(worklist_steps.c.start_date <= date_high)
    return clauses


def list_items(
    index: Index,
    *,
    status: str | None = None,
    patient_id: str | None = None,
    accession_number: str | None = None,
    steps: Sequence[ColumnElement[bool]] = (),
    limit: int = 1000,
) -> list[ItemRecord]:
    """Items by exact status / patient ID / accession number, and having a step that
    meets every clause of ``steps`` (see :func:`step_clauses`); newest first."""
    statement = select(*_ITEM_COLUMNS)
    if status is not None:
        statement = statement.where(worklist_items.c.status == status)
    if patient_id is not None:
        statement = statement.where(worklist_items.c.patient_id == patient_id)
    if accession_number is not None:
        statement = statement.where(worklist_items.c.accession_number == accession_number)
    if steps:
        having = select(worklist_steps.c.item_pk).where(*steps)
        statement = statement.where(worklist_items.c.pk.in_(having))
    statement = statement.order_by(worklist_items.c.pk.desc()).limit(limit)
    with index._read.connect() as conn:
        return [record for _, record in _records(conn, statement)]


def candidates(
    index: Index,
    *,
    item_statuses: Sequence[str],
    step_statuses: Sequence[str],
    clauses: Sequence[ColumnElement[bool]] = (),
) -> Iterator[tuple[str, str, int, str]]:
    """``(item_id, dataset_json, step position, step status)`` of every step of the given
    statuses, of an item of the given statuses, meeting ``clauses`` (over the columns of
    both tables), in schedule order: start date, start time, then storage order.
    Streamed; close the iterator to release the cursor early."""
    statement = (
        select(
            worklist_items.c.item_id,
            worklist_items.c.dataset_json,
            worklist_steps.c.position,
            worklist_steps.c.status.label("step_status"),
        )
        .join(worklist_steps, worklist_steps.c.item_pk == worklist_items.c.pk)
        .where(
            worklist_items.c.status.in_(item_statuses),
            worklist_steps.c.status.in_(step_statuses),
            *clauses,
        )
        .order_by(
            worklist_steps.c.start_date,
            worklist_steps.c.start_time,
            worklist_items.c.pk,
            worklist_steps.c.position,
        )
    )
    for row in stream(index, statement):
        yield row["item_id"], row["dataset_json"], row["position"], row["step_status"]


def update_items(
    index: Index,
    where: Sequence[ColumnElement[bool]],
    change: Callable[[ItemRecord], ItemRecord | None],
    *,
    steps: Sequence[ColumnElement[bool]] = (),
) -> list[ItemRecord]:
    """Read-modify-write, in one transaction: every item meeting ``where`` (and having a
    step meeting ``steps``, when given) is passed to ``change``; the records it returns
    replace the stored ones (steps included), ``None`` leaves the item as it is. Returns
    the records written. An exception from ``change`` rolls everything back."""
    statement = select(*_ITEM_COLUMNS).where(*where)
    if steps:
        having = select(worklist_steps.c.item_pk).where(*steps)
        statement = statement.where(worklist_items.c.pk.in_(having))
    written: list[ItemRecord] = []
    with index._writing() as conn:
        # FOR UPDATE: PostgreSQL's READ COMMITTED would let two writers (an MPPS N-SET
        # and an HL7 cancel) both read the old row; SQLite's BEGIN IMMEDIATE already
        # serialises writers, and SQLAlchemy leaves the clause out there.
        locked = statement.order_by(worklist_items.c.pk).with_for_update()
        for pk, record in _records(conn, locked):
            new = change(record)
            if new is None:
                continue
            new = replace(new, item_id=record.item_id, created_at=record.created_at)
            conn.execute(
                update(worklist_items).where(worklist_items.c.pk == pk).values(**_item_values(new))
            )
            conn.execute(delete(worklist_steps).where(worklist_steps.c.item_pk == pk))
            _insert_steps(conn, pk, new.steps)
            written.append(new)
    return written
