"""The archive service: the one place that orders "spool → parse → durable blob → index
→ answer" (DESIGN.md, the life of an instance) and owns locking and recovery.

Protocol adapters call it and only it: ``dimse/`` (C-STORE → :meth:`Archive.begin_receive`),
``web/`` (STOW-RS → :meth:`Archive.store_stream`) and ``cli/`` (import →
:meth:`Archive.store_file`).
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from dicomvault.archive.deletion import DeletionService, Selection
from dicomvault.archive.query import find as _find
from dicomvault.archive.query import retrieve_instances as _retrieve_instances
from dicomvault.archive.recovery import (
    VerifyReport,
    flush_journal,
    recover,
    restore_journal,
    verify,
)
from dicomvault.archive.retention import QuotaGauge
from dicomvault.archive.writer import IndexWriter
from dicomvault.config import Settings
from dicomvault.dicom.kos import KEY_OBJECT_SELECTION_DOCUMENT, rejection_note
from dicomvault.dicom.parse import ParsedInstance, parse_instance, parse_received
from dicomvault.dicom.part10 import (
    PREAMBLE,
    encode_file_meta,
    encode_file_meta_for,
    read_preamble_layout,
)
from dicomvault.index import Index, InsertOutcome, PendingInsert
from dicomvault.model.errors import (
    ConfigError,
    DuplicateRejected,
    HierarchyConflict,
    IndexError_,
    InstanceRejected,
    NotFound,
    OutOfResources,
    QuotaExceeded,
    UIDMismatch,
)
from dicomvault.model.query import FindResult, Query
from dicomvault.model.records import (
    BlobInfo,
    Stats,
    StoredInstance,
    StoreResult,
    StoreStatus,
)
from dicomvault.storage.filesystem import FileSpool, FileSystemBlobStore

log = logging.getLogger("dicomvault.archive")

_HEAD = 1 << 16  # enough for any real file meta group
_CHUNK = 1 << 20
#: Data sets up to this size are received on the caller's thread (see
#: :meth:`Archive.receives_inline`). Measured here, a 10 KB one costs ~0.2 ms of CPU
#: there; on a thread pool it cost ~2 ms of waiting for the GIL and the hand-offs.
INLINE_LIMIT = 64 * 1024
#: A received blob up to this size is also written into the index, in the transaction
#: that indexes it (``blob_journal``): that commit's one device flush makes the instance
#: durable, where a syncfs of its file before the commit took a second. The files are
#: flushed later, many with one syncfs, and their journal rows dropped; start-up recovery
#: rewrites a file that a power cut lost from its row. Measured here (10 KB over one
#: association), leaving the per-batch syncfs out raised throughput ~40 %.
JOURNAL_LIMIT = INLINE_LIMIT


class Reception:
    """One instance arriving as a stream of data-set bytes (C-STORE).

    The file meta is written first from the command's UIDs (PS3.10 7.1), then the data
    set exactly as received, so the stored file is Part 10 and its data set is
    byte-identical to what the sender sent.
    """

    def __init__(
        self,
        archive: Archive,
        *,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
        source_ae: str | None,
    ) -> None:
        self._archive = archive
        self.sop_class_uid = sop_class_uid
        self.sop_instance_uid = sop_instance_uid
        self.transfer_syntax_uid = transfer_syntax_uid
        self.source_ae = source_ae
        # Hashed in finish(), off the network event loop that calls write().
        self._spool = archive.store.spool(hash_inline=False)
        self._done = False
        try:
            self._spool.write(
                encode_file_meta(
                    sop_class_uid, sop_instance_uid, transfer_syntax_uid, source_ae=source_ae
                )
            )
            self._spool.mark_dataset_start()
        except BaseException:
            self.abort()
            raise

    @property
    def size(self) -> int:
        return self._spool.size

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._spool.write(data)

    def finish(self) -> StoreResult:
        """Validate, store durably, index; raises the typed errors of ``model.errors``."""
        return self.finish_async().result()

    def finish_async(self) -> Future[StoreResult]:
        """:meth:`finish` up to the durable blob; the future completes on the index
        writer's thread once the instance is indexed, so no thread waits for it."""
        if self._done:
            raise ValueError("reception already finished")
        self._done = True
        try:
            self._spool.flush()
            parsed = self._archive._parse(self._spool.path, strict_meta=True)
            _check_command_uids(parsed, self.sop_class_uid, self.sop_instance_uid)
        except BaseException:
            self._spool.discard()
            raise
        return self._archive._complete_async(self._spool, parsed, self.source_ae)

    def abort(self) -> None:
        """Discard the partial instance (association aborted, error)."""
        self._done = True
        self._spool.discard()


