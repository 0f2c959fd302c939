"""Blobs as files: ``<root>/YYYYMMDD/HHMM/<32 hex digits>``, written durably.

Durable write (DESIGN.md, the life of an instance, step 3): spool to ``<root>/.tmp`` (the
same filesystem, so the final step is an atomic rename) → rename → make durable. How,
``storage.sync``:

- ``batch`` (default, Linux): the index writer makes every blob of its batch durable
  with one ``syncfs(2)`` of the storage filesystem (their data, inodes and directory
  entries) before the commit that indexes them. Measured here, 10 KB blobs: 0.14 ms of
  wall time and 0.08 ms of CPU per blob in batches of 4, against 0.37 and 0.18 ms with
  an ``fsync`` of each file and its directory: every ``fsync`` is a flush of the device,
  and a device does its flushes one after another.
- ``blob``: ``fsync`` each file before its rename and its directory after (for a data
  directory on a filesystem shared with heavy writers, whose dirty data a ``syncfs``
  would wait for).

Names are 128-bit hex chosen here (a random per-process prefix
and a counter: unique like a UUID4, without a ``getrandom`` call per blob), never a
value from a data set (DCMTK CVE-2022-2119, pynetdicom #823). Directories are buckets
of arrival time (UTC, one per minute): a directory holds what one minute brought
(18,000 files at 300/s), a new one is made once a minute rather than once per blob as a
hash fan-out would (measured here: creating fan-out directories doubled the cost of a
durable write), and backups find new data by name.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import io
import itertools
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, Literal

from dicomvault.model.errors import NotFound, OutOfResources

_NAME = re.compile(r"^[0-9]{8}/[0-9]{4}/[0-9a-f]{32}$")
_DAY = re.compile(r"^[0-9]{8}$")
_MINUTE = re.compile(r"^[0-9]{4}$")
_TMP = ".tmp"
_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
#: Write buffer of a spool (Python's default size, given so that open() does not ask).
_BUFFER = io.DEFAULT_BUFFER_SIZE
#: A write (or a chunk read back) at least this large is hashed on hashing threads while
#: this one writes it: the two SHA-256 passes over a 0.5 MB CT data set take ~0.5 ms,
#: and hashlib and the write both release the GIL, so they overlap on two cores. Not for
#: a spool made with ``overlap=False`` (C-STORE data sets held in memory: see
#: ``Archive.prepare_buffered``).
PARALLEL_HASH_MIN = 256 * 1024
_hash_pool: ThreadPoolExecutor | None = None
_hash_pool_lock = threading.Lock()


def _hashers() -> ThreadPoolExecutor:
    global _hash_pool
    with _hash_pool_lock:
        if _hash_pool is None:
            _hash_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="hash")
        return _hash_pool


def _forget_hashers() -> None:  # a forked child has none of its parent's threads
    global _hash_pool, _hash_pool_lock
    _hash_pool, _hash_pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_hashers)


def _hash_beside(
    digest: hashlib._Hash,
    dataset_digest: hashlib._Hash | None,
    data: bytes | bytearray | memoryview,
) -> list[Future[None]]:
    """Start ``digest.update(data)`` (and ``dataset_digest``'s) on hashing threads."""
    pool = _hashers()
    started = [pool.submit(digest.update, data)]
    if dataset_digest is not None:
        started.append(pool.submit(dataset_digest.update, data))
    return started


def _wait(started: list[Future[None]]) -> None:
    for future in started:
        future.result()


class _Names:
    """Unique 32-hex-digit names: 64 random bits per process, then a 64-bit counter."""

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # a child must not repeat them

    def _reset(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count()

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter) & 0xFFFFFFFFFFFFFFFF:016x}"


