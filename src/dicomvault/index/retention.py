"""SQL of the retention rules and the storage quota (issue 6 part 4): which unprotected
studies a rule or the quota would delete. Selection only; the deleting is
:mod:`dicomvault.index.deletion`'s."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Connection, func, select

from dicomvault.index.schema import instances, protected_studies, series, studies


def _unprotected() -> Any:
    return studies.c.study_instance_uid.not_in(select(protected_studies.c.study_instance_uid))


def expired_studies(
    conn: Connection,
    *,
    modality: str,
    by: Literal["study_date", "received"],
    cutoff: datetime,
    limit: int,
) -> list[str]:
    """Unprotected studies older than ``cutoff`` by Study Date (0008,0020) — eight-digit
    dates only: a study without a usable date is never old — or by the last receive
    (``studies.updated_at``), with a series of ``modality`` (any when empty)."""
    query = select(studies.c.study_instance_uid, studies.c.study_date).where(_unprotected())
    if by == "study_date":
        query = query.where(
            func.length(studies.c.study_date) == 8,
            studies.c.study_date < cutoff.strftime("%Y%m%d"),
        )
    else:
        query = query.where(studies.c.updated_at < cutoff)
    if modality:
        query = query.where(
            select(series.c.pk)
            .where(series.c.study_pk == studies.c.pk, series.c.modality == modality)
            .exists()
        )
    rows = conn.execute(query.order_by(studies.c.pk).limit(limit)).all()
    return [uid for uid, date in rows if by == "received" or (date or "").isdigit()]


def least_recent_studies(conn: Connection, limit: int) -> list[tuple[str, int]]:
    """``(Study Instance UID, bytes)`` of unprotected studies, least recently received
    first (quota recycling)."""
    query = (
        select(studies.c.study_instance_uid, func.coalesce(func.sum(instances.c.size), 0))
        .join(series, series.c.study_pk == studies.c.pk)
        .join(instances, instances.c.series_pk == series.c.pk)
        .where(_unprotected())
        .group_by(studies.c.pk, studies.c.study_instance_uid, studies.c.updated_at)
        .order_by(studies.c.updated_at, studies.c.pk)
        .limit(limit)
    )
    return [(uid, int(size)) for uid, size in conn.execute(query)]


def total_bytes(conn: Connection) -> int:
    return int(conn.execute(select(func.coalesce(func.sum(instances.c.size), 0))).scalar_one())