def _check_command_uids(parsed: ParsedInstance, sop_class_uid: str, sop_instance_uid: str) -> None:
    """The C-STORE command's Affected SOP Class/Instance UIDs must be the data set's
    (PS3.4 B.2.3: a mismatch is refused, status 0xA900)."""
    inst = parsed.record.instance
    if inst.sop_instance_uid != sop_instance_uid:
        raise UIDMismatch(
            f"Affected SOP Instance UID {sop_instance_uid} but the data set "
            f"has {inst.sop_instance_uid}"
        )
    if inst.sop_class_uid != sop_class_uid:
        raise UIDMismatch(
            f"Affected SOP Class UID {sop_class_uid} but the data set has {inst.sop_class_uid}"
        )


@dataclass(frozen=True, slots=True)
class _Checked:
    """A spooled instance that passed the checks and is to be committed and indexed."""

    spool: FileSpool
    parsed: ParsedInstance
    source_ae: str | None
    policy: str
    result: StoreResult
    sha256: str
    dataset_sha256: str

    def prepared(self, name: str, journal: bytes | None = None) -> Prepared:
        blob = BlobInfo(name, self.result.size, self.sha256, self.dataset_sha256)
        pending = PendingInsert(
            self.parsed.record, blob, self.source_ae, self.policy, journal=journal
        )
        return Prepared(pending, self.result)


@dataclass(frozen=True, slots=True)
class Prepared:
    """A durable, not yet indexed instance (see :meth:`Archive.prepare_file`)."""

    pending: PendingInsert
    result: StoreResult


def ready_data_dir(settings: Settings, *, create: bool) -> None:
    """The data directory (``storage.path``) of ``settings``, ready to open.

    ``create``: made when absent; ConfigError naming the directory and the reason when it
    cannot be (a missing parent on a read-only mount, a permission). Otherwise it must
    hold an archive already — the directory, and its embedded index when ``index.url``
    is not set — or ConfigError: a mistyped ``--data-dir`` is not a new empty archive.
    """
    path = settings.storage.path
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the data directory {path} (storage.path): {exc.strerror or exc}"
            ) from None
        return
    if not path.is_dir():
        problem = "the data directory does not exist"
    elif not settings.index.url and not (path / "index.sqlite3").is_file():
        problem = "the directory holds no index.sqlite3"
    else:
        return
    raise ConfigError(
        f"no archive at {path}: {problem} "
        "('dicomvault serve' or 'dicomvault import' creates one)"
    )