_names = _Names()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_syncfs() -> Callable[[int], int] | None:
    """libc's ``syncfs(2)`` (Linux), called without the GIL; ``None`` where absent."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        function = libc.syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_SYNCFS = _load_syncfs()


def _syncfs(path: Path) -> None:
    """Write out everything cached for the filesystem holding ``path`` and flush the
    device: what any process wrote there before this call is durable after it. Since
    Linux 5.8 it reports a writeback error that happened since the descriptor opened."""
    if _SYNCFS is None:
        raise OSError(errno.ENOSYS, "syncfs is not available on this system")
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _SYNCFS(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
    finally:
        os.close(fd)


class _SharedSync:
    """One directory's fsync (or one filesystem's syncfs) shared by every thread that
    needs it (a group commit).

    A thread that renamed a blob into the directory takes a ticket. A sync that
    *starts* after the ticket was taken makes that entry durable. So while one sync
    runs, later arrivals wait and then one of them runs a single sync for all of them:
    with 4 associations (or 16 STOW-RS parts) at once, each device flush serves several
    instances instead of one each.
    """

    __slots__ = ("done", "requested", "running")

    def __init__(self) -> None:
        self.requested = 0  # tickets handed out
        self.done = 0  # tickets covered by a finished fsync
        self.running = False


class _SharedSyncs:
    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._changed = threading.Condition(threading.Lock())
        self._dirs: dict[tuple[Path, Callable[[Path], None]], _SharedSync] = {}

    def sync(self, path: Path, how: Callable[[Path], None] = _fsync_dir) -> None:
        """Return once a ``how(path)`` that started after this call has finished."""
        key = (path, how)
        with self._changed:
            state = self._dirs.get(key)
            if state is None:
                state = self._dirs[key] = _SharedSync()
            state.requested += 1
            ticket = state.requested
            while state.running:
                self._changed.wait()
            if state.done >= ticket:
                return  # an fsync that started after our ticket covered it
            state.running = True
            covers = state.requested
        synced = False
        try:
            how(path)
            synced = True
        finally:
            with self._changed:
                state.running = False
                if synced:  # a failure leaves the waiters to try again themselves
                    state.done = max(state.done, covers)
                if state.done == state.requested and self._dirs.get(key) is state:
                    del self._dirs[key]  # nobody waits: the state need not be kept
                self._changed.notify_all()


_shared_syncs = _SharedSyncs()


def _storage_error(exc: OSError, what: str) -> Exception:
    if exc.errno in _SPACE_ERRNOS:
        return OutOfResources(f"storage full while {what}: {exc.strerror}")
    return exc


class FileSpool:
    """A temporary file being filled; see :class:`dicomvault.storage.base.Spool`."""

    def __init__(
        self, store: FileSystemBlobStore, *, hash_inline: bool = True, overlap: bool = True
    ) -> None:
        self._store = store
        self._hash_inline = hash_inline
        self._overlap = overlap
        self._dataset_offset: int | None = None
        self._digests: tuple[str, str] | None = None
        # Strings, not Paths, and an explicit buffer size (no isatty() probe): a spool is
        # made per received instance, on the network event loop for small ones.
        self._name = f"{store._tmp}/{_names.next()}.part"
        try:
            self._file: BinaryIO | None = open(self._name, "xb", buffering=_BUFFER)  # noqa: SIM115
        except OSError as exc:
            raise _storage_error(exc, "creating a spool file") from exc
        self._size = 0
        self._digest = hashlib.sha256()
        self._dataset_digest: hashlib._Hash | None = None

    @property
    def path(self) -> Path:
        return Path(self._name)

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._file is None:
            raise ValueError("spool already committed or discarded")
        hashing = (
            _hash_beside(self._digest, self._dataset_digest, data)
            if self._hash_inline and self._overlap and len(data) >= PARALLEL_HASH_MIN
            else None
        )
        try:
            self._file.write(data)
        except OSError as exc:
            self.discard()
            raise _storage_error(exc, "writing") from exc
        finally:
            if hashing is not None:
                _wait(hashing)
        if self._hash_inline and hashing is None:
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
        self._dataset_offset = self._size
        self._dataset_digest = hashlib.sha256()

    def sha256(self) -> str:
        return self._hashes()[0]

    def dataset_sha256(self) -> str:
        return self._hashes()[1]

    def _hashes(self) -> tuple[str, str]:
        if self._digests is None:
            if not self._hash_inline:
                self._hash_file()
            dataset = self._dataset_digest or self._digest
            self._digests = (self._digest.hexdigest(), dataset.hexdigest())
        return self._digests

    def _hash_file(self) -> None:
        # Deferred hashing (``hash_inline=False``): one pass over the spooled file, from
        # the page cache, on whichever thread asks — not on the network event loop.
        self.flush()
        offset = self._dataset_offset
        with open(self._name, "rb") as f:
            position = 0
            while chunk := f.read(1 << 20):
                dataset = None
                if self._dataset_digest is not None and offset is not None:
                    start = max(offset - position, 0)
                    if start < len(chunk):
                        dataset = memoryview(chunk)[start:]
                if dataset is not None and len(chunk) >= PARALLEL_HASH_MIN:
                    # The file's digest on a hashing thread, the data set's here.
                    hashing = _hash_beside(self._digest, None, chunk)
                    self._dataset_digest.update(dataset)  # type: ignore[union-attr]
                    _wait(hashing)
                else:
                    self._digest.update(chunk)
                    if dataset is not None:
                        self._dataset_digest.update(dataset)  # type: ignore[union-attr]
                position += len(chunk)

    def commit(self) -> str:
        """Rename into place and make durable; the blob's name."""
        name = self.place()
        self._store.sync([name])
        return name

    def place(self) -> str:
        """Rename into place, not yet durable: the caller makes a batch of placed blobs
        durable at once with :meth:`FileSystemBlobStore.sync` before indexing them. With
        ``storage.sync = "blob"`` the data is fsynced here and ``sync`` does the
        directories."""
        if self._file is None:
            raise ValueError("spool already committed or discarded")
        bucket = time.strftime("%Y%m%d/%H%M", time.gmtime())
        name = f"{bucket}/{_names.next()}"
        target = f"{self._store._root}/{name}"
        try:
            self._file.flush()
            if self._store.place_syncs:
                os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            try:
                os.rename(self._name, target)
            except FileNotFoundError:  # a new minute: its directory does not exist yet
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.rename(self._name, target)
        except OSError as exc:
            self.discard()
            raise _storage_error(exc, "committing") from exc
        return name

    def discard(self) -> None:
        if self._file is not None:
            # A full disk can fail the final flush; the file goes anyway.
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._name)

    def __enter__(self) -> FileSpool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.discard()


