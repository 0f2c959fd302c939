"""Index side of deletion: what a deletion removes, the deletion queue, IOCM rejected
instances, protected studies, and the selections of retention and quota recycling.

One rule makes deletion crash-safe (issue 6 part 4): the transaction that removes index
rows also writes, in ``deletion_queue``, the names of the blobs those rows named. Blobs
are removed only after that commit, and their queue rows after that; whatever a crash
leaves in the queue is finished on the next start-up or runner pass. So the index never
names a missing blob, and no blob of a deleted instance stays behind.

Derived attributes (PS3.4 C.6.1.1 / C.6.2.1: Number of Series/Study Related Instances,
Number of Study Related Series, Number of Patient Related Studies, Modalities and SOP
Classes in Study) are recounted from the remaining rows of every touched series, study
and patient, in the same transaction.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeVar

from sqlalchemy import Connection, Select, delete, func, insert, select, update

from dicomvault.index.ingest import refresh_study_sets
from dicomvault.index.retention import expired_studies, least_recent_studies, total_bytes
from dicomvault.index.schema import (
    deletion_queue,
    instances,
    patients,
    protected_studies,
    rejected_instances,
    series,
    studies,
)
from dicomvault.model.errors import AmbiguousTarget, NotFound, Protected

if TYPE_CHECKING:
    from dicomvault.index.db import Index

Level = Literal["patient", "study", "series", "instance"]

#: Values per ``IN (…)`` list: far below SQLite's 32766 host parameters.
_CHUNK = 500

T = TypeVar("T")


def _chunks(values: Sequence[T]) -> Iterator[Sequence[T]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


@dataclass(frozen=True, slots=True)
class Selection:
    """What to delete: a patient (Patient ID + Issuer of Patient ID), a study, a series
    or an instance. ``study`` / ``series`` narrow a series or instance to a hierarchy
    (DICOMweb paths): an instance outside it is not selected."""

    level: Level
    uid: str  # the Patient ID for level "patient"
    issuer: str | None = None  # level "patient": None = the only patient with that ID
    study: str | None = None
    series: str | None = None

    def describe(self) -> str:
        if self.level == "patient":
            issuer = f" (issuer {self.issuer!r})" if self.issuer is not None else ""
            return f"patient {self.uid!r}{issuer}"
        return f"{self.level} {self.uid}"


class Doomed(NamedTuple):
    """An instance a deletion removes, with the keys of its parents."""

    pk: int
    sop_instance_uid: str
    blob_name: str
    size: int
    series_pk: int
    series_instance_uid: str
    study_pk: int
    study_instance_uid: str
    patient_pk: int


@dataclass(slots=True)
class Plan:
    """The instances a deletion removes and the parents that go with them."""

    instances: list[Doomed]
    series_instance_uids: list[str] = field(default_factory=list)  # series that go whole
    study_instance_uids: list[str] = field(default_factory=list)  # studies that go whole
    patients: int = 0  # patients that go whole
    #: Protected studies among those the deletion touches (whole or in part).
    protected: list[str] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(d.size for d in self.instances)


@dataclass(frozen=True, slots=True)
class QueuedBlob:
    pk: int
    blob_name: str
    sop_instance_uid: str
    study_instance_uid: str
    size: int
    reason: str
    queued_at: datetime
    not_before: datetime


@dataclass(frozen=True, slots=True)
class Rejected:
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    reason_code: str
    kos_sop_instance_uid: str
    rejected_at: datetime


def _aware(value: datetime) -> datetime:
    # SQLite gives back naive datetimes (UTC as written).
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _doomed_query() -> Select[Any]:
    return (
        select(
            instances.c.pk,
            instances.c.sop_instance_uid,
            instances.c.blob_name,
            instances.c.size,
            series.c.pk,
            series.c.series_instance_uid,
            studies.c.pk,
            studies.c.study_instance_uid,
            studies.c.patient_pk,
        )
        .join(series, instances.c.series_pk == series.c.pk)
        .join(studies, series.c.study_pk == studies.c.pk)
    )


def _patient_pk(conn: Connection, patient_id: str, issuer: str | None) -> int:
    query = select(patients.c.pk, patients.c.issuer_of_patient_id).where(
        patients.c.patient_id == patient_id
    )
    if issuer is not None:
        query = query.where(patients.c.issuer_of_patient_id == issuer)
    rows = conn.execute(query.order_by(patients.c.pk)).all()
    if not rows:
        issued = f" with issuer {issuer!r}" if issuer is not None else ""
        raise NotFound(f"no patient with Patient ID {patient_id!r}{issued}")
    if len(rows) > 1:
        issuers = ", ".join(repr(r.issuer_of_patient_id) for r in rows)
        raise AmbiguousTarget(
            f"Patient ID {patient_id!r} exists with several issuers ({issuers}): "
            "name the Issuer of Patient ID"
        )
    return int(rows[0].pk)


def select_doomed(conn: Connection, selection: Selection) -> list[Doomed]:
    """The instances ``selection`` names, in insertion order.

    Raises
    ------
    NotFound
        Nothing matches (an unknown UID, or one outside the given hierarchy).
    AmbiguousTarget
        A Patient ID without issuer that several patients have.
    """
    query = _doomed_query()
    level = selection.level
    if level == "patient":
        pk = _patient_pk(conn, selection.uid, selection.issuer)
        query = query.where(studies.c.patient_pk == pk)
    elif level == "study":
        query = query.where(studies.c.study_instance_uid == selection.uid)
    elif level == "series":
        query = query.where(series.c.series_instance_uid == selection.uid)
    else:
        query = query.where(instances.c.sop_instance_uid == selection.uid)
    if selection.study is not None:
        query = query.where(studies.c.study_instance_uid == selection.study)
    if selection.series is not None:
        query = query.where(series.c.series_instance_uid == selection.series)
    found = [Doomed(*row) for row in conn.execute(query.order_by(instances.c.pk))]
    if not found:
        where = ""
        if selection.series is not None:
            where = f" in series {selection.series}"
        if selection.study is not None:
            where += f" of study {selection.study}" if where else f" in study {selection.study}"
        raise NotFound(f"no {selection.describe()}{where}")
    return found


def doomed_by_uids(conn: Connection, sop_instance_uids: Sequence[str]) -> list[Doomed]:
    """The stored instances among ``sop_instance_uids`` (unknown ones are skipped)."""
    found: list[Doomed] = []
    for chunk in _chunks(list(sop_instance_uids)):
        query = _doomed_query().where(instances.c.sop_instance_uid.in_(chunk))
        found += [Doomed(*row) for row in conn.execute(query)]
    return found


def _counts(conn: Connection, column: Any, key: Any, pks: Iterable[int]) -> dict[int, int]:
    """``{pk: value of column}`` for the rows of ``key`` in ``pks``."""
    out: dict[int, int] = {}
    for chunk in _chunks(sorted(set(pks))):
        out.update(
            (int(k), int(v)) for k, v in conn.execute(select(key, column).where(key.in_(chunk)))
        )
    return out


def protected_among(conn: Connection, study_uids: Iterable[str]) -> list[str]:
    found: list[str] = []
    for chunk in _chunks(sorted(set(study_uids))):
        found += conn.execute(
            select(protected_studies.c.study_instance_uid).where(
                protected_studies.c.study_instance_uid.in_(chunk)
            )
        ).scalars()
    return sorted(found)


def plan(conn: Connection, doomed: list[Doomed]) -> Plan:
    """What removing ``doomed`` takes with it (from the derived counts)."""
    result = Plan(doomed)
    per_series = Counter(d.series_pk for d in doomed)
    per_study = Counter(d.study_pk for d in doomed)
    series_total = _counts(conn, series.c.number_of_instances, series.c.pk, per_series)
    study_total = _counts(conn, studies.c.number_of_instances, studies.c.pk, per_study)
    series_uid = {d.series_pk: d.series_instance_uid for d in doomed}
    study_uid = {d.study_pk: d.study_instance_uid for d in doomed}
    study_patient = {d.study_pk: d.patient_pk for d in doomed}
    result.series_instance_uids = sorted(
        series_uid[pk] for pk, n in per_series.items() if n >= series_total.get(pk, 0)
    )
    gone_studies = [pk for pk, n in per_study.items() if n >= study_total.get(pk, 0)]
    result.study_instance_uids = sorted(study_uid[pk] for pk in gone_studies)
    per_patient = Counter(study_patient[pk] for pk in gone_studies)
    patient_total = _counts(conn, patients.c.number_of_studies, patients.c.pk, per_patient)
    result.patients = sum(1 for pk, n in per_patient.items() if n >= patient_total.get(pk, 0))
    result.protected = protected_among(conn, study_uid.values())
    return result


def remove(
    index: Index,
    conn: Connection,
    doomed: list[Doomed],
    *,
    reason: str,
    now: datetime,
    not_before: datetime,
) -> None:
    """Remove the rows of ``doomed`` and queue their blobs, in ``conn``'s transaction;
    recount the derived attributes of every touched series, study and patient and drop
    those left empty (with a removed study's protection)."""
    if not doomed:
        return
    conn.execute(
        insert(deletion_queue),
        [
            {
                "blob_name": d.blob_name,
                "sop_instance_uid": d.sop_instance_uid,
                "study_instance_uid": d.study_instance_uid,
                "size": d.size,
                "reason": reason,
                "queued_at": now,
                "not_before": not_before,
            }
            for d in doomed
        ],
    )
    for chunk in _chunks([d.pk for d in doomed]):
        conn.execute(delete(instances).where(instances.c.pk.in_(chunk)))
    series_pks = sorted({d.series_pk for d in doomed})
    study_pks = sorted({d.study_pk for d in doomed})
    patient_pks = sorted({d.patient_pk for d in doomed})
    left = _grouped(conn, instances.c.series_pk, series_pks)
    for pk in series_pks:
        if left.get(pk, 0):
            conn.execute(
                update(series).where(series.c.pk == pk).values(number_of_instances=left[pk])
            )
        else:
            conn.execute(delete(series).where(series.c.pk == pk))
    study_series = _grouped(conn, series.c.study_pk, study_pks)
    study_instances = _study_instances(conn, study_pks)
    emptied: list[int] = []
    for pk in study_pks:
        if study_series.get(pk, 0):
            conn.execute(
                update(studies)
                .where(studies.c.pk == pk)
                .values(number_of_series=study_series[pk], number_of_instances=study_instances[pk])
            )
            refresh_study_sets(index._sql(conn), pk)
        else:
            emptied.append(pk)
    for chunk in _chunks(emptied):
        uids = list(
            conn.execute(
                select(studies.c.study_instance_uid).where(studies.c.pk.in_(chunk))
            ).scalars()
        )
        conn.execute(
            delete(protected_studies).where(protected_studies.c.study_instance_uid.in_(uids))
        )
        conn.execute(delete(studies).where(studies.c.pk.in_(chunk)))
    patient_studies = _grouped(conn, studies.c.patient_pk, patient_pks)
    for pk in patient_pks:
        if patient_studies.get(pk, 0):
            conn.execute(
                update(patients)
                .where(patients.c.pk == pk)
                .values(number_of_studies=patient_studies[pk])
            )
        else:
            conn.execute(delete(patients).where(patients.c.pk == pk))


def _grouped(conn: Connection, key: Any, pks: Sequence[int]) -> dict[int, int]:
    """``{pk: rows whose key is pk}`` for ``pks``."""
    out: dict[int, int] = {}
    for chunk in _chunks(list(pks)):
        rows = conn.execute(select(key, func.count()).where(key.in_(chunk)).group_by(key))
        out.update((int(k), int(n)) for k, n in rows)
    return out


def _study_instances(conn: Connection, study_pks: Sequence[int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for chunk in _chunks(list(study_pks)):
        rows = conn.execute(
            select(series.c.study_pk, func.coalesce(func.sum(series.c.number_of_instances), 0))
            .where(series.c.study_pk.in_(chunk))
            .group_by(series.c.study_pk)
        )
        out.update((int(k), int(n)) for k, n in rows)
    return out


# -- the queue -------------------------------------------------------------------------


def due(conn: Connection, now: datetime, limit: int) -> list[QueuedBlob]:
    """Queued blobs whose time has come, oldest first."""
    rows = conn.execute(
        select(deletion_queue)
        .where(deletion_queue.c.not_before <= now)
        .order_by(deletion_queue.c.pk)
        .limit(limit)
    ).all()
    return [_queued(row._mapping) for row in rows]


def _queued(row: Any) -> QueuedBlob:
    return QueuedBlob(
        pk=int(row["pk"]),
        blob_name=row["blob_name"],
        sop_instance_uid=row["sop_instance_uid"],
        study_instance_uid=row["study_instance_uid"],
        size=int(row["size"]),
        reason=row["reason"],
        queued_at=_aware(row["queued_at"]),
        not_before=_aware(row["not_before"]),
    )


def pending(conn: Connection, limit: int) -> tuple[int, list[QueuedBlob]]:
    """(how many rows the queue holds, the first ``limit`` of them)."""
    total = conn.execute(select(func.count()).select_from(deletion_queue)).scalar_one()
    rows = conn.execute(select(deletion_queue).order_by(deletion_queue.c.pk).limit(limit)).all()
    return int(total), [_queued(row._mapping) for row in rows]


def finished(conn: Connection, pks: Sequence[int]) -> None:
    for chunk in _chunks(list(pks)):
        conn.execute(delete(deletion_queue).where(deletion_queue.c.pk.in_(chunk)))


def queued_blob_names(conn: Connection) -> set[str]:
    return set(conn.execute(select(deletion_queue.c.blob_name)).scalars())


# -- IOCM rejection --------------------------------------------------------------------


def record_rejections(
    conn: Connection,
    references: Sequence[tuple[str, str, str]],
    *,
    reason_code: str,
    kos_sop_instance_uid: str,
    now: datetime,
) -> int:
    """Record ``(study, series, SOP instance)`` UIDs as rejected; an instance already
    rejected keeps its first note. Returns how many were new."""
    uids = [sop for _, _, sop in references]
    known: set[str] = set()
    for chunk in _chunks(uids):
        known.update(
            conn.execute(
                select(rejected_instances.c.sop_instance_uid).where(
                    rejected_instances.c.sop_instance_uid.in_(chunk)
                )
            ).scalars()
        )
    new = [
        {
            "sop_instance_uid": sop,
            "study_instance_uid": study,
            "series_instance_uid": series_uid,
            "reason_code": reason_code,
            "kos_sop_instance_uid": kos_sop_instance_uid,
            "rejected_at": now,
        }
        for study, series_uid, sop in references
        if sop not in known
    ]
    if new:
        conn.execute(insert(rejected_instances), new)
    return len(new)


def rejected_still_indexed(conn: Connection, limit: int) -> list[Doomed]:
    """Instances indexed although rejected: stored while their rejection note was being
    recorded (the runner sweeps them)."""
    query = (
        _doomed_query()
        .join(
            rejected_instances,
            rejected_instances.c.sop_instance_uid == instances.c.sop_instance_uid,
        )
        .limit(limit)
    )
    return [Doomed(*row) for row in conn.execute(query)]


def rejected(conn: Connection, limit: int) -> tuple[int, list[Rejected]]:
    total = conn.execute(select(func.count()).select_from(rejected_instances)).scalar_one()
    rows = conn.execute(
        select(rejected_instances).order_by(rejected_instances.c.rejected_at.desc()).limit(limit)
    ).all()
    return int(total), [
        Rejected(**{**row._mapping, "rejected_at": _aware(row.rejected_at)}) for row in rows
    ]


# -- protection ------------------------------------------------------------------------


def protect(conn: Connection, study_instance_uid: str, note: str, now: datetime) -> bool:
    """Protect a stored study; False when it already was.

    Raises
    ------
    NotFound
        No such study.
    """
    exists = conn.execute(
        select(studies.c.pk).where(studies.c.study_instance_uid == study_instance_uid)
    ).first()
    if exists is None:
        raise NotFound(f"no study with Study Instance UID {study_instance_uid}")
    if protected_among(conn, [study_instance_uid]):
        return False
    conn.execute(
        insert(protected_studies).values(
            study_instance_uid=study_instance_uid, protected_at=now, note=note
        )
    )
    return True


def unprotect(conn: Connection, study_instance_uid: str) -> bool:
    """Lift a study's protection; False when it was not protected."""
    done = conn.execute(
        delete(protected_studies).where(
            protected_studies.c.study_instance_uid == study_instance_uid
        )
    )
    return bool(done.rowcount)


# -- the transactions ------------------------------------------------------------------


class Deletions:
    """The deletion transactions of one :class:`~dicomvault.index.db.Index`
    (``index.deletions``); each method is one transaction."""

    def __init__(self, index: Index) -> None:
        self._index = index

    def plan(self, selection: Selection) -> Plan:
        """What deleting ``selection`` would remove (a dry run: nothing changes)."""
        with self._index._read.connect() as conn:
            return plan(conn, select_doomed(conn, selection))

    def delete(
        self,
        selection: Selection,
        *,
        force: bool,
        reason: str,
        now: datetime,
        not_before: datetime,
    ) -> Plan:
        """Remove ``selection``'s rows and queue their blobs (one transaction).

        Raises
        ------
        NotFound, AmbiguousTarget
            As :func:`select_doomed`.
        Protected
            A touched study is protected and ``force`` is false (nothing is removed).
        """
        with self._index._writing() as conn:
            result = plan(conn, select_doomed(conn, selection))
            if result.protected and not force:
                raise Protected(
                    f"study {', '.join(result.protected)} is protected: unprotect it or "
                    "force the deletion"
                )
            remove(
                self._index, conn, result.instances, reason=reason, now=now, not_before=not_before
            )
            return result

    def delete_unprotected_study(
        self, study_instance_uid: str, *, reason: str, now: datetime
    ) -> Plan | None:
        """Remove a study unless it is (by now) protected or gone (retention, quota)."""
        with self._index._writing() as conn:
            if protected_among(conn, [study_instance_uid]):
                return None
            try:
                doomed = select_doomed(conn, Selection("study", study_instance_uid))
            except NotFound:
                return None
            result = plan(conn, doomed)
            remove(self._index, conn, doomed, reason=reason, now=now, not_before=now)
            return result

    def reject(
        self,
        references: Sequence[tuple[str, str, str]],
        *,
        reason_code: str,
        kos_sop_instance_uid: str,
        now: datetime,
        not_before: datetime,
    ) -> Plan:
        """Record an IOCM rejection and remove the rows of the rejected instances that
        are stored (one transaction); their blobs are queued until ``not_before``."""
        with self._index._writing() as conn:
            record_rejections(
                conn,
                references,
                reason_code=reason_code,
                kos_sop_instance_uid=kos_sop_instance_uid,
                now=now,
            )
            doomed = doomed_by_uids(conn, [sop for _, _, sop in references])
            result = plan(conn, doomed)
            remove(self._index, conn, doomed, reason="rejected", now=now, not_before=not_before)
            return result

    def sweep_rejected(self, *, now: datetime, not_before: datetime, limit: int) -> Plan:
        """Remove instances that are indexed although rejected (see
        :func:`rejected_still_indexed`)."""
        with self._index._writing() as conn:
            doomed = rejected_still_indexed(conn, limit)
            result = plan(conn, doomed)
            remove(self._index, conn, doomed, reason="rejected", now=now, not_before=not_before)
            return result

    def due(self, now: datetime, limit: int = 1000) -> list[QueuedBlob]:
        with self._index._read.connect() as conn:
            return due(conn, now, limit)

    def finished(self, pks: Sequence[int]) -> None:
        if pks:
            with self._index._writing() as conn:
                finished(conn, pks)

    def pending(self, limit: int = 1000) -> tuple[int, list[QueuedBlob]]:
        with self._index._read.connect() as conn:
            return pending(conn, limit)

    def rejected(self, limit: int = 1000) -> tuple[int, list[Rejected]]:
        with self._index._read.connect() as conn:
            return rejected(conn, limit)

    def queued_blob_names(self) -> set[str]:
        with self._index._read.connect() as conn:
            return queued_blob_names(conn)

    def protect(self, study_instance_uid: str, note: str, now: datetime) -> bool:
        with self._index._writing() as conn:
            return protect(conn, study_instance_uid, note, now)

    def unprotect(self, study_instance_uid: str) -> bool:
        with self._index._writing() as conn:
            return unprotect(conn, study_instance_uid)

    def is_protected(self, study_instance_uid: str) -> bool:
        with self._index._read.connect() as conn:
            return bool(protected_among(conn, [study_instance_uid]))

    def expired_studies(
        self,
        *,
        modality: str,
        by: Literal["study_date", "received"],
        cutoff: datetime,
        limit: int = 1000,
    ) -> list[str]:
        with self._index._read.connect() as conn:
            return expired_studies(conn, modality=modality, by=by, cutoff=cutoff, limit=limit)

    def least_recent_studies(self, limit: int = 100) -> list[tuple[str, int]]:
        with self._index._read.connect() as conn:
            return least_recent_studies(conn, limit)

    def total_bytes(self) -> int:
        with self._index._read.connect() as conn:
            return total_bytes(conn)
