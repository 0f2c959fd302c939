"""A batch recorded on the caller's own thread and committed on another (SQLite).

The index writer's thread (``archive/writer.py``) is the general path: every caller
queues, one thread records. On a busy server its cost is the interpreter lock, not the
database: every statement it runs hands the lock back and forth with the event loop
that receives the instances. Measured here (10 KB C-STOREs over 4 associations), the
writer thread waited ~0.45 ms for the lock after each hand-over, and a batch took
twice as long as alone (1.1 against 0.53 ms).

So a caller may open the batch itself with :meth:`NowWriter.begin`: the statements run
on its thread at once (a few tenths of a millisecond for a few instances, pages in
the cache), and only the commit — the device flush of the WAL, during which the
interpreter lock is free — goes to another thread (:meth:`NowBatch.commit`). The batch
is recorded exactly as the writer thread records it
(:class:`~dicomvault.index.ingest.Batch`). :meth:`~NowWriter.begin` returns ``None``,
having written nothing, when that would mean waiting:

- a batch of this writer is still open (being committed);
- another process holds the writer flock (``index.sqlite3-writer.lock``, taken here
  without blocking, on a descriptor of its own so that it also excludes this process's
  other writers);
- another connection holds SQLite's write lock (``busy_timeout`` is 0 on this
  connection: ``BEGIN IMMEDIATE`` fails at once instead of sleeping);
- a statement fails: the batch is rolled back and the caller hands it to the writer
  thread, whose error handling (item by item, typed errors) is the one place for that.

The WAL is checkpointed by the writer thread's commits (the blob journal's flush, at
least every few hundred instances), not after every 1,000 pages by these: measured here,
~5 % more throughput; the WAL file grows to ~30 MB instead of ~4 MB, and stays that size
(SQLite writes it again from the start after each complete checkpoint).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine

from dicomvault.index.ingest import Batch, InsertOutcome, PendingInsert, Sql

#: This connection's commits checkpoint the WAL only past this many pages (SQLite's
#: default: 1,000): the writer thread's commits do it before (the blob journal's flush,
#: every few hundred instances at most), this is the bound if those stop.
CHECKPOINT_PAGES = 10_000


class NowBatch:
    """An open transaction holding one recorded batch; :meth:`commit` it exactly once,
    on any thread. Until then the writer it came from begins no other."""

    def __init__(
        self, writer: NowWriter, sql: Sql, outcomes: list[InsertOutcome | Exception]
    ) -> None:
        self._writer = writer
        self._sql = sql
        #: Each item's outcome (or typed error), valid once committed.
        self.outcomes = outcomes

    def commit(self) -> bool:
        """Commit (the WAL's device flush); ``False``: it failed and was rolled back,
        nothing of the batch is recorded."""
        try:
            self._sql.run("COMMIT")
            return True
        except Exception:
            self._writer._rollback()
            return False
        finally:
            self._writer._release()


class NowWriter:
    """Opens batches on the calling thread, or declines (see the module docstring)."""

    def __init__(self, engine: Engine, lock_path: str) -> None:
        self._engine = engine
        self._lock_path = lock_path
        self._lock_fd: int | None = None
        self._raw: Any = None
        self._sql: Sql | None = None
        #: Held from :meth:`begin` to the end of :meth:`NowBatch.commit`.
        self._open = threading.Lock()

    def begin(self, items: Sequence[PendingInsert]) -> NowBatch | None:
        """Record ``items`` in a transaction left open for :meth:`NowBatch.commit`;
        ``None``: nothing written (see the module docstring)."""
        if not items or not self._open.acquire(blocking=False):
            return None
        if not self._flock():
            self._open.release()
            return None
        if not self._begin():
            self._release()
            return None
        sql = self._sql
        assert sql is not None
        try:
            outcomes = Batch(sql, items).record_all(items)
        except BaseException as exc:
            self._rollback()
            self._release()
            if isinstance(exc, Exception):
                return None
            raise
        return NowBatch(self, sql, outcomes)

    def _begin(self) -> bool:
        try:
            sql = self._connection()
            sql.run("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:  # SQLITE_BUSY: another connection is writing
            return False
        except Exception:  # no connection, or a broken one: the writer thread reports it
            if self._raw is not None:
                self._raw.invalidate()
            self._raw = self._sql = None
            return False
        return True

    def _flock(self) -> bool:
        try:
            if self._lock_fd is None:
                self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held by another writer (EWOULDBLOCK), or cannot be opened
            return False
        return True

    def _connection(self) -> Sql:
        if self._sql is None:
            raw = self._engine.raw_connection()
            raw.detach()  # its settings below must not reach the pool's other users
            self._raw, self._sql = raw, Sql(raw, sqlite=True)
            self._sql.run("PRAGMA busy_timeout=0")
            self._sql.run(f"PRAGMA wal_autocheckpoint={CHECKPOINT_PAGES}")
        return self._sql

    def _rollback(self) -> None:
        try:
            self._raw.rollback()
        except Exception:  # the connection itself broke: the next batch opens another
            self._raw.invalidate()
            self._raw = self._sql = None

    def _release(self) -> None:
        assert self._lock_fd is not None  # _flock() took it
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        self._open.release()

    def close(self) -> None:
        with self._open:
            if self._raw is not None:
                self._raw.close()
                self._raw = self._sql = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
