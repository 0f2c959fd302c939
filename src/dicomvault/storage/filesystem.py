"""Blobs as files: ``<root>/ab/cd/<uuid-hex>``, written durably.

Durable write (DESIGN.md, the life of an instance, step 3): spool to ``<root>/.tmp`` (the
same filesystem, so the final step is an atomic rename) → fsync the file → rename →
fsync the directory. Names are UUID4 hex chosen here, never a value from a data set
(DCMTK CVE-2022-2119, pynetdicom #823); two levels of 256-way fan-out keep directories
small at hundreds of millions of blobs.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from dicomvault.model.errors import NotFound, OutOfResources

_NAME = re.compile(r"^[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{32}$")
_TMP = ".tmp"
_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _storage_error(exc: OSError, what: str) -> Exception:
    if exc.errno in _SPACE_ERRNOS:
        return OutOfResources(f"storage full while {what}: {exc.strerror}")
    return exc


class FileSpool:
    """A temporary file being filled; see :class:`dicomvault.storage.base.Spool`."""

    def __init__(self, store: FileSystemBlobStore) -> None:
        self._store = store
        self._path = store.root / _TMP / f"{uuid.uuid4().hex}.part"
        try:
            self._file: BinaryIO | None = open(self._path, "xb")  # noqa: SIM115
        except OSError as exc:
            raise _storage_error(exc, "creating a spool file") from exc
        self._size = 0
        self._digest = hashlib.sha256()
        self._dataset_digest: hashlib._Hash | None = None

    @property
    def path(self) -> Path:
        return self._path

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._file is None:
            raise ValueError("spool already committed or discarded")
        try:
            self._file.write(data)
        except OSError as exc:
            self.discard()
            raise _storage_error(exc, "writing") from exc
        self._digest.update(data)
        if self._dataset_digest is not None:
            self._dataset_digest.update(data)
        self._size += len(data)

    def flush(self) -> None:
        """Make written bytes visible to readers of :attr:`path` (the header parser)."""
        if self._file is not None:
            try:
                self._file.flush()
            except OSError as exc:
                self.discard()
                raise _storage_error(exc, "writing") from exc

    def mark_dataset_start(self) -> None:
        self._dataset_digest = hashlib.sha256()

    def sha256(self) -> str:
        return self._digest.hexdigest()

    def dataset_sha256(self) -> str:
        return (self._dataset_digest or self._digest).hexdigest()

    def commit(self) -> str:
        if self._file is None:
            raise ValueError("spool already committed or discarded")
        name_hex = uuid.uuid4().hex
        name = f"{name_hex[:2]}/{name_hex[2:4]}/{name_hex}"
        target = self._store.root / name
        try:
            self._file.flush()
            if self._store.fsync:
                os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(self._path, target)
            if self._store.fsync:
                _fsync_dir(target.parent)
        except OSError as exc:
            self.discard()
            raise _storage_error(exc, "committing") from exc
        return name

    def discard(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass  # a full disk can fail the final flush; the file goes anyway
            self._file = None
        self._path.unlink(missing_ok=True)

    def __enter__(self) -> FileSpool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.discard()


class FileSystemBlobStore:
    """The default blob backend: a directory tree on a local or shared filesystem."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = root
        self.fsync = fsync
        (root / _TMP).mkdir(parents=True, exist_ok=True)

    def _path(self, name: str) -> Path:
        # The name comes from our index, but check it anyway: a tampered index must not
        # turn into a path outside the store.
        if not _NAME.match(name):
            raise ValueError(f"not a blob name: {name!r}")
        return self.root / name

    def spool(self) -> FileSpool:
        return FileSpool(self)

    def open(self, name: str) -> BinaryIO:
        try:
            return open(self._path(name), "rb")  # noqa: SIM115
        except FileNotFoundError:
            raise NotFound(f"blob {name} is missing from the store") from None

    def read_range(self, name: str, start: int, length: int) -> bytes:
        with self.open(name) as f:
            f.seek(start)
            return f.read(length)

    def size(self, name: str) -> int:
        try:
            return self._path(name).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"blob {name} is missing from the store") from None

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def delete(self, name: str) -> None:
        path = self._path(name)
        path.unlink(missing_ok=True)
        if self.fsync:
            _fsync_dir(path.parent)

    def names(self) -> Iterator[str]:
        for first in sorted(os.listdir(self.root)):
            if len(first) != 2 or first == _TMP:
                continue
            for second in sorted(os.listdir(self.root / first)):
                for leaf in sorted(os.listdir(self.root / first / second)):
                    name = f"{first}/{second}/{leaf}"
                    if _NAME.match(name):
                        yield name

    def remove_stale_temp(self, older_than_seconds: float) -> int:
        cutoff = time.time() - older_than_seconds
        removed = 0
        for entry in os.scandir(self.root / _TMP):
            try:
                if entry.stat().st_mtime <= cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free
