"""The single index writer (datasette's pattern: one write thread fed by a queue).

Every ingest hands its :class:`PendingInsert` to this thread and waits. The thread takes
everything queued meanwhile and records it in one transaction — a group commit — so with
many senders the per-instance commit cost shrinks instead of serialising on fsync.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future

from dicomvault.index import Index, InsertOutcome, PendingInsert
from dicomvault.model.errors import DicomVaultError

log = logging.getLogger("dicomvault.archive")

_STOP = object()


class IndexWriter:
    def __init__(
        self,
        index: Index,
        *,
        max_batch: int = 128,
        before_commit: Callable[[list[PendingInsert]], None] | None = None,
    ) -> None:
        self._index = index
        self._before_commit = before_commit
        self._max_batch = max_batch
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
        self._queue.put((item, future, durable))
        return future

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
            self._thread.join()

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
            entries: list[tuple[PendingInsert, Future[InsertOutcome], bool]] = batch  # type: ignore[assignment]
            items = [item for item, _, _ in entries]
            try:
                if self._before_commit is not None:
                    self._before_commit([item for item, _, durable in entries if not durable])
                results = self._index.insert_batch(items)
            except Exception as exc:  # never let the writer die: fail this batch only
                log.exception("index writer: batch of %d failed", len(entries))
                results = [exc] * len(entries)
            for (_, future, _), result in zip(entries, results, strict=True):
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
