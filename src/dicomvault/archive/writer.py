"""The single index writer (datasette's pattern: one write thread fed by a queue).

Every ingest hands its :class:`PendingInsert` to this thread and waits. The thread takes
everything queued meanwhile and records it in one transaction — a group commit — so with
many senders the per-instance commit cost shrinks instead of serialising on fsync.

A caller that gathers instances itself (the DIMSE event loop) hands them over together
with :meth:`IndexWriter.submit_many` and one callback for all: no future, lock and
wake-up per instance. Or it records them on its own thread with
:meth:`IndexWriter.write_now` when that needs no waiting (every blob journaled, so no
``syncfs``; the SQLite index free), and only the commit goes to a thread of its own
(:mod:`dicomvault.index.ingest_now` says what that saves and when it declines).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import NamedTuple

from dicomvault.index import Index, InsertOutcome, PendingInsert
from dicomvault.index.ingest_now import NowBatch
from dicomvault.model.errors import DicomVaultError

log = logging.getLogger("dicomvault.archive")

_STOP = object()
#: The journaled blobs' files are flushed (one syncfs) and their rows dropped when the
#: writer has been idle this long (s), or this many are pending, or the oldest is this
#: old (s): the journal stays small, and a burst pays one flush per this many.
JOURNAL_IDLE = 0.1
JOURNAL_FLUSH_COUNT = 512
JOURNAL_MAX_AGE = 2.0
#: Wakes the writer thread to look at the journal's flush deadline again.
_KICK = object()

#: Called after the commit — on the writer thread, or the commit thread for
#: :meth:`IndexWriter.write_now` — with one result per item of a
#: :meth:`IndexWriter.submit_many`, in order: its outcome, or the error that failed it.
BatchDone = Callable[[list[InsertOutcome | BaseException]], None]


class _One(NamedTuple):
    item: PendingInsert
    future: Future[InsertOutcome]
    durable: bool


class _Many(NamedTuple):
    items: list[PendingInsert]
    done: BatchDone


class _Commit(NamedTuple):
    batch: NowBatch
    items: list[PendingInsert]
    done: BatchDone


class IndexWriter:
    def __init__(
        self,
        index: Index,
        *,
        max_batch: int = 128,
        before_commit: Callable[[list[PendingInsert]], None] | None = None,
        flush_journal: Callable[[], None] | None = None,
    ) -> None:
        self._index = index
        self._before_commit = before_commit
        self._flush_journal = flush_journal
        self._max_batch = max_batch
        #: Journaled blobs (``PendingInsert.journal``) committed since the last flush,
        #: and when the first of them was.
        self._journaled = 0
        self._journaled_since = 0.0
        self._flush_wait = JOURNAL_IDLE  # longer after a failed flush
        #: When a batch was last written (on any thread): the journal is flushed when
        #: the writer has been idle, and write_now batches count as activity.
        self._last_write = 0.0
        self._journal_lock = threading.Lock()
        #: write_now's commit thread, started with the first.
        self._commits: queue.SimpleQueue[object] | None = None
        self._commit_thread: threading.Thread | None = None
        self._commit_lock = threading.Lock()
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="index-writer", daemon=True)
        self._closed = False
        self._thread.start()

    def submit(self, item: PendingInsert, *, durable: bool = False) -> Future[InsertOutcome]:
        """Queue ``item`` for the next batch. ``durable``: its blob is durable already,
        so ``before_commit`` (which makes the others durable) does not get it."""
        if self._closed:
            raise DicomVaultError("the archive is closed")
        future: Future[InsertOutcome] = Future()
        self._queue.put(_One(item, future, durable))
        return future

    def submit_many(self, items: list[PendingInsert], done: BatchDone) -> None:
        """Queue ``items`` for the next batch together; their blobs are not durable yet
        (``before_commit`` makes them so). ``done`` gets their results."""
        if self._closed:
            raise DicomVaultError("the archive is closed")
        self._queue.put(_Many(items, done))

    def write_now(self, items: list[PendingInsert], done: BatchDone) -> bool:
        """Record journaled ``items`` on the calling thread and commit them on the commit
        thread, when that needs no waiting (:class:`~dicomvault.index.ingest_now.NowWriter`);
        ``done`` then gets their results there, as from :meth:`submit_many`. ``False``:
        nothing was written, hand them to :meth:`submit_many`. Their blobs must all be
        journaled: the commit alone makes them durable (``before_commit`` is not
        called)."""
        now = self._index.now
        if now is None:
            return False
        with self._commit_lock:  # close() must not stop the commit thread meanwhile
            if self._closed:
                return False
            batch = now.begin(items)
            if batch is None:
                return False
            self._committer().put(_Commit(batch, items, done))
        return True

    def _committer(self) -> queue.SimpleQueue[object]:
        if self._commits is None:
            self._commits = queue.SimpleQueue()
            self._commit_thread = threading.Thread(
                target=self._commit_run, name="index-commit", daemon=True
            )
            self._commit_thread.start()
        return self._commits

    def _commit_run(self) -> None:
        assert self._commits is not None
        while isinstance(entry := self._commits.get(), _Commit):
            batch, items, done = entry
            if not batch.commit():  # rolled back: the writer thread records them
                self._queue.put(_Many(items, done))
                continue
            if self._journal_written(len(items)):
                self._queue.put(_KICK)  # the writer thread sets (or meets) a flush deadline
            self._complete(done, list(batch.outcomes))

    @staticmethod
    def _complete(done: BatchDone, results: list[InsertOutcome | BaseException]) -> None:
        try:
            done(results)
        except Exception:  # the callback's bug must not stop the thread
            log.exception("index writer: a batch's completion failed")

    def _journal_written(self, journaled: int) -> bool:
        """Count ``journaled`` blobs committed to the journal just now; whether the
        writer thread should look at its flush deadline (the first since a flush, or
        enough for a flush)."""
        with self._journal_lock:
            self._last_write = time.monotonic()
            if not journaled:
                return False
            first = not self._journaled
            if first:
                self._journaled_since = self._last_write
            self._journaled += journaled
            return first or self._journaled - journaled < JOURNAL_FLUSH_COUNT <= self._journaled

    def close(self) -> None:
        with self._commit_lock:
            closing, self._closed = not self._closed, True
        if closing:
            if self._commits is not None and self._commit_thread is not None:
                # First: a commit that fails hands its batch to the writer thread.
                self._commits.put(_STOP)
                self._commit_thread.join()
            self._queue.put(_STOP)
            self._thread.join()

    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=self._flush_timeout())
            except queue.Empty:
                first = None
            if first is _STOP:
                break
            if first is not None and first is not _KICK:
                entries, stop = self._gather(first)  # type: ignore[arg-type]
                self._write(entries)
                if stop:
                    break
            if self._flush_due():
                self._flush()
        self._flush()

    def _gather(self, first: _One | _Many) -> tuple[list[_One | _Many], bool]:
        """``first`` and what else is queued, up to a batch; whether a stop came."""
        entries: list[_One | _Many] = [first]
        count = _count(first)
        while count < self._max_batch:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is _STOP:
                return entries, True
            if nxt is not _KICK:
                entries.append(nxt)  # type: ignore[arg-type]
                count += _count(nxt)  # type: ignore[arg-type]
        return entries, False

    def _flush_timeout(self) -> float | None:
        """Seconds until the journal's flush is due (0: now); ``None``: nothing to flush."""
        with self._journal_lock:
            if not self._journaled:
                return None
            if self._journaled >= JOURNAL_FLUSH_COUNT:
                return 0.0
            # After _flush_wait without a batch, or when the oldest is JOURNAL_MAX_AGE old.
            due = min(self._last_write + self._flush_wait, self._journaled_since + JOURNAL_MAX_AGE)
        return max(due - time.monotonic(), 0.0)

    def _flush_due(self) -> bool:
        return self._flush_timeout() == 0.0

    def _flush(self) -> None:
        """Flush the journaled blobs' files and forget their journal rows. Batches
        written meanwhile by :meth:`write_now` stay counted for the next flush."""
        with self._journal_lock:
            flushing = self._journaled
        if not flushing or self._flush_journal is None:
            return
        try:
            self._flush_journal()
        except Exception:  # kept in the journal: tried again at the next flush
            log.exception("index writer: could not flush the journaled blobs")
            with self._journal_lock:
                self._journaled_since = time.monotonic()
            self._flush_wait = JOURNAL_MAX_AGE
            return
        with self._journal_lock:
            self._journaled -= flushing
            self._journaled_since = time.monotonic()
        self._flush_wait = JOURNAL_IDLE

    def _write(self, entries: list[_One | _Many]) -> None:
        items: list[PendingInsert] = []
        unsynced: list[PendingInsert] = []
        for entry in entries:
            if isinstance(entry, _Many):
                items += entry.items
                unsynced += entry.items
            else:
                items.append(entry.item)
                if not entry.durable:
                    unsynced.append(entry.item)
        results: list[InsertOutcome | BaseException]
        try:
            if self._before_commit is not None:
                self._before_commit(unsynced)
            results = list(self._index.insert_batch(items))
        except Exception as exc:  # never let the writer die: fail this batch only
            log.exception("index writer: batch of %d failed", len(items))
            results = [exc] * len(items)
        self._journal_written(sum(item.journal is not None for item in items))
        position = 0
        for entry in entries:
            if isinstance(entry, _Many):
                part = results[position : position + len(entry.items)]
                position += len(entry.items)
                self._complete(entry.done, part)
                continue
            result = results[position]
            position += 1
            if isinstance(result, BaseException):
                entry.future.set_exception(result)
            else:
                entry.future.set_result(result)


def _count(entry: _One | _Many) -> int:
    return len(entry.items) if isinstance(entry, _Many) else 1
