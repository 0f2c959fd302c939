"""Bulk import from disk: folders (recursively), zip files and DICOMDIR media.

A DICOMDIR is the medium's index (PS3.10 8.6), never an instance: when named directly,
the files it references are imported; met while walking a folder it is skipped (the walk
finds the referenced files anyway).
"""

from __future__ import annotations

import functools
import itertools
import multiprocessing
import os
import signal
import sys
import threading
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import (
    FIRST_COMPLETED,
    Future,
    ProcessPoolExecutor,
    wait,
)
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from dicomvault.archive.archive import Archive, Prepared
from dicomvault.config import Settings
from dicomvault.dicom.dicomdir import dicomdir_references, is_dicomdir
from dicomvault.model.errors import InvalidInstance, NotDicom, OutOfResources
from dicomvault.model.records import StoreResult, StoreStatus
from dicomvault.parent import stop_with_parent


@dataclass(frozen=True)
class Source:
    """One thing to import: a file, or a member of a zip file."""

    path: Path
    member: str | None = None

    def __str__(self) -> str:
        return f"{self.path}!{self.member}" if self.member else str(self.path)


@dataclass
class ImportReport:
    stored: int = 0
    duplicate: int = 0
    overwritten: int = 0
    kept_first: int = 0
    not_dicom: int = 0
    dicomdir: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)
    failed: list[tuple[str, str]] = field(default_factory=list)  # archive-side failures
    warnings: list[tuple[str, str]] = field(default_factory=list)
    not_attempted: int = 0
    bytes: int = 0
    stopped: str | None = None  # why the import stopped early (disk full)

    @property
    def ok(self) -> bool:
        return not (self.rejected or self.failed or self.stopped)

    def as_dict(self) -> dict[str, object]:
        return {
            "stored": self.stored,
            "duplicate": self.duplicate,
            "overwritten": self.overwritten,
            "kept_first": self.kept_first,
            "not_dicom": self.not_dicom,
            "dicomdir": self.dicomdir,
            "rejected": [{"source": s, "reason": r} for s, r in self.rejected],
            "failed": [{"source": s, "reason": r} for s, r in self.failed],
            "warnings": [{"source": s, "warning": w} for s, w in self.warnings],
            "not_attempted": self.not_attempted,
            "bytes": self.bytes,
            "stopped": self.stopped,
        }


def _walk(path: Path) -> Iterator[Path]:
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                yield Path(root) / name
    else:
        yield path


def discover(paths: list[Path]) -> Iterator[Source | tuple[Source, str]]:
    """Yield every source to import, or ``(source, kind)`` for ones to skip and count.

    Raises
    ------
    FileNotFoundError
        A path named on the command line does not exist.
    """
    for top in paths:
        if not top.exists():
            raise FileNotFoundError(f"{top}: no such file or directory")
        named_directly = top.is_file()
        for path in _walk(top):
            if path.name.startswith(".") and not named_directly:
                continue
            if zipfile.is_zipfile(path) and path.suffix.lower() == ".zip":
                with zipfile.ZipFile(path) as zf:
                    for info in zf.infolist():
                        if not info.is_dir():
                            yield Source(path, info.filename)
            elif is_dicomdir(path):
                if named_directly:
                    for ref in dicomdir_references(path):
                        yield Source(ref)
                else:
                    yield (Source(path), "dicomdir")
            else:
                yield Source(path)


_worker_archive: Archive | None = None
#: Files per worker task: fewer inter-process round trips, larger index group commits.
_CHUNK = 8
#: Fewer files than this are imported in this process, without workers.
_PROCESS_POOL_FROM = 32


def _worker_init(settings: Settings) -> None:
    global _worker_archive
    # The parent's Ctrl-C reaches the whole process group; the parent handles it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop_with_parent()  # a killed import leaves no idle workers behind
    _worker_archive = Archive.open(settings, recover_on_start=False, helper=True)


def _prepare(sources: list[Source]) -> list[Prepared | StoreResult | Exception]:
    """Runs in a worker process: everything but the index transaction, for a chunk of
    files (one round trip, one journal commit, and the writer gets them together)."""
    archive = _worker_archive
    assert archive is not None
    with ExitStack() as stack:
        paths: list[Path] = []
        for source in sources:
            if source.member is None:
                paths.append(source.path)
                continue
            zf = stack.enter_context(zipfile.ZipFile(source.path))
            with zf.open(source.member) as member:
                paths.append(stack.enter_context(archive.temp_copy(member)))
        return archive.prepare_many(paths)


def _deliver(
    finished: Callable[[Source, StoreResult | Exception], None],
    source: Source,
    fut: Future[StoreResult],
) -> None:
    error = fut.exception()
    finished(source, error if isinstance(error, Exception) else fut.result())


