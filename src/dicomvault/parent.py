"""Worker processes that stop when the process that started them is gone.

A worker of ``dicomvault import`` or ``serve --workers N`` waits on queues and sockets
that other workers hold open too, so when its parent is killed (``kill -9``, the OOM
killer) nothing it waits on ever ends: it would stay, holding its memory and — for a
``serve`` worker — its share of the listening ports, beside the next server started.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading

log = logging.getLogger("dicomvault.parent")


def stop_with_parent() -> None:
    """In a process started by :mod:`multiprocessing`: send this process SIGTERM once its
    parent has exited, whatever the reason — its own SIGTERM handling (a graceful stop
    for ``serve``, the default end for an import worker) then runs as if an operator had
    sent it. A no-op in a process that multiprocessing did not start."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        # The parent's end of the spawn pipe closes when it exits, however it exits.
        parent.join()
        log.warning("parent process %s has exited: stopping (pid %d)", parent.pid, os.getpid())
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