class FileSystemBlobStore:
    """The default blob backend: a directory tree on a local or shared filesystem."""

    def __init__(
        self, root: Path, *, fsync: bool = True, sync: Literal["batch", "blob"] = "batch"
    ) -> None:
        self.root = root
        self._root = str(root)
        self._tmp = os.path.join(self._root, _TMP)
        self.fsync = fsync
        #: One syncfs makes a batch durable (``storage.sync = "batch"`` where the system
        #: has syncfs); otherwise an fsync per blob and per directory.
        self.batch_sync = fsync and sync == "batch" and _SYNCFS is not None
        #: :meth:`FileSpool.place` fsyncs the file (``storage.sync = "blob"``): a call
        #: that waits for the device.
        self.place_syncs = fsync and not self.batch_sync
        (root / _TMP).mkdir(parents=True, exist_ok=True)

    def _path(self, name: str) -> Path:
        return Path(self._file(name))

    def _file(self, name: str) -> str:
        # The name comes from our index, but check it anyway: a tampered index must not
        # turn into a path outside the store. A string, not a Path: opening blobs to
        # serve them is a hot path, and pathlib's joining cost more than the open.
        if not _NAME.match(name):
            raise ValueError(f"not a blob name: {name!r}")
        return os.path.join(self._root, name)

    def spool(self, *, hash_inline: bool = True, overlap: bool = True) -> FileSpool:
        """A new spool. ``hash_inline=False`` hashes once at the end instead of on every
        write — for writers on an event loop that must stay responsive. ``overlap=False``
        hashes every write on the writing thread, never beside it on the hashing threads
        (:data:`PARALLEL_HASH_MIN`): for callers that run several at once anyway."""
        return FileSpool(self, hash_inline=hash_inline, overlap=overlap)

    def sync(self, names: list[str]) -> None:
        """Make the placed blobs ``names`` durable (:meth:`FileSpool.place`): one syncfs
        of the filesystem (shared by the threads asking at once), or with
        ``storage.sync = "blob"`` each directory fsynced once (blobs of one minute share
        a directory, so usually one fsync for all)."""
        if not self.fsync or not names:
            return
        if self.batch_sync:
            self.sync_all()
            return
        try:
            for parent in sorted({self._path(name).parent for name in names}):
                _shared_syncs.sync(parent)
        except OSError as exc:
            raise _storage_error(exc, "committing") from exc

    def sync_all(self) -> None:
        """Make every blob placed so far durable: one syncfs (``storage.sync = "batch"``;
        the blob journal is kept only then)."""
        if not self.batch_sync:
            return
        try:
            _shared_syncs.sync(self.root, _syncfs)
        except OSError as exc:
            raise _storage_error(exc, "committing") from exc

    def restore(self, name: str, data: bytes) -> bool:
        """Make the blob ``name`` hold exactly ``data`` — start-up recovery, from the
        blob journal, for a file a power cut lost or cut short. Returns whether it had to
        be written (whole, then renamed into place: never half a file). Durable after
        :meth:`sync_all` (``storage.sync = "batch"``), or here (``"blob"``)."""
        path = self._file(name)
        try:
            with open(path, "rb") as f:
                if f.read(len(data) + 1) == data:
                    return False
        except FileNotFoundError:
            pass
        each = self.fsync and not self.batch_sync
        temp = f"{self._tmp}/{_names.next()}.part"
        try:
            with open(temp, "xb") as f:
                f.write(data)
                if each:
                    os.fsync(f.fileno())
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        if each:
            _fsync_dir(Path(path).parent)
        return True

    def commit_many(
        self, spools: list[FileSpool], *, durable: bool = True
    ) -> list[str | OSError | Exception]:
        """Place several spools, then make them durable together (:meth:`sync`) unless
        the caller does (``durable=False``: the index writer, per batch).

        With ``storage.sync = "blob"`` each file is fsynced: on ext4 with a journal the
        first fsync commits the transaction that holds every file written meanwhile, so
        the next ones find little left to do. Returns a name, or the error, per spool (a
        failed spool is discarded).
        """
        names: list[str | OSError | Exception] = []
        for spool in spools:
            try:
                names.append(spool.place())
            except Exception as exc:
                names.append(exc)
        if durable:
            try:
                self.sync([n for n in names if isinstance(n, str)])
            except Exception as exc:
                for n in names:
                    if isinstance(n, str):
                        (self.root / n).unlink(missing_ok=True)
                return [exc] * len(names)
        return names

    def open(self, name: str, *, buffered: bool = True) -> BinaryIO:
        """The blob for reading; ``buffered=False``: the plain file, each read one system
        call (for callers that read it in large blocks or hand its descriptor over)."""
        try:
            return open(self._file(name), "rb", buffering=-1 if buffered else 0)
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
            if not _DAY.match(first):
                continue
            for second in sorted(os.listdir(self.root / first)):
                if not _MINUTE.match(second):
                    continue
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
