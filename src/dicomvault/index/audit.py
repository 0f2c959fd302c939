"""SQL of the audit trail (table ``audit_events``, revision 0007) and the look-ups audit
messages need (a study's patient and accession number).

Plain rows in, plain rows out: the messages are built in ``security/audit.py`` and
recorded by ``archive/audit.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, insert, select

from dicomvault.index.db import Index
from dicomvault.index.schema import audit_events

#: Most rows one search returns.
MAX_LIMIT = 1000
#: Rows one pruning transaction deletes at most (a long DELETE would hold SQLite's
#: write lock, and the audit writer with it, for its whole duration).
PRUNE_BATCH = 5000


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One recorded audit message."""

    id: int
    time: datetime
    event_id: str
    event_type: str
    action: str
    outcome: int
    user: str
    peer: str
    patient_id: str
    study_instance_uid: str
    xml: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "time": self.time.isoformat(),
            "event_id": self.event_id,
            "event_type": self.event_type,
            "action": self.action,
            "outcome": self.outcome,
            "user": self.user,
            "peer": self.peer,
            "patient_id": self.patient_id,
            "study_instance_uid": self.study_instance_uid,
            "xml": self.xml,
        }


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """What ``dicomvault audit`` and ``GET /api/audit`` filter on; ``None`` = any.
    ``patient`` and ``study`` match one of the values a message names."""

    since: datetime | None = None
    until: datetime | None = None
    event_id: str | None = None
    user: str | None = None
    patient: str | None = None
    study: str | None = None
    outcome: int | None = None
    limit: int = 100
    offset: int = 0


def insert_events(index: Index, rows: Sequence[dict[str, Any]]) -> None:
    """Record messages, all in one transaction (the audit writer batches them)."""
    if not rows:
        return
    with index._writing() as conn:
        conn.execute(insert(audit_events), list(rows))


def _like_member(column: Any, value: str) -> Any:
    # One of a backslash-joined list: equal, or at either end, or in the middle.
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return (
        (column == value)
        | column.like(f"{escaped}\\\\%", escape="\\")
        | column.like(f"%\\\\{escaped}", escape="\\")
        | column.like(f"%\\\\{escaped}\\\\%", escape="\\")
    )


def search(index: Index, where: AuditFilter) -> list[AuditRow]:
    """Recorded messages matching ``where``, newest first, at most ``where.limit``
    (capped at :data:`MAX_LIMIT`)."""
    c = audit_events.c
    stmt = select(audit_events)
    if where.since is not None:
        stmt = stmt.where(c.event_time >= where.since)
    if where.until is not None:
        stmt = stmt.where(c.event_time <= where.until)
    if where.event_id:
        stmt = stmt.where(c.event_id == where.event_id)
    if where.user:
        stmt = stmt.where(c.user_id == where.user)
    if where.patient:
        stmt = stmt.where(_like_member(c.patient_id, where.patient))
    if where.study:
        stmt = stmt.where(_like_member(c.study_instance_uid, where.study))
    if where.outcome is not None:
        stmt = stmt.where(c.outcome == where.outcome)
    limit = max(1, min(where.limit, MAX_LIMIT))
    stmt = stmt.order_by(c.event_time.desc(), c.pk.desc()).limit(limit).offset(max(0, where.offset))
    with index._read.connect() as conn:
        rows = conn.execute(stmt).mappings().all()
    return [
        AuditRow(
            id=row["pk"],
            time=_aware(row["event_time"]),
            event_id=row["event_id"],
            event_type=row["event_type"],
            action=row["action"],
            outcome=row["outcome"],
            user=row["user_id"],
            peer=row["peer"],
            patient_id=row["patient_id"],
            study_instance_uid=row["study_instance_uid"],
            xml=row["xml"],
        )
        for row in rows
    ]


def _aware(value: datetime) -> datetime:
    # SQLite gives naive datetimes back: they were stored in UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _studies(index: Index, columns: str, study_uids: Sequence[str]) -> list[tuple[Any, ...]]:
    # SQL text: the audit writer looks studies up for every retrieve and query message,
    # and a SQLAlchemy statement cost ~1 ms to build and compile each time.
    marks = ", ".join("?" * len(study_uids))
    return index.read_rows(
        f"SELECT studies.study_instance_uid, {columns} FROM studies "
        f"JOIN patients ON patients.pk = studies.patient_pk "
        f"WHERE studies.study_instance_uid IN ({marks})",
        study_uids,
    )


def study_subjects(index: Index, study_uids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Study Instance UID → (Patient ID, Accession Number) for the studies the index
    knows; unknown studies are left out."""
    if not study_uids:
        return {}
    found = _studies(index, "patients.patient_id, studies.accession_number", study_uids)
    return {uid: (pid or "", accession or "") for uid, pid, accession in found}


def study_names(index: Index, study_uids: Sequence[str]) -> dict[str, tuple[str, str, str]]:
    """Study Instance UID → (Patient ID, Patient's Name, Study Description) for the
    studies the index knows (the ParticipantObjectName of their audit objects)."""
    if not study_uids:
        return {}
    columns = "patients.patient_id, patients.patient_name, studies.study_description"
    return {
        uid: (pid or "", name or "", description or "")
        for uid, pid, name, description in _studies(index, columns, study_uids)
    }


def prune_events(index: Index, before: datetime) -> int:
    """Delete the recorded messages older than ``before``, :data:`PRUNE_BATCH` rows per
    transaction (index ``ix_audit_events_time``); how many went."""
    c = audit_events.c
    doomed = select(c.pk).where(c.event_time < before).limit(PRUNE_BATCH).scalar_subquery()
    total = 0
    while True:
        with index._writing() as conn:
            gone = conn.execute(delete(audit_events).where(c.pk.in_(doomed))).rowcount
        total += gone
        if gone < PRUNE_BATCH:
            return total
