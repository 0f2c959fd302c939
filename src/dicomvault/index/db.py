"""Index operations: insert (with the duplicate policy), delete, lookups, statistics.

Writes come in batches (group commit): the archive's writer thread hands over every
instance that finished arriving meanwhile, and one transaction records them all, so the
cost of a durable commit (fsync of the SQLite WAL, a PostgreSQL round trip) is shared.
Each item is checked before anything of it is written, so a rejected item leaves the
rest of the batch intact; a database error rolls the batch back and the items are then
retried one transaction each, so one bad item never takes the others with it.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import (
    Connection,
    Engine,
    Select,
    create_engine,
    delete,
    event,
    func,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from dicomvault.index import migrate
from dicomvault.index.schema import instances, patients, series, studies
from dicomvault.model.errors import (
    DicomVaultError,
    DuplicateRejected,
    HierarchyConflict,
    IndexError_,
    NotFound,
    OutOfResources,
)
from dicomvault.model.records import (
    BlobInfo,
    IndexRecord,
    Stats,
    StoredInstance,
    StoreStatus,
)

DuplicatePolicy = str  # "reject" | "keep-first" | "overwrite" (validated by config)


class IndexOutdated(DicomVaultError):
    """The database schema is older than this version; ``dicomvault db upgrade``."""


@dataclass(frozen=True, slots=True)
class PendingInsert:
    record: IndexRecord
    blob: BlobInfo
    source_ae: str | None
    policy: DuplicatePolicy
    received_at: datetime = dataclasses.field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True, slots=True)
class InsertOutcome:
    status: StoreStatus
    #: the new blob is not referenced (identical duplicate, keep-first): remove it
    new_blob_unused: bool = False
    #: an overwritten instance's old blob, to remove after the commit
    replaced_blob: str | None = None


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # Autocommit at the driver level: SQLAlchemy's "begin" event below issues BEGIN, so
    # writers can take the lock up front (BEGIN IMMEDIATE) instead of failing to upgrade.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # FULL: a committed transaction survives power loss. Success is answered after it,
    # and recovery removes unindexed blobs, so NORMAL could lose acknowledged instances.
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _make_engine(url: str, *, writer: bool) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        begin = "BEGIN IMMEDIATE" if writer else "BEGIN"
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql(begin))
        return engine
    return create_engine(url, pool_pre_ping=True)


def _row_values(record: Any, table_columns: Sequence[str]) -> dict[str, Any]:
    values = {name: getattr(record, name) for name in table_columns if hasattr(record, name)}
    return values


def _join(existing: str, value: str | None) -> str:
    """Add ``value`` to a backslash-joined set (Modalities/SOP Classes in Study)."""
    if not value:
        return existing
    items = existing.split("\\") if existing else []
    if value in items:
        return existing
    return "\\".join(sorted([*items, value]))


class _InstanceRow(NamedTuple):
    pk: int | None  # None: planned in this batch, not yet inserted
    sop_instance_uid: str
    dataset_sha256: str
    blob_name: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    study_pk: int


class _SeriesRow(NamedTuple):
    pk: int
    study_instance_uid: str
    study_pk: int


@dataclass
class _StudyState:
    pk: int
    modalities: str
    sop_classes: str
    added: int = 0
    new_series: int = 0
    updated_at: datetime | None = None


class _BatchPlan:
    """What one batch reads up front (one ``IN`` query per level) and writes at the end
    (one multi-row insert, one counter update per touched series and study)."""

    def __init__(self, conn: Connection, items: Sequence[PendingInsert]) -> None:
        uids = {it.record.instance.sop_instance_uid for it in items}
        self.instances: dict[str, _InstanceRow] = {
            r.sop_instance_uid: _InstanceRow(*r)
            for r in conn.execute(
                select(
                    instances.c.pk,
                    instances.c.sop_instance_uid,
                    instances.c.dataset_sha256,
                    instances.c.blob_name,
                    instances.c.sop_class_uid,
                    series.c.series_instance_uid,
                    studies.c.study_instance_uid,
                    studies.c.pk,
                )
                .join(series, instances.c.series_pk == series.c.pk)
                .join(studies, series.c.study_pk == studies.c.pk)
                .where(instances.c.sop_instance_uid.in_(uids))
            )
        }
        series_uids = {it.record.series.series_instance_uid for it in items}
        self.series: dict[str, _SeriesRow] = {
            r[0]: _SeriesRow(*r[1:])
            for r in conn.execute(
                select(
                    series.c.series_instance_uid,
                    series.c.pk,
                    studies.c.study_instance_uid,
                    studies.c.pk,
                )
                .join(studies, series.c.study_pk == studies.c.pk)
                .where(series.c.series_instance_uid.in_(series_uids))
            )
        }
        study_uids = {it.record.study.study_instance_uid for it in items}
        self.studies: dict[str, _StudyState] = {
            r[0]: _StudyState(r[1], r[2], r[3])
            for r in conn.execute(
                select(
                    studies.c.study_instance_uid,
                    studies.c.pk,
                    studies.c.modalities_in_study,
                    studies.c.sop_classes_in_study,
                ).where(studies.c.study_instance_uid.in_(study_uids))
            )
        }
        self.new_instances: dict[str, dict[str, Any]] = {}
        self.series_added: Counter[int] = Counter()
        self.refresh_sets: set[int] = set()

    def flush(self, conn: Connection) -> None:
        if self.new_instances:
            conn.execute(instances.insert(), list(self.new_instances.values()))
        for series_pk, added in self.series_added.items():
            conn.execute(
                update(series)
                .where(series.c.pk == series_pk)
                .values(number_of_instances=series.c.number_of_instances + added)
            )
        for study in self.studies.values():
            if study.added:
                conn.execute(
                    update(studies)
                    .where(studies.c.pk == study.pk)
                    .values(
                        number_of_instances=studies.c.number_of_instances + study.added,
                        number_of_series=studies.c.number_of_series + study.new_series,
                        modalities_in_study=study.modalities,
                        sop_classes_in_study=study.sop_classes,
                        updated_at=study.updated_at,
                    )
                )
        for study_pk in self.refresh_sets:
            Index._refresh_study_sets(conn, study_pk)


def _stored_instances() -> Select[Any]:
    """SELECT of what :class:`StoredInstance` holds (plus the row's pk), joined up the
    hierarchy; callers add the WHERE."""
    return (
        select(
            instances.c.pk,
            instances.c.sop_instance_uid,
            instances.c.sop_class_uid,
            studies.c.study_instance_uid,
            series.c.series_instance_uid,
            instances.c.transfer_syntax_uid,
            instances.c.blob_name,
            instances.c.size,
            instances.c.sha256,
            instances.c.dataset_sha256,
        )
        .join(series, instances.c.series_pk == series.c.pk)
        .join(studies, series.c.study_pk == studies.c.pk)
    )


class Index:
    """The archive index on one database (SQLite or PostgreSQL)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self._write = _make_engine(url, writer=True)
        self._read = _make_engine(url, writer=False) if self.is_sqlite else self._write
        self._write_lock: int | None = None
        database = self._write.url.database
        if self.is_sqlite and database and database != ":memory:":
            # Several processes (serve --workers, import beside serve) write one SQLite
            # file. SQLite's own busy handler sleeps 1, 2, 5 … 100 ms between tries and
            # was measured to halve throughput; a blocking flock wakes the next writer
            # the moment the lock is released.
            self._write_lock = os.open(f"{database}-writer.lock", os.O_RDWR | os.O_CREAT, 0o644)

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        """A write transaction, alone among every process writing this database."""
        if self._write_lock is not None:
            fcntl.flock(self._write_lock, fcntl.LOCK_EX)
        try:
            with self._write.begin() as conn:
                yield conn
        finally:
            if self._write_lock is not None:
                fcntl.flock(self._write_lock, fcntl.LOCK_UN)

    @classmethod
    def open(cls, url: str, *, create: bool = True) -> Index:
        """Open the index; create the schema in an empty database when ``create``.

        Raises
        ------
        IndexOutdated
            The database exists at an older schema revision.
        IndexError_
            The database cannot be reached.
        """
        index = cls(url)
        try:
            current = migrate.current_revision(index._write)
            head = migrate.head_revision()
            if current is None and create:
                migrate.upgrade(index._write)
            elif current != head:
                index.close()
                raise IndexOutdated(
                    f"index schema is at revision {current}, this version needs {head}: "
                    "run 'dicomvault db upgrade'"
                )
        except DBAPIError as exc:
            index.close()
            raise IndexError_(f"cannot open the index database: {exc.orig}") from None
        return index

    def close(self) -> None:
        if self._write_lock is not None:
            os.close(self._write_lock)
            self._write_lock = None
        self._write.dispose()
        if self._read is not self._write:
            self._read.dispose()

    # -- writes ---------------------------------------------------------------------

    def insert_batch(self, items: Sequence[PendingInsert]) -> list[InsertOutcome | Exception]:
        """Record ``items``; one outcome (or the typed error) per item, in order."""
        if not items:
            return []
        try:
            return self._insert_in_one_transaction(items)
        except DBAPIError:
            if len(items) == 1:
                return [self._insert_alone(items[0])]
            return [self._insert_alone(item) for item in items]

    def _insert_in_one_transaction(
        self, items: Sequence[PendingInsert]
    ) -> list[InsertOutcome | Exception]:
        with self._writing() as conn:
            plan = _BatchPlan(conn, items)
            results: list[InsertOutcome | Exception] = []
            for item in items:
                try:
                    results.append(self._plan_one(conn, plan, item))
                except (DuplicateRejected, HierarchyConflict) as exc:
                    results.append(exc)
            plan.flush(conn)
        return results

    def _insert_alone(self, item: PendingInsert) -> InsertOutcome | Exception:
        # Another process may have inserted the same patient/study/series between our
        # read and our write (PostgreSQL, several workers): try again a few times.
        for attempt in range(5):
            try:
                return self._insert_in_one_transaction([item])[0]
            except (IntegrityError, OperationalError) as exc:
                if "full" in str(exc.orig).lower():  # SQLITE_FULL: the disk, not a race
                    return OutOfResources(f"index database full: {exc.orig}")
                if attempt == 4:
                    return IndexError_(f"index write failed: {exc.orig}")
                time.sleep(0.01 * (attempt + 1))
            except DBAPIError as exc:
                return IndexError_(f"index write failed: {exc.orig}")
        raise AssertionError("unreachable")

    def _plan_one(self, conn: Connection, plan: _BatchPlan, item: PendingInsert) -> InsertOutcome:
        """Decide one item against the database plus what this batch already planned;
        raise before recording anything of a rejected item."""
        rec = item.record
        uid = rec.instance.sop_instance_uid
        existing = plan.instances.get(uid)
        if existing is not None:
            if (
                existing.study_instance_uid != rec.study.study_instance_uid
                or existing.series_instance_uid != rec.series.series_instance_uid
            ):
                raise HierarchyConflict(
                    f"SOP Instance UID {uid} is already stored in study "
                    f"{existing.study_instance_uid}, series {existing.series_instance_uid}"
                )
            if existing.dataset_sha256 == item.blob.dataset_sha256:
                return InsertOutcome(StoreStatus.DUPLICATE, new_blob_unused=True)
            if item.policy == "reject":
                raise DuplicateRejected(
                    f"SOP Instance UID {uid} is already stored with different content "
                    "(duplicate policy: reject)"
                )
            if item.policy == "keep-first":
                return InsertOutcome(StoreStatus.KEPT_FIRST, new_blob_unused=True)
            replaced = existing.blob_name
            values = self._instance_values(item)
            if existing.pk is None:  # planned earlier in this batch: replace the plan
                plan.new_instances[uid].update(values)
            else:
                conn.execute(
                    update(instances).where(instances.c.pk == existing.pk).values(**values)
                )
                if existing.sop_class_uid != rec.instance.sop_class_uid:
                    plan.refresh_sets.add(existing.study_pk)
            plan.instances[uid] = existing._replace(
                dataset_sha256=item.blob.dataset_sha256,
                blob_name=item.blob.name,
                sop_class_uid=rec.instance.sop_class_uid,
            )
            return InsertOutcome(StoreStatus.OVERWRITTEN, replaced_blob=replaced)

        series_uid = rec.series.series_instance_uid
        study_uid = rec.study.study_instance_uid
        known_series = plan.series.get(series_uid)
        if known_series is not None and known_series.study_instance_uid != study_uid:
            raise HierarchyConflict(
                f"Series Instance UID {series_uid} already belongs to "
                f"study {known_series.study_instance_uid}, not {study_uid}"
            )
        now = item.received_at
        study = plan.studies.get(study_uid)
        if study is None:
            patient_pk = self._patient_pk(conn, item)
            study_pk = conn.execute(
                studies.insert()
                .values(
                    patient_pk=patient_pk,
                    updated_at=now,
                    **_row_values(rec.study, studies.c.keys()),
                )
                .returning(studies.c.pk)
            ).scalar_one()
            conn.execute(
                update(patients)
                .where(patients.c.pk == patient_pk)
                .values(number_of_studies=patients.c.number_of_studies + 1)
            )
            study = plan.studies[study_uid] = _StudyState(study_pk, "", "")
        if known_series is None:
            series_pk = conn.execute(
                series.insert()
                .values(
                    study_pk=study.pk, updated_at=now, **_row_values(rec.series, series.c.keys())
                )
                .returning(series.c.pk)
            ).scalar_one()
            known_series = plan.series[series_uid] = _SeriesRow(series_pk, study_uid, study.pk)
            study.new_series += 1
        row = self._instance_values(item)
        row["series_pk"] = known_series.pk
        plan.new_instances[uid] = row
        plan.instances[uid] = _InstanceRow(
            None,
            uid,
            item.blob.dataset_sha256,
            item.blob.name,
            rec.instance.sop_class_uid,
            series_uid,
            study_uid,
            study.pk,
        )
        plan.series_added[known_series.pk] += 1
        study.added += 1
        study.modalities = _join(study.modalities, rec.series.modality)
        study.sop_classes = _join(study.sop_classes, rec.instance.sop_class_uid)
        study.updated_at = now
        return InsertOutcome(StoreStatus.STORED)

    def _patient_pk(self, conn: Connection, item: PendingInsert) -> int:
        rec = item.record.patient
        issuer = rec.issuer_of_patient_id or ""
        pk = conn.execute(
            select(patients.c.pk).where(
                patients.c.patient_id == rec.patient_id,
                patients.c.issuer_of_patient_id == issuer,
            )
        ).scalar()
        if pk is not None:
            return int(pk)
        values = _row_values(rec, patients.c.keys())
        values["issuer_of_patient_id"] = issuer
        return int(
            conn.execute(patients.insert().values(**values).returning(patients.c.pk)).scalar_one()
        )

    @staticmethod
    def _instance_values(item: PendingInsert) -> dict[str, Any]:
        values = _row_values(item.record.instance, instances.c.keys())
        values.update(
            blob_name=item.blob.name,
            size=item.blob.size,
            sha256=item.blob.sha256,
            dataset_sha256=item.blob.dataset_sha256,
            received_at=item.received_at,
            source_ae=item.source_ae,
            metadata_json=item.record.metadata_json,
        )
        return values

    @staticmethod
    def _refresh_study_sets(conn: Connection, study_pk: int) -> None:
        """Recompute Modalities / SOP Classes in Study (PS3.4 C.6.2.1.2) from the rows."""
        modalities = conn.execute(
            select(series.c.modality).where(series.c.study_pk == study_pk).distinct()
        ).scalars()
        sop_classes = conn.execute(
            select(instances.c.sop_class_uid)
            .join(series, instances.c.series_pk == series.c.pk)
            .where(series.c.study_pk == study_pk)
            .distinct()
        ).scalars()
        conn.execute(
            update(studies)
            .where(studies.c.pk == study_pk)
            .values(
                modalities_in_study="\\".join(sorted(m for m in modalities if m)),
                sop_classes_in_study="\\".join(sorted(sop_classes)),
            )
        )

    def delete_instance(self, sop_instance_uid: str) -> StoredInstance:
        """Remove one instance's row (and emptied parents); returns what it was.

        The caller deletes the blob after this commits, so a crash in between leaves an
        orphan blob (removed by recovery), never a row without its bytes.
        """
        with self._writing() as conn:
            stored = self._lookup(conn, sop_instance_uid)
            if stored is None:
                raise NotFound(f"no instance with SOP Instance UID {sop_instance_uid}")
            self._delete_instance_rows(conn, sop_instance_uid)
            return stored

    def _delete_instance_rows(self, conn: Connection, sop_instance_uid: str) -> None:
        row = conn.execute(
            select(instances.c.pk, instances.c.series_pk, series.c.study_pk, studies.c.patient_pk)
            .join(series, instances.c.series_pk == series.c.pk)
            .join(studies, series.c.study_pk == studies.c.pk)
            .where(instances.c.sop_instance_uid == sop_instance_uid)
        ).one()
        conn.execute(delete(instances).where(instances.c.pk == row.pk))
        left = conn.execute(
            update(series)
            .where(series.c.pk == row.series_pk)
            .values(number_of_instances=series.c.number_of_instances - 1)
            .returning(series.c.number_of_instances)
        ).scalar_one()
        series_gone = left == 0
        if series_gone:
            conn.execute(delete(series).where(series.c.pk == row.series_pk))
        study_left = conn.execute(
            update(studies)
            .where(studies.c.pk == row.study_pk)
            .values(
                number_of_instances=studies.c.number_of_instances - 1,
                number_of_series=studies.c.number_of_series - (1 if series_gone else 0),
            )
            .returning(studies.c.number_of_instances)
        ).scalar_one()
        if study_left > 0:
            self._refresh_study_sets(conn, row.study_pk)
            return
        conn.execute(delete(studies).where(studies.c.pk == row.study_pk))
        patient_left = conn.execute(
            update(patients)
            .where(patients.c.pk == row.patient_pk)
            .values(number_of_studies=patients.c.number_of_studies - 1)
            .returning(patients.c.number_of_studies)
        ).scalar_one()
        if patient_left == 0:
            conn.execute(delete(patients).where(patients.c.pk == row.patient_pk))

    def instance_uids(
        self,
        *,
        study_instance_uid: str | None = None,
        series_instance_uid: str | None = None,
        patient_id: str | None = None,
    ) -> list[str]:
        """SOP Instance UIDs of a study, a series or a patient (for delete / retrieve)."""
        query = (
            select(instances.c.sop_instance_uid)
            .join(series, instances.c.series_pk == series.c.pk)
            .join(studies, series.c.study_pk == studies.c.pk)
            .join(patients, studies.c.patient_pk == patients.c.pk)
        )
        if study_instance_uid is not None:
            query = query.where(studies.c.study_instance_uid == study_instance_uid)
        if series_instance_uid is not None:
            query = query.where(series.c.series_instance_uid == series_instance_uid)
        if patient_id is not None:
            query = query.where(patients.c.patient_id == patient_id)
        with self._read.connect() as conn:
            return list(conn.execute(query.order_by(instances.c.pk)).scalars())

    # -- reads ----------------------------------------------------------------------

    @staticmethod
    def _lookup(conn: Connection, sop_instance_uid: str) -> StoredInstance | None:
        row = conn.execute(
            _stored_instances().where(instances.c.sop_instance_uid == sop_instance_uid)
        ).first()
        if row is None:
            return None
        values = row._asdict()
        values.pop("pk")
        return StoredInstance(**values)

    def lookup_instance(self, sop_instance_uid: str) -> StoredInstance | None:
        with self._read.connect() as conn:
            return self._lookup(conn, sop_instance_uid)

    def has_instance(self, sop_instance_uid: str) -> bool:
        """Cheap existence test on the ingest hot path (one indexed probe, no ORM)."""
        with self._read.connect() as conn:
            found = conn.exec_driver_sql(
                "SELECT 1 FROM instances WHERE sop_instance_uid = "
                + ("?" if self.is_sqlite else "%(uid)s"),
                (sop_instance_uid,) if self.is_sqlite else {"uid": sop_instance_uid},
            ).first()
        return found is not None

    def iter_instances(self, batch: int = 1000) -> Iterator[StoredInstance]:
        """Every instance, in insertion order, a page at a time (for verify)."""
        last = 0
        while True:
            with self._read.connect() as conn:
                rows = conn.execute(
                    _stored_instances()
                    .where(instances.c.pk > last)
                    .order_by(instances.c.pk)
                    .limit(batch)
                ).all()
            if not rows:
                return
            for row in rows:
                values = row._asdict()
                last = values.pop("pk")
                yield StoredInstance(**values)

    def blob_names(self) -> set[str]:
        with self._read.connect() as conn:
            return set(conn.execute(select(instances.c.blob_name)).scalars())

    def metadata_json(self, sop_instance_uid: str) -> str:
        with self._read.connect() as conn:
            value = conn.execute(
                select(instances.c.metadata_json).where(
                    instances.c.sop_instance_uid == sop_instance_uid
                )
            ).scalar()
        if value is None:
            raise NotFound(f"no instance with SOP Instance UID {sop_instance_uid}")
        return str(value)

    def row(self, table: str, **where: Any) -> dict[str, Any] | None:
        """One row of ``patients``/``studies``/``series``/``instances`` as a dict."""
        tables = {
            "patients": patients,
            "studies": studies,
            "series": series,
            "instances": instances,
        }
        t = tables[table]
        query = select(t)
        for key, value in where.items():
            query = query.where(t.c[key] == value)
        with self._read.connect() as conn:
            found = conn.execute(query).first()
        return None if found is None else dict(found._mapping)

    def stats(self) -> Stats:
        with self._read.connect() as conn:
            counts = [
                conn.execute(select(func.count()).select_from(t)).scalar_one()
                for t in (patients, studies, series, instances)
            ]
            size = conn.execute(select(func.coalesce(func.sum(instances.c.size), 0))).scalar_one()
        n_patients, n_studies, n_series, n_instances = (int(c) for c in counts)
        return Stats(n_patients, n_studies, n_series, n_instances, int(size))

    def level_stats(self) -> list[tuple[str, int, int, int]]:
        """(modality, studies, instances, bytes) rows for the CLI table."""
        with self._read.connect() as conn:
            rows = conn.execute(
                select(
                    series.c.modality,
                    func.count(func.distinct(series.c.study_pk)),
                    func.count(instances.c.pk),
                    func.coalesce(func.sum(instances.c.size), 0),
                )
                .join(instances, instances.c.series_pk == series.c.pk)
                .group_by(series.c.modality)
                .order_by(series.c.modality)
            ).all()
        return [(r[0] or "?", int(r[1]), int(r[2]), int(r[3])) for r in rows]
