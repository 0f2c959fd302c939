"""The single index writer (datasette's pattern: one write thread fed by a queue).

Every ingest hands its :class:`PendingInsert` to this thread and waits. The thread takes
everything queued meanwhile and records it in one transaction — a group commit — so with
many senders the per-instance commit cost shrinks instead of serialising on fsync.

A caller that gathers instances itself (the DIMSE event loop) hands them over together
with :meth:`IndexWriter.submit_many` and one callback for all: no future, lock and
wake-up per instance.
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
from dicomvault.model.errors import DicomVaultError

log = logging.getLogger("dicomvault.archive")

_STOP = object()
#: The journaled blobs' files are flushed (one syncfs) and their rows dropped when the
#: writer has been idle this long (s), or this many are pending, or the oldest is this
#: old (s): the journal stays small, and a burst pays one flush per this many.
JOURNAL_IDLE = 0.1
JOURNAL_FLUSH_COUNT = 512
JOURNAL_MAX_AGE = 2.0

#: Called on the writer thread after the commit, with one result per item of a
#: :meth:`IndexWriter.submit_many`, in order: its outcome, or the error that failed it.
BatchDone = Callable[[list[InsertOutcome | BaseException]], None]


class _One(NamedTuple):
    item: PendingInsert
    future: Future[InsertOutcome]
    durable: bool


class _Many(NamedTuple):
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

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
            self._thread.join()

    def _run(self) -> None:
        stop = False
        while not stop:
            try:
                first = self._queue.get(timeout=self._flush_wait if self._journaled else None)
            except queue.Empty:  # idle: the journaled blobs' files go to the disk now
                self._flush()
                continue
            if first is _STOP:
                break
            entries: list[_One | _Many] = [first]  # type: ignore[list-item]
            count = _count(first)  # type: ignore[arg-type]
            while count < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                entries.append(nxt)  # type: ignore[arg-type]
                count += _count(nxt)  # type: ignore[arg-type]
            self._write(entries)
            if self._journaled >= JOURNAL_FLUSH_COUNT or (
                self._journaled and time.monotonic() - self._journaled_since > JOURNAL_MAX_AGE
            ):
                self._flush()
        self._flush()

    def _flush(self) -> None:
        """Flush the journaled blobs' files and forget their journal rows."""
        if not self._journaled or self._flush_journal is None:
            return
        try:
            self._flush_journal()
        except Exception:  # kept in the journal: tried again at the next flush
            log.exception("index writer: could not flush the journaled blobs")
            self._journaled_since = time.monotonic()
            self._flush_wait = JOURNAL_MAX_AGE
            return
        self._journaled = 0
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
        journaled = sum(item.journal is not None for item in items)
        if journaled and not self._journaled:
            self._journaled_since = time.monotonic()
        self._journaled += journaled
        results: list[InsertOutcome | BaseException]
        try:
            if self._before_commit is not None:
                self._before_commit(unsynced)
            results = list(self._index.insert_batch(items))
        except Exception as exc:  # never let the writer die: fail this batch only
            log.exception("index writer: batch of %d failed", len(items))
            results = [exc] * len(items)
        position = 0
        for entry in entries:
            if isinstance(entry, _Many):
                part = results[position : position + len(entry.items)]
                position += len(entry.items)
                try:
                    entry.done(part)
                except Exception:  # the callback's bug must not stop the writer
                    log.exception("index writer: a batch's completion failed")
                continue
            result = results[position]
            position += 1
            if isinstance(result, BaseException):
                entry.future.set_exception(result)
            else:
                entry.future.set_result(result)


def _count(entry: _One | _Many) -> int:
    return len(entry.items) if isinstance(entry, _Many) else 1