class Archive:
    """An open archive: index + blob store + the writer thread."""

    def __init__(self, settings: Settings, index: Index, store: FileSystemBlobStore) -> None:
        self.settings = settings
        self.index = index
        self.store = store
        self._writer_instance: IndexWriter | None = None
        # Concurrent first stores (STOW parts on pool threads, DIMSE associations) must
        # start one writer: two would race on inserting the same patient.
        self._writer_lock = threading.Lock()
        self._lock_fd: int | None = None
        #: Deletion, IOCM rejection, protection (``archive/deletion.py``).
        self.deletion = DeletionService(self)
        #: The running total the quota check reads (``archive/retention.py``).
        self.quota = QuotaGauge(settings.retention.quota_bytes, index.deletions.total_bytes)

    @classmethod
    def open(
        cls,
        settings: Settings,
        *,
        recover_on_start: bool = True,
        helper: bool = False,
        create: bool = True,
    ) -> Archive:
        """Open (creating when new, unless ``create`` is false) the archive of ``settings``.

        When no other process has the data directory open, start-up recovery removes
        temp files and orphan blobs that a crash left behind. ``helper`` is for worker
        processes of a process that already opened it: no lock, no recovery.

        Commands that only look at or change what is stored (verify, delete, retention)
        pass ``create=False``: a mistyped ``--data-dir`` is then an error
        (:class:`ConfigError`), not a new empty archive that reports "consistent".
        """
        data_dir = settings.storage.path
        ready_data_dir(settings, create=create)
        store = FileSystemBlobStore(
            data_dir / "blobs", fsync=settings.storage.fsync, sync=settings.storage.sync
        )
        index = Index.open(settings.index_url, create=create)
        archive = cls(settings, index, store)
        if helper:
            return archive
        archive._lock_fd = os.open(data_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(archive._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            alone = True
        except BlockingIOError:
            alone = False
        if alone and recover_on_start:
            restored = restore_journal(index, store)
            if restored:
                log.warning(
                    "recovery: rewrote %d received blob file(s) lost before they reached "
                    "the disk, from the index's blob journal",
                    restored,
                )
            finished = archive.deletion.finish_queue()
            temp, orphans = recover(index, store)
            if temp or orphans or finished:
                log.warning(
                    "recovery: removed %d unfinished temp file(s), %d orphan blob(s) and "
                    "%d blob(s) of deletions left by an earlier crash",
                    temp,
                    orphans,
                    finished,
                )
        # Others may share the directory from now on (import while serving, workers).
        fcntl.flock(archive._lock_fd, fcntl.LOCK_SH)
        return archive

    @property
    def _writer(self) -> IndexWriter:
        # Started on first use: import worker processes only prepare, never index.
        writer = self._writer_instance
        if writer is None:
            with self._writer_lock:
                if self._writer_instance is None:
                    self._writer_instance = IndexWriter(
                        self.index,
                        before_commit=self._sync_blobs,
                        flush_journal=self._flush_journal,
                    )
                writer = self._writer_instance
        return writer

    def _sync_blobs(self, items: list[PendingInsert]) -> None:
        # Blobs become durable before the index commit that makes them findable
        # (DESIGN.md steps 3-4): here, once per batch, for those placed but not yet
        # durable (every received one with storage.sync = "batch"; the directory
        # entries of import workers' chunks otherwise).
        # A journaled blob is durable through the commit itself (its bytes are in it).
        self.store.sync([item.blob.name for item in items if item.journal is None])

    def _flush_journal(self) -> None:
        """Make the files of journaled blobs durable, for many at once, and drop their
        journal rows (on the index writer: idle, or every JOURNAL_FLUSH_COUNT)."""
        flush_journal(self.index, self.store)

    def close(self) -> None:
        # The audit trail writes into this archive's index and data directory: what it
        # has queued is written now, and its writer stopped, not whenever the archive
        # is garbage collected (a closed data directory may be gone by then).
        from dicomvault.archive import audit

        audit.close_trail(self)
        if self._writer_instance is not None:
            self._writer_instance.close()
        self.index.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- ingest ---------------------------------------------------------------------

    def _parse(self, path: Path, *, strict_meta: bool = False) -> ParsedInstance:
        return parse_instance(
            path,
            bulk_data_threshold=self.settings.index.bulk_data_threshold,
            meta_mismatch="error" if strict_meta else "warn",
        )

    def begin_receive(
        self,
        *,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
        source_ae: str | None = None,
    ) -> Reception:
        """Start receiving one instance's data set (C-STORE, PS3.4 B.2)."""
        return Reception(
            self,
            sop_class_uid=sop_class_uid,
            sop_instance_uid=sop_instance_uid,
            transfer_syntax_uid=transfer_syntax_uid,
            source_ae=source_ae,
        )

    def receives_inline(self, sop_class_uid: str, size: int) -> bool:
        """Whether :meth:`prepare_buffered` of a data set of ``size`` bytes is cheap
        enough to run on a network event loop rather than a thread: small, indexed in
        local SQLite (its duplicate probe is a lookup in the page cache, not a network
        round trip), placed without an ``fsync`` (``storage.sync = "batch"``: the index
        writer syncs), and not a Key Object Selection, which may reject instances (IOCM)
        in a write transaction of its own."""
        return (
            size <= INLINE_LIMIT
            and self.index.is_sqlite
            and not self.store.place_syncs
            and sop_class_uid != KEY_OBJECT_SELECTION_DOCUMENT
        )

    def prepare_buffered(
        self,
        *,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
        dataset: bytes | bytearray,
        source_ae: str | None = None,
    ) -> Prepared | StoreResult:
        """Steps 1-3 for one C-STORE data set that arrived whole in memory (PS3.4 B.2):
        what :meth:`begin_receive` does for a stream, without reading the spool back —
        the header is parsed and both digests are computed from the buffer, and the file
        is written once and placed, not yet durable nor indexed: the caller hands several
        to :meth:`finalize_many` at once. A :class:`StoreResult` means there is nothing to
        index (an identical duplicate, keep-first)."""
        meta, read_back = encode_file_meta_for(
            sop_class_uid, sop_instance_uid, transfer_syntax_uid, source_ae=source_ae
        )
        parsed = parse_received(
            meta,
            read_back,
            dataset,
            name="the data set",
            bulk_data_threshold=self.settings.index.bulk_data_threshold,
            meta_mismatch="error",
        )
        _check_command_uids(parsed, sop_class_uid, sop_instance_uid)
        # Hashed as it is written, the bytes being in memory anyway, and on this thread:
        # several associations prepare at once, so handing the two digests of a CT data
        # set to the hashing threads bought no overlap, only thread hand-offs. Measured
        # (1,000 x 0.5 MB, 4 associations, 6 alternating pairs): +2 to +26 % instances/s
        # and 0.1-0.5 ms less CPU per instance; over one association no difference
        # (docs/benchmarks.md, eleventh session).
        spool = self.store.spool(overlap=False)
        try:
            spool.write(meta)
            spool.mark_dataset_start()
            spool.write(dataset)
        except BaseException:
            spool.discard()
            raise
        journal = meta + dataset if self._journals(len(meta) + len(dataset)) else None
        return self._place_checked(spool, parsed, source_ae, durable=False, journal=journal)

    def _journals(self, size: int) -> bool:
        """Whether a received blob of ``size`` bytes goes into the blob journal: small,
        indexed in SQLite (a local file: its commit is one device flush), and made
        durable per batch (``storage.sync = "batch"``, fsync on)."""
        return size <= JOURNAL_LIMIT and self.store.batch_sync and self.index.is_sqlite

    def store_file(self, path: Path, *, source_ae: str | None = None) -> StoreResult:
        """Store a file from disk: Part 10, Part 10 without preamble, or a bare data set.

        The stored blob is always a Part 10 file whose data set bytes are the file's own.
        """
        spool, parsed = self._spool_file(path)
        return self._complete(spool, parsed, source_ae)

    def store_stream(self, stream: IO[bytes], *, source_ae: str | None = None) -> StoreResult:
        """Store a Part 10 file (or bare data set) read from ``stream`` (STOW-RS, zip)."""
        with self.temp_copy(stream) as path:
            return self.store_file(path, source_ae=source_ae)

    @contextmanager
    def temp_copy(self, stream: IO[bytes]) -> Iterator[Path]:
        """``stream`` copied to a temporary file in the store (parsing needs a file)."""
        fd, name = tempfile.mkstemp(dir=self.store.root / ".tmp", suffix=".in")
        try:
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(stream, out, _CHUNK)
            yield Path(name)
        finally:
            os.unlink(name)

    def prepare_many(
        self, paths: list[Path], *, source_ae: str | None = None
    ) -> list[Prepared | StoreResult | Exception]:
        """Steps 1–3 for several files — parse, check, make the blobs durable with one
        journal commit — but do not index.

        Worker processes of ``dicomvault import`` run this; the process that owns the
        index writer then calls :meth:`finalize`. A :class:`StoreResult` means there is
        nothing to index (an identical duplicate, or keep-first); an exception is that
        file's error (returned, not raised).
        """
        out: list[Prepared | StoreResult | Exception] = []
        checked: list[tuple[int, _Checked]] = []
        for path in paths:
            try:
                spool, parsed = self._spool_file(path)
                check = self._check(spool, parsed, source_ae)
            except Exception as exc:
                out.append(exc)
                continue
            if isinstance(check, StoreResult):
                out.append(check)
            else:
                checked.append((len(out), check))
                out.append(check.result)  # replaced below
        # Directory entries are made durable by the indexing process's writer, per batch.
        names = self.store.commit_many([c.spool for _, c in checked], durable=False)
        for (position, check), name in zip(checked, names, strict=True):
            out[position] = name if isinstance(name, Exception) else check.prepared(name)
        return out

    def _spool_file(self, path: Path) -> tuple[FileSpool, ParsedInstance]:
        """Step 1–2 for a file: parse its header, copy it into a spool as Part 10."""
        with open(path, "rb") as src:
            head = src.read(_HEAD)
            layout, offset = read_preamble_layout(head)
            parsed = self._parse(path)
            spool = self.store.spool()
            try:
                if layout == "part10":
                    # Zeros for the preamble: a PE header there would make the stored
                    # file a DICOM/executable polyglot (CVE-2019-11687).
                    spool.write(bytes(PREAMBLE))
                    spool.write(head[PREAMBLE:offset])
                elif layout == "no-preamble":
                    spool.write(bytes(128))
                    spool.write(head[:offset])
                else:
                    inst = parsed.record.instance
                    spool.write(
                        encode_file_meta(
                            inst.sop_class_uid, inst.sop_instance_uid, parsed.transfer_syntax_uid
                        )
                    )
                spool.mark_dataset_start()
                spool.write(head[offset:])
                while chunk := src.read(_CHUNK):
                    spool.write(chunk)
            except BaseException:
                spool.discard()
                raise
        return spool, parsed

    def _complete(
        self, spool: FileSpool, parsed: ParsedInstance, source_ae: str | None
    ) -> StoreResult:
        """Steps 3–5 of the life of an instance; consumes ``spool``."""
        return self._complete_async(spool, parsed, source_ae).result()

    def _complete_async(
        self, spool: FileSpool, parsed: ParsedInstance, source_ae: str | None
    ) -> Future[StoreResult]:
        """Steps 3–4 here, step 5 on the index writer (the future completes there)."""
        # storage.sync = "batch": placed only; the index writer's one syncfs in front
        # of its commit makes the whole batch durable. "blob": the file and its
        # directory are fsynced here, in parallel with the other receptions, not in
        # series with every commit on the writer.
        durable = not self.store.batch_sync
        prepared = self._place_checked(spool, parsed, source_ae, durable=durable)
        if isinstance(prepared, StoreResult):
            done: Future[StoreResult] = Future()
            done.set_result(prepared)
            return done
        return self.finalize_async(prepared, durable=durable)

    def _place_checked(
        self,
        spool: FileSpool,
        parsed: ParsedInstance,
        source_ae: str | None,
        *,
        durable: bool,
        journal: bytes | None = None,
    ) -> Prepared | StoreResult:
        """Check a fully spooled instance and put its blob in place (``durable``: and
        make it so here), or the :class:`StoreResult` when there is nothing to store.
        ``journal``: the blob's bytes, indexed with it (see :data:`JOURNAL_LIMIT`)."""
        check = self._check(spool, parsed, source_ae)
        if isinstance(check, StoreResult):
            return check
        try:
            name = spool.commit() if durable else spool.place()
        except BaseException:
            spool.discard()
            raise
        return check.prepared(name, journal)

    def _check(
        self, spool: FileSpool, parsed: ParsedInstance, source_ae: str | None
    ) -> _Checked | StoreResult:
        """Decide what a fully spooled instance needs, before anything is durable.

        Returns a :class:`StoreResult` (spool discarded) when nothing is to be written:
        the same data set is already stored, or policy keep-first keeps the old one.
        """
        record = parsed.record
        inst = record.instance
        policy = self.settings.storage.duplicates
        dataset_sha256 = spool.dataset_sha256()
        result = StoreResult(
            status=StoreStatus.STORED,
            sop_class_uid=inst.sop_class_uid,
            sop_instance_uid=inst.sop_instance_uid,
            study_instance_uid=record.study.study_instance_uid,
            series_instance_uid=record.series.series_instance_uid,
            transfer_syntax_uid=inst.transfer_syntax_uid,
            size=spool.size,
            warnings=record.warnings,
        )
        try:
            # One probe: re-sent instances get a cheap early answer (nothing is written
            # twice), rejected ones are refused (IHE IOCM).
            stored, rejected_by = self.index.ingest_probe(inst.sop_instance_uid)
            if rejected_by is not None:
                raise InstanceRejected(
                    f"rejected by KOS {rejected_by} (IOCM): SOP Instance UID "
                    f"{inst.sop_instance_uid} is not stored again",
                    rejected_by,
                )
            existing = self.index.lookup_instance(inst.sop_instance_uid) if stored else None
            if existing is not None:
                self._check_duplicate(
                    existing,
                    record.study.study_instance_uid,
                    record.series.series_instance_uid,
                    dataset_sha256,
                    policy,
                )
                if existing.dataset_sha256 == dataset_sha256:
                    self._apply_rejection(parsed)  # again: idempotent, finishes a failed one
                    spool.discard()
                    return dataclasses.replace(result, status=StoreStatus.DUPLICATE)
                if policy == "keep-first":
                    spool.discard()
                    return dataclasses.replace(result, status=StoreStatus.KEPT_FIRST)
            if (
                self.quota.active
                and self.settings.retention.quota_policy == "reject"
                and self.quota.would_exceed(spool.size)
            ):
                raise QuotaExceeded(
                    f"storage quota of {self.quota.quota_bytes} bytes reached "
                    "(retention.quota_bytes); instance not stored"
                )
            self._apply_rejection(parsed)
        except BaseException:
            spool.discard()
            raise
        return _Checked(spool, parsed, source_ae, policy, result, spool.sha256(), dataset_sha256)

    def _apply_rejection(self, parsed: ParsedInstance) -> None:
        """An IOCM rejection note (IHE RAD IOCM; PS3.16 CID 7011 title on a Key Object
        Selection Document) hides the instances it lists before it is itself stored;
        every other instance costs this one comparison."""
        if parsed.record.instance.sop_class_uid != KEY_OBJECT_SELECTION_DOCUMENT:
            return
        note = rejection_note(parsed.record)
        if note is not None:
            self.deletion.reject(note)

    def finalize(self, prepared: Prepared) -> StoreResult:
        """Steps 4–5: index the prepared instance (group commit), then answer."""
        return self.finalize_async(prepared).result()

    def finalize_async(self, prepared: Prepared, *, durable: bool = False) -> Future[StoreResult]:
        """:meth:`finalize` without blocking: the future completes after the commit.
        ``durable``: the blob is durable already (:meth:`FileSpool.commit`), so the
        index writer need not sync it (it does, once per batch, for the others)."""
        done: Future[StoreResult] = Future()

        def indexed(fut: Future[InsertOutcome]) -> None:
            try:
                outcome: InsertOutcome | BaseException = fut.result()
            except BaseException as exc:
                outcome = exc
            result = self._settle(prepared, outcome)
            if isinstance(result, BaseException):
                done.set_exception(result)
            else:
                done.set_result(result)

        self._writer.submit(prepared.pending, durable=durable).add_done_callback(indexed)
        return done

    def finalize_many(
        self, prepared: list[Prepared], done: Callable[[list[StoreResult | BaseException]], None]
    ) -> None:
        """Steps 3-5 for several prepared instances (:meth:`prepare_buffered`) together:
        the index writer makes their blobs durable and indexes them in its next batch,
        then calls ``done`` on its thread with each one's result or error, in order."""
        try:
            self._writer.submit_many([p.pending for p in prepared], self._settling(prepared, done))
        except BaseException as exc:  # the archive is closing: none will be indexed
            for p in prepared:
                self._settle(p, exc)
            raise

    def finalize_now(
        self, prepared: list[Prepared], done: Callable[[list[StoreResult | BaseException]], None]
    ) -> bool:
        """:meth:`finalize_many`, with the instances recorded on the calling thread and
        only the commit on another (:meth:`IndexWriter.write_now`), when every blob is
        journaled (the commit makes them durable; a ``syncfs`` first, measured on CT,
        gained nothing there) and that needs no waiting. ``False``: nothing was done,
        hand them to :meth:`finalize_many`."""
        if any(p.pending.journal is None for p in prepared):
            return False
        return self._writer.write_now([p.pending for p in prepared], self._settling(prepared, done))

    def _settling(
        self, prepared: list[Prepared], done: Callable[[list[StoreResult | BaseException]], None]
    ) -> Callable[[list[InsertOutcome | BaseException]], None]:
        """The index writer's callback for ``prepared``: settle each, then ``done``."""

        def indexed(outcomes: list[InsertOutcome | BaseException]) -> None:
            done([self._settle(p, o) for p, o in zip(prepared, outcomes, strict=True)])

        return indexed

    def _settle(
        self, prepared: Prepared, outcome: InsertOutcome | BaseException
    ) -> StoreResult | BaseException:
        """After the index writer's commit: remove what is no longer referenced, count
        the quota, and give the instance's result (or its error)."""
        name = prepared.pending.blob.name
        if isinstance(outcome, BaseException):
            # Not indexed: the blob must not stay (DESIGN.md step 5).
            try:
                self.store.delete(name)
            except OSError as exc:
                log.warning("could not remove the blob of an instance not indexed: %s", exc)
            return outcome
        if outcome.status is StoreStatus.STORED:
            self.quota.add(prepared.result.size)
        try:
            if outcome.new_blob_unused:
                self.store.delete(name)
            if outcome.replaced_blob is not None:
                # Only after the new one is indexed (a crash here leaves an orphan).
                self.store.delete(outcome.replaced_blob)
        except OSError as exc:
            log.warning("could not remove unused blob: %s", exc)
        if outcome.status is prepared.result.status:
            return prepared.result
        return dataclasses.replace(prepared.result, status=outcome.status)

    @staticmethod
    def _check_duplicate(
        existing: StoredInstance, study_uid: str, series_uid: str, digest: str, policy: str
    ) -> None:
        if existing.study_instance_uid != study_uid or existing.series_instance_uid != series_uid:
            raise HierarchyConflict(
                f"SOP Instance UID {existing.sop_instance_uid} is already stored in study "
                f"{existing.study_instance_uid}, series {existing.series_instance_uid}"
            )
        if existing.dataset_sha256 != digest and policy == "reject":
            raise DuplicateRejected(
                f"SOP Instance UID {existing.sop_instance_uid} is already stored with "
                "different content (duplicate policy: reject)"
            )

    # -- retrieve, delete, maintenance ------------------------------------------------

    def get_instance(self, sop_instance_uid: str) -> StoredInstance:
        found = self.index.lookup_instance(sop_instance_uid)
        if found is None:
            raise NotFound(f"no instance with SOP Instance UID {sop_instance_uid}")
        return found

    def open_instance(self, sop_instance_uid: str) -> BinaryIO:
        """The stored Part 10 bytes, as they were received."""
        return self.store.open(self.get_instance(sop_instance_uid).blob_name)

    def delete_instances(self, sop_instance_uids: list[str], *, force: bool = False) -> int:
        """Delete instances (see :class:`DeletionService`); unknown UIDs are skipped.
        Returns how many were deleted."""
        deleted = 0
        for uid in sop_instance_uids:
            try:
                deleted += self.deletion.delete(Selection("instance", uid), force=force).instances
            except NotFound:
                continue
        return deleted

    def delete_study(self, study_instance_uid: str, *, force: bool = False) -> int:
        """Delete a study; returns how many instances went.

        Raises
        ------
        NotFound, Protected
        """
        return self.deletion.delete(Selection("study", study_instance_uid), force=force).instances

    def delete_series(self, series_instance_uid: str, *, force: bool = False) -> int:
        """Delete a series; returns how many instances went.

        Raises
        ------
        NotFound, Protected
        """
        return self.deletion.delete(Selection("series", series_instance_uid), force=force).instances

    def stats(self) -> Stats:
        return self.index.stats()

    def check_health(self) -> None:
        """Raise when the archive cannot serve: the index does not answer a lookup, or
        the blob store's spool directory is not writable (disk read-only, unmounted).

        Raises
        ------
        IndexError_, OutOfResources
        """
        try:
            self.index.has_instance("0")
        except Exception as exc:  # any driver error means "not healthy"
            raise IndexError_(f"the index database does not answer: {exc}") from exc
        spool = self.store.root / ".tmp"
        if not os.access(spool, os.W_OK):
            raise OutOfResources(f"the blob store spool {spool} is not writable")

    # -- query (PS3.4 C.4.1 FIND, C.4.2.2.1 / C.4.3.2.1 retrieve selection) ------------

    def find(self, query: Query) -> FindResult:
        """The matches of a C-FIND, streamed; see :func:`dicomvault.archive.query.find`."""
        return _find(self, query)

    def retrieve_instances(self, query: Query) -> list[StoredInstance]:
        """The instances a C-MOVE / C-GET Identifier selects; see
        :func:`dicomvault.archive.query.retrieve_instances`."""
        return _retrieve_instances(self, query)

    def verify(self, *, repair: bool = False, progress: object = None) -> VerifyReport:
        return verify(self.index, self.store, repair=repair, progress=progress)  # type: ignore[arg-type]
