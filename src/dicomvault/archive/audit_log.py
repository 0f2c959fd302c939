"""The audit log file (issue 7 part 5; PS3.15 A.5): RFC 5424 lines appended with
``O_APPEND``, never rewritten -- the append-only record of the audit trail (the index
table ``audit_events`` is a searchable copy that may be pruned).

It only grows unless rotated:

- **externally**: logrotate renames it and sends SIGHUP (``create`` mode);
  ``dicomvault serve`` then calls :meth:`AuditLog.reopen` and the next message goes to a
  new file of the same name;
- **in-process** (``audit.max_log_bytes`` > 0): a write that would take the file past
  the limit first renames ``audit.log`` to ``audit.log.1`` (``.1`` to ``.2`` …),
  keeping ``audit.keep_files`` rotated files and deleting older ones.

Several processes append to one file (``serve --workers N``, CLI commands): in-process
rotation takes an exclusive ``flock`` on ``audit.log.lock`` around "check the size,
rotate, write", and a process whose open file was renamed by another follows to the new
one before writing, so no process keeps appending to a rotated file.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("dicomvault.audit")

#: Permissions of a new audit log: the server's user reads and writes, its group reads.
MODE = 0o640


class AuditLog:
    """One process's handle on the audit log file; used by one thread at a time (the
    audit writer, or a CLI command), except :meth:`reopen`, which any thread (a signal
    handler) may call."""

    def __init__(self, path: Path, *, max_bytes: int = 0, keep: int = 10) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = max(1, keep)
        self._fd: int | None = None
        self._reopen = False
        self.rotations = 0

    def reopen(self) -> None:
        """Close and reopen the file before the next write (SIGHUP after an external
        rotation): it then appends to whatever file is at :attr:`path` -- a new one."""
        self._reopen = True

    def append(self, data: bytes) -> None:
        """Append ``data`` (whole lines) in one ``write``; rotate first when
        ``max_bytes`` is set and the file would grow past it.

        Raises
        ------
        OSError
            The file cannot be opened or written.
        """
        if self._reopen:
            self._reopen = False
            self.close()
        if not self.max_bytes:
            os.write(self._open(), data)
            return
        with self._locked():
            fd = self._follow()
            size = os.fstat(fd).st_size
            if size and size + len(data) > self.max_bytes:
                fd = self._rotate()
            os.write(fd, data)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- internals ------------------------------------------------------------------

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, MODE)
        return self._fd

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, MODE)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield
        finally:
            os.close(lock)  # releases the lock

    def _follow(self) -> int:
        """Our descriptor, reopened when the file at :attr:`path` is no longer the one
        we hold (another process rotated it, or it was removed)."""
        fd = self._open()
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            self.close()
            return self._open()
        held = os.fstat(fd)
        if (held.st_dev, held.st_ino) != (current.st_dev, current.st_ino):
            self.close()
            fd = self._open()
        return fd

    def _rotated(self, n: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{n}")

    def _rotate(self) -> int:
        """``audit.log`` → ``.1`` → ``.2`` … (the one past :attr:`keep` deleted), then a
        new ``audit.log``. Called with the lock held."""
        self.close()
        extra = self.keep
        while self._rotated(extra).exists():  # beyond ``keep`` (it may have been lowered)
            extra += 1
        for n in range(extra, self.keep - 1, -1):
            self._rotated(n).unlink(missing_ok=True)
        for n in range(self.keep - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(self._rotated(n), self._rotated(n + 1))
        os.replace(self.path, self._rotated(1))
        self.rotations += 1
        log.info("audit: %s rotated (over %d bytes)", self.path, self.max_bytes)
        return self._open()
