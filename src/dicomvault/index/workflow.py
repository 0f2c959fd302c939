"""SQL of the workflow services' own tables: storage commitment jobs (PS3.4 J) and
MPPS instances (PS3.4 F). Plain rows in and out; the rules live in
``archive/commitment.py`` and ``archive/mpps.py``.

Commitment jobs are claimed with a conditional UPDATE (``claimed_until``), so any
number of processes and nodes may work from the same table without sending a report
twice at the same time; a crashed worker's claim simply runs out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from dicomvault.index.db import Index
from dicomvault.index.schema import commitment_jobs, mpps


class DuplicateKey(Exception):
    """An insert of a Transaction UID / SOP Instance UID that is already there."""


@dataclass(frozen=True, slots=True)
class JobRow:
    pk: int
    transaction_uid: str
    calling_ae_title: str
    called_ae_title: str
    peer_host: str
    refs: str
    result: str | None
    state: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    deadline: datetime
    sent_at: datetime | None
    last_error: str | None


_JOB_COLUMNS = tuple(commitment_jobs.c[name] for name in JobRow.__slots__)


def insert_job(
    index: Index,
    *,
    transaction_uid: str,
    calling_ae_title: str,
    called_ae_title: str,
    peer_host: str,
    refs: str,
    now: datetime,
    deadline: datetime,
    claimed_until: datetime | None = None,
) -> None:
    try:
        with index._writing() as conn:
            conn.execute(
                insert(commitment_jobs).values(
                    transaction_uid=transaction_uid,
                    calling_ae_title=calling_ae_title,
                    called_ae_title=called_ae_title,
                    peer_host=peer_host,
                    refs=refs,
                    state="pending",
                    created_at=now,
                    next_attempt_at=now,
                    deadline=deadline,
                    claimed_until=claimed_until,
                )
            )
    except IntegrityError:
        raise DuplicateKey(transaction_uid) from None


def _claimable(now: datetime) -> Any:
    return or_(commitment_jobs.c.claimed_until.is_(None), commitment_jobs.c.claimed_until < now)


def claim_job(index: Index, transaction_uid: str, now: datetime, hold: timedelta) -> JobRow | None:
    """Claim one pending job for ``hold``; ``None`` when it is sent, expired or claimed."""
    with index._writing() as conn:
        done = conn.execute(
            update(commitment_jobs)
            .where(
                commitment_jobs.c.transaction_uid == transaction_uid,
                commitment_jobs.c.state == "pending",
                _claimable(now),
            )
            .values(claimed_until=now + hold)
        ).rowcount
        if not done:
            return None
        row = conn.execute(
            select(*_JOB_COLUMNS).where(commitment_jobs.c.transaction_uid == transaction_uid)
        ).one()
    return JobRow(**row._asdict())


def due_jobs(index: Index, now: datetime, limit: int) -> list[str]:
    """Transaction UIDs of pending jobs whose next attempt is due and nobody holds."""
    with index._read.connect() as conn:
        rows = conn.execute(
            select(commitment_jobs.c.transaction_uid)
            .where(
                and_(
                    commitment_jobs.c.state == "pending",
                    commitment_jobs.c.next_attempt_at <= now,
                    _claimable(now),
                )
            )
            .order_by(commitment_jobs.c.next_attempt_at)
            .limit(limit)
        ).scalars()
        return list(rows)


def get_job(index: Index, transaction_uid: str) -> JobRow | None:
    with index._read.connect() as conn:
        row = conn.execute(
            select(*_JOB_COLUMNS).where(commitment_jobs.c.transaction_uid == transaction_uid)
        ).first()
    return None if row is None else JobRow(**row._asdict())


def list_jobs(index: Index, *, state: str | None = None, limit: int = 100) -> list[JobRow]:
    statement = select(*_JOB_COLUMNS).order_by(commitment_jobs.c.pk.desc()).limit(limit)
    if state is not None:
        statement = statement.where(commitment_jobs.c.state == state)
    with index._read.connect() as conn:
        return [JobRow(**row._asdict()) for row in conn.execute(statement)]


def update_job(index: Index, transaction_uid: str, **values: Any) -> None:
    """Set columns of a job (``result``, ``state``, ``attempts``, ``next_attempt_at``,
    ``sent_at``, ``last_error``, ``claimed_until``)."""
    with index._writing() as conn:
        conn.execute(
            update(commitment_jobs)
            .where(commitment_jobs.c.transaction_uid == transaction_uid)
            .values(**values)
        )


# -- MPPS --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MppsRow:
    sop_instance_uid: str
    status: str
    calling_ae_title: str
    patient_id: str | None
    study_instance_uid: str | None
    accession_number: str | None
    modality: str | None
    dataset: str
    created_at: datetime
    updated_at: datetime


_MPPS_COLUMNS = tuple(mpps.c[name] for name in MppsRow.__slots__)


def insert_mpps(index: Index, row: MppsRow) -> None:
    try:
        with index._writing() as conn:
            conn.execute(insert(mpps).values(**{n: getattr(row, n) for n in MppsRow.__slots__}))
    except IntegrityError:
        raise DuplicateKey(row.sop_instance_uid) from None


def get_mpps(index: Index, sop_instance_uid: str) -> MppsRow | None:
    with index._read.connect() as conn:
        row = conn.execute(
            select(*_MPPS_COLUMNS).where(mpps.c.sop_instance_uid == sop_instance_uid)
        ).first()
    return None if row is None else MppsRow(**row._asdict())


def replace_mpps(index: Index, row: MppsRow, *, expected_status: str) -> bool:
    """Write ``row`` over the stored one if its status is still ``expected_status``
    (compare-and-set: two N-SETs racing cannot both complete a step)."""
    values = {n: getattr(row, n) for n in MppsRow.__slots__ if n not in ("created_at",)}
    with index._writing() as conn:
        done = conn.execute(
            update(mpps)
            .where(
                mpps.c.sop_instance_uid == row.sop_instance_uid,
                mpps.c.status == expected_status,
            )
            .values(**values)
        ).rowcount
    return bool(done)


def list_mpps(
    index: Index,
    *,
    status: str | None = None,
    study_instance_uid: str | None = None,
    limit: int = 100,
) -> list[MppsRow]:
    statement = select(*_MPPS_COLUMNS).order_by(mpps.c.pk.desc()).limit(limit)
    if status is not None:
        statement = statement.where(mpps.c.status == status)
    if study_instance_uid is not None:
        statement = statement.where(mpps.c.study_instance_uid == study_instance_uid)
    with index._read.connect() as conn:
        return [MppsRow(**row._asdict()) for row in conn.execute(statement)]