def import_paths(
    archive: Archive,
    paths: list[Path],
    *,
    workers: int | None = None,
    on_discovered: Callable[[int], None] | None = None,
    on_done: Callable[[Source, StoreResult | Exception], None] | None = None,
) -> ImportReport:
    """Import every file under ``paths`` into ``archive``; never raises for one bad file.

    Worker processes (one per core by default) copy, hash, parse and make each blob
    durable; this process only indexes, through the archive's group-commit writer, so
    Python's GIL is not shared between parsing and indexing.
    """
    report = ImportReport()
    lock = threading.Lock()
    workers = workers or max(2, os.cpu_count() or 2)
    stop = threading.Event()

    def record(source: Source, outcome: StoreResult | Exception) -> None:
        with lock:
            if isinstance(outcome, StoreResult):
                report.bytes += outcome.size
                if outcome.status is StoreStatus.STORED:
                    report.stored += 1
                elif outcome.status is StoreStatus.DUPLICATE:
                    report.duplicate += 1
                elif outcome.status is StoreStatus.OVERWRITTEN:
                    report.overwritten += 1
                else:
                    report.kept_first += 1
                report.warnings.extend((str(source), w) for w in outcome.warnings)
            elif isinstance(outcome, NotDicom):
                report.not_dicom += 1
            elif isinstance(outcome, InvalidInstance):
                report.rejected.append((str(source), str(outcome)))
            elif isinstance(outcome, OutOfResources):
                report.failed.append((str(source), str(outcome)))
                report.stopped = str(outcome)
                stop.set()
            else:
                report.failed.append((str(source), f"{type(outcome).__name__}: {outcome}"))
        if on_done is not None:
            on_done(source, outcome)

    # Look ahead: a handful of files is stored here, in this process — worker processes
    # cost a Python start-up each and their memory, worth it only for many files.
    def counted() -> Iterator[Source]:
        for item in discover(paths):
            if isinstance(item, tuple):
                report.dicomdir += 1
                continue
            if on_discovered is not None:
                on_discovered(1)
            yield item

    sources = counted()
    ahead = list(itertools.islice(sources, _PROCESS_POOL_FROM))

    def remaining() -> Iterator[Source]:
        yield from ahead
        yield from sources

    if workers == 1 or len(ahead) < _PROCESS_POOL_FROM:
        for item in remaining():
            if stop.is_set():
                report.not_attempted += 1
                continue
            try:
                outcome: StoreResult | Exception = _store(archive, item)
            except Exception as exc:
                outcome = exc
            record(item, outcome)
        return report

    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_worker_init,
        initargs=(archive.settings,),
    )
    # This process only moves results from the workers to the index writer; a short GIL
    # switch interval keeps the writer from waiting 5 ms behind the result thread.
    previous_interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    pending: set[Future[None]] = set()

    def chain(
        sources: list[Source],
        done: Future[None],
        prepared: Future[list[Prepared | StoreResult | Exception]],
    ) -> None:
        remaining = [len(sources)]
        count = threading.Lock()

        def finished(source: Source, outcome: StoreResult | Exception) -> None:
            record(source, outcome)
            with count:
                remaining[0] -= 1
                last = remaining[0] == 0
            if last:
                done.set_result(None)

        try:
            results = prepared.result()
        except Exception as exc:  # a worker process died
            results = [exc] * len(sources)
        for source, result in zip(sources, results, strict=True):
            if not isinstance(result, Prepared):
                finished(source, result)
                continue
            archive.finalize_async(result).add_done_callback(
                functools.partial(_deliver, finished, source)
            )

    def submit(chunk: list[Source]) -> None:
        nonlocal pending
        done: Future[None] = Future()
        pending.add(done)
        pool.submit(_prepare, chunk).add_done_callback(functools.partial(chain, chunk, done))
        if len(pending) >= workers * 3:  # bounded: memory flat for huge trees
            _, pending = wait(pending, return_when=FIRST_COMPLETED)

    try:
        chunk: list[Source] = []
        for item in remaining():
            if stop.is_set():
                with lock:
                    report.not_attempted += 1
                continue
            chunk.append(item)
            if len(chunk) >= _CHUNK:
                submit(chunk)
                chunk = []
        if chunk:
            submit(chunk)
        wait(pending)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        sys.setswitchinterval(previous_interval)
    return report


def _store(archive: Archive, source: Source) -> StoreResult:
    if source.member is None:
        return archive.store_file(source.path)
    with zipfile.ZipFile(source.path) as zf, zf.open(source.member) as member:
        return archive.store_stream(member)
