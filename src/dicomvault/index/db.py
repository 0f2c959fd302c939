"""Index operations: insert (with the duplicate policy), delete, lookups, statistics.

Writes come in batches (group commit): the archive's writer thread hands over every
instance that finished arriving meanwhile, and one transaction records them all, so the
cost of a durable commit (fsync of the SQLite WAL, a PostgreSQL round trip) is shared.
Each item is checked before anything of it is written, so a rejected item leaves the
rest of the batch intact; a database error rolls the batch back and the items are then
retried one transaction each, so one bad item never takes the others with it.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Select,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.pool import NullPool

from dicomvault.index import migrate
from dicomvault.index.deletion import Deletions, Selection
from dicomvault.index.ingest import (
    Batch,
    InsertOutcome,
    PendingInsert,
    Sql,
)
from dicomvault.index.ingest_now import NowWriter
from dicomvault.index.schema import blob_journal, instances, patients, series, studies
from dicomvault.model.errors import (
    DicomVaultError,
    IndexError_,
    NotFound,
    OutOfResources,
)
from dicomvault.model.matching import fold
from dicomvault.model.records import (
    Stats,
    StoredInstance,
)


class IndexOutdated(DicomVaultError):
    """The database schema is older than this version; ``dicomvault db upgrade``."""


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
    # Case-insensitive Person Name matching (index/find_sql.py): SQLite's own lower()
    # folds ASCII only. Registered once per connection: registering a function again
    # expires the connection's prepared statements, and C-FIND relies on them.
    dbapi_conn.create_function("dicomvault_fold", 1, _fold_or_none, deterministic=True)


def _fold_or_none(value: object) -> object:
    return fold(value) if isinstance(value, str) else value


#: Pooled connections per engine. The serving process runs blocking index calls on up
#: to 16 HTTP pool threads plus the event loop's default executor (DIMSE stores,
#: queries); SQLAlchemy's default of 5 + 10 overflow made a busy STOW-RS wait 30 s
#: for a connection.
POOL_SIZE = 8
POOL_OVERFLOW = 32


def _make_engine(url: str, *, writer: bool, pooled: bool = True) -> Engine:
    pool: dict[str, Any] = (
        {"pool_size": POOL_SIZE, "max_overflow": POOL_OVERFLOW}
        if pooled
        else {"poolclass": NullPool}
    )
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False}, **pool)
        event.listen(engine, "connect", _sqlite_pragmas)
        begin = "BEGIN IMMEDIATE" if writer else "BEGIN"
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql(begin))
        return engine
    return create_engine(url, pool_pre_ping=pooled, **pool)


def stored_instance(values: dict[str, Any]) -> StoredInstance:
    """A row of :func:`stored_instances` as the record (the row's pk dropped)."""
    return StoredInstance(**{k: v for k, v in values.items() if k != "pk"})


def stored_instances() -> Select[Any]:
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
        # Probe connections live as long as their thread: outside the pool, which they
        # would otherwise drain one thread at a time.
        self._probe_engine = _make_engine(url, writer=False, pooled=False)
        self._probe = threading.local()
        self._probe_connections: list[Any] = []
        self._write_lock: int | None = None
        #: Batches recorded on the caller's thread when that needs no waiting (SQLite).
        self.now: NowWriter | None = None
        #: The ingest writer's own DBAPI connection (:meth:`_ingest_transaction`).
        self._ingest_raw: Any = None
        self._ingest_lock = threading.Lock()
        #: Deletion, rejection, protection and retention transactions.
        self.deletions = Deletions(self)
        database = self._write.url.database
        if self.is_sqlite and database and database != ":memory:":
            # Several processes (serve --workers, import beside serve) write one SQLite
            # file. SQLite's own busy handler sleeps 1, 2, 5 … 100 ms between tries and
            # was measured to halve throughput; a blocking flock wakes the next writer
            # the moment the lock is released.
            lock_path = f"{database}-writer.lock"
            try:
                self._write_lock = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:  # no data directory there, or not ours to write
                self.close()
                raise IndexError_(
                    f"cannot open the index database {database}: {exc.strerror}"
                ) from None
            self.now = NowWriter(self._write, lock_path)

    def read_rows(self, text: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Every row of a short read, SQL text with ``?`` placeholders, as tuples.

        For the look-ups on a hot path (a C-GET's selection, an audit message's
        patients): straight on the driver's cursor, without the ~0.5 ms of building and
        compiling a SQLAlchemy statement. ``text`` holds no ``%`` (psycopg's marker).
        """
        with self._read.connect() as conn:
            if self.is_sqlite:
                cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
                try:
                    return list(cursor.execute(text, tuple(params)))
                finally:
                    cursor.close()
            rows = conn.exec_driver_sql(text.replace("?", "%s"), tuple(params))
            return [tuple(row) for row in rows]

    @contextmanager
    def _alone(self) -> Iterator[None]:
        """Alone among every process writing this SQLite file (the writer flock)."""
        if self._write_lock is not None:
            fcntl.flock(self._write_lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if self._write_lock is not None:
                fcntl.flock(self._write_lock, fcntl.LOCK_UN)

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        """A write transaction, alone among every process writing this database."""
        with self._alone(), self._write.begin() as conn:
            yield conn

    @contextmanager
    def _ingest_transaction(self) -> Iterator[Sql]:
        """A transaction of the ingest writer, on a DBAPI connection it keeps: plain
        BEGIN and COMMIT, without SQLAlchemy's pool checkout, events and wrapping per
        transaction (measured at ~12 % of the serving process's GIL time on 10 KB
        C-STOREs, on the writer's critical path). Driver errors come out as SQLAlchemy's
        (:class:`DBAPIError` subclasses), like those of the rest of the index; after one
        the connection is dropped, so a lost PostgreSQL connection is replaced."""
        with self._ingest_lock, self._alone():
            if self._ingest_raw is None:
                self._ingest_raw = self._write.raw_connection()
            raw = self._ingest_raw
            try:
                sql = Sql(raw, sqlite=self.is_sqlite)
                if self.is_sqlite:  # driver-level autocommit (_sqlite_pragmas)
                    sql.run("BEGIN IMMEDIATE")
                yield sql
                if self.is_sqlite:
                    sql.run("COMMIT")
                else:
                    raw.commit()
            except BaseException as exc:
                dbapi_error = self._write.dialect.loaded_dbapi.Error
                driver_error = isinstance(exc, dbapi_error)
                self._rollback_ingest(broken=driver_error)
                if driver_error:
                    raise DBAPIError.instance(None, None, exc, dbapi_error) from exc
                raise

    def _rollback_ingest(self, *, broken: bool) -> None:
        """Roll the ingest transaction back; drop the connection after a driver error
        (it may be the connection that broke) or a failed rollback."""
        raw = self._ingest_raw
        try:
            raw.rollback()
        except Exception:
            broken = True
        if broken:
            self._ingest_raw = None
            raw.invalidate()

    @classmethod
    def open(cls, url: str, *, create: bool = True) -> Index:
        """Open the index; create the schema in an empty database when ``create``.

        Raises
        ------
        IndexOutdated
            The database exists at an older schema revision.
        IndexError_
            The database cannot be reached; or, without ``create``, it does not exist
            or holds no dicomvault index.
        """
        if not create and url.startswith("sqlite"):
            database = make_url(url).database
            if database and database != ":memory:" and not os.path.exists(database):
                # Connecting would create an empty file where a mistyped path points.
                raise IndexError_(
                    f"cannot open the index database {database}: No such file or directory"
                )
        index = cls(url)
        try:
            current = migrate.current_revision(index._write)
            head = migrate.head_revision()
            if current is None and create:
                migrate.upgrade(index._write)
            elif current is None:
                index.close()
                raise IndexError_(
                    "the database holds no dicomvault index ('dicomvault db upgrade' creates one)"
                )
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
        if self.now is not None:
            self.now.close()
        with self._ingest_lock:
            if self._ingest_raw is not None:
                self._ingest_raw.close()
                self._ingest_raw = None
        for raw in self._probe_connections:
            raw.close()
        self._probe_connections.clear()
        if self._write_lock is not None:
            os.close(self._write_lock)
            self._write_lock = None
        self._write.dispose()
        if self._read is not self._write:
            self._read.dispose()
        self._probe_engine.dispose()

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
        with self._ingest_transaction() as sql:
            return Batch(sql, items).record_all(items)

    def _sql(self, conn: Connection) -> Sql:
        """Plain DBAPI statements inside ``conn``'s transaction (see ``ingest.py``)."""
        return Sql(conn.connection.dbapi_connection, sqlite=self.is_sqlite)

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

    def delete_instance(self, sop_instance_uid: str) -> StoredInstance:
        """Remove one instance's row (and emptied parents); returns what it was.

        Its blob is queued in ``deletion_queue`` in the same transaction (see
        :mod:`dicomvault.index.deletion`): the archive removes it after the commit, and
        start-up finishes what a crash left, so no row ever names a missing blob.
        """
        stored = self.lookup_instance(sop_instance_uid)
        if stored is None:
            raise NotFound(f"no instance with SOP Instance UID {sop_instance_uid}")
        now = datetime.now(UTC)
        self.deletions.delete(
            Selection("instance", sop_instance_uid),
            force=True,
            reason="manual",
            now=now,
            not_before=now,
        )
        return stored

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
            stored_instances().where(instances.c.sop_instance_uid == sop_instance_uid)
        ).first()
        return None if row is None else stored_instance(row._asdict())

    def lookup_instance(self, sop_instance_uid: str) -> StoredInstance | None:
        with self._read.connect() as conn:
            return self._lookup(conn, sop_instance_uid)

    def _probe_sql(self) -> Sql:
        # This thread's own DBAPI connection: a pool checkout per probe cost more than
        # the probe.
        sql: Sql | None = getattr(self._probe, "sql", None)
        if sql is None:
            raw = self._probe_engine.raw_connection()
            if not self.is_sqlite:  # a probe must not hold a transaction open
                raw.dbapi_connection.autocommit = True  # type: ignore[union-attr]
            sql = self._probe.sql = Sql(raw, sqlite=self.is_sqlite)
            self._probe_connections.append(raw)
        return sql

    def has_instance(self, sop_instance_uid: str) -> bool:
        """Cheap existence test: one indexed probe on this thread's own connection."""
        found = self._probe_sql().one(
            "SELECT 1 FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)
        )
        return found is not None

    def ingest_probe(self, sop_instance_uid: str) -> tuple[bool, str | None]:
        """The ingest hot path's one probe: (is the instance stored, the SOP Instance UID
        of the IOCM rejection note that rejected it or None) — two primary-key lookups
        in one statement."""
        row = self._probe_sql().one(
            "SELECT (SELECT 1 FROM instances WHERE sop_instance_uid = ?),"
            " (SELECT kos_sop_instance_uid FROM rejected_instances WHERE sop_instance_uid = ?)",
            (sop_instance_uid, sop_instance_uid),
        )
        if row is None:  # pragma: no cover - a SELECT without FROM returns one row
            return False, None
        return row[0] is not None, row[1]

    def iter_instances(self, batch: int = 1000) -> Iterator[StoredInstance]:
        """Every instance, in insertion order, a page at a time (for verify)."""
        last = 0
        while True:
            with self._read.connect() as conn:
                rows = conn.execute(
                    stored_instances()
                    .where(instances.c.pk > last)
                    .order_by(instances.c.pk)
                    .limit(batch)
                ).all()
            if not rows:
                return
            for row in rows:
                last = row.pk
                yield stored_instance(row._asdict())

    # -- the blob journal (schema.blob_journal) ---------------------------------------

    def journal_mark(self) -> int:
        """The newest ``blob_journal`` row committed so far (0: none). Every file it or
        an older row names was written before that commit: one syncfs started after
        this call makes them all durable, and :meth:`journal_forget` may then drop them.
        """
        with self._read.connect() as conn:
            return int(conn.execute(select(func.max(blob_journal.c.pk))).scalar() or 0)

    def journal_forget(self, up_to: int) -> None:
        """Drop the journal rows up to ``up_to`` (:meth:`journal_mark`): their files are
        durable."""
        with self._ingest_transaction() as sql:
            sql.run("DELETE FROM blob_journal WHERE pk <= ?", (up_to,))

    def journal_entries(self, *, chunk: int = 64) -> Iterator[tuple[str, bytes]]:
        """Every journal row, oldest first: (blob name, the blob's bytes), read a few at
        a time (each holds up to 64 KiB)."""
        after = 0
        while True:
            with self._read.connect() as conn:
                rows = conn.execute(
                    select(blob_journal.c.pk, blob_journal.c.blob_name, blob_journal.c.data)
                    .where(blob_journal.c.pk > after)
                    .order_by(blob_journal.c.pk)
                    .limit(chunk)
                ).all()
            for _, name, data in rows:
                yield name, bytes(data)
            if len(rows) < chunk:
                return
            after = rows[-1][0]

    def blob_indexed(self, name: str) -> bool:
        """Whether an instance row names the blob ``name``."""
        rows = self.read_rows("SELECT 1 FROM instances WHERE blob_name = ?", (name,))
        return bool(rows)

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
