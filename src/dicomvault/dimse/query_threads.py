"""Threads that run C-FIND queries (PS3.4 C.4.1, K.4.1) off the event loop.

A query's index cursor must stay on the thread that opened it (SQLite connections are
per thread), so each query runs on one single-thread executor from start to close. The
executors are kept and shared round-robin by every handler of the process, not made per
query: starting a thread took ~0.3 ms, a quarter of a selective query's whole answer
time.
"""

from __future__ import annotations

import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Final

#: Executors per pool; queries on one executor take turns chunk by chunk.
THREADS: Final = 4


class QueryThreads:
    """A fixed set of single-thread executors handed out in turn."""

    def __init__(self, name: str, size: int = THREADS) -> None:
        self._name = name
        self._size = size
        self._reset()
        # A forked worker (serve --workers) starts without the parent's threads.
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._executors: list[ThreadPoolExecutor] = []
        self._turn = itertools.count()
        self._lock = threading.Lock()

    def next(self) -> ThreadPoolExecutor:
        """The executor for a new query (created on first use)."""
        with self._lock:
            if not self._executors:
                self._executors = [
                    ThreadPoolExecutor(1, thread_name_prefix=f"{self._name}-{i}")
                    for i in range(self._size)
                ]
            return self._executors[next(self._turn) % self._size]
