"""A batch of journaled blobs recorded on the caller's thread (the DIMSE event loop) and
committed on the commit thread (``index/ingest_now.py``), or declined — nothing
written — whenever that would mean waiting, so the writer thread takes it."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from dicomvault.archive import Archive, Prepared
from dicomvault.config import Settings
from dicomvault.index import ingest_now
from dicomvault.index.ingest import Sql
from dicomvault.model.records import StoreResult, StoreStatus
from tests.core.dicomfiles import make_dataset, write_part10
from tests.core.receiving import prepare


class _Done:
    """A ``done`` callback: the results, and the thread they came on."""

    def __init__(self) -> None:
        self.results: list[StoreResult | BaseException] = []
        self.thread = ""
        self.calls = 0
        self._event = threading.Event()

    def __call__(self, results: list[StoreResult | BaseException]) -> None:
        self.results = results
        self.thread = threading.current_thread().name
        self.calls += 1
        self._event.set()

    def wait(self) -> _Done:
        assert self._event.wait(30)
        return self


def _prepared(archive: Archive, tmp_path: Path, count: int) -> list[Prepared]:
    out = []
    for i in range(count):
        path = write_part10(make_dataset(), tmp_path / f"in{time.monotonic_ns()}-{i}.dcm")
        prepared = prepare(archive, path)
        assert isinstance(prepared, Prepared)
        out.append(prepared)
    return out


def _indexed(settings: Settings) -> int:
    with sqlite3.connect(settings.storage.path / "index.sqlite3") as db:
        (count,) = db.execute("SELECT count(*) FROM instances").fetchone()
    return int(count)


def _journal_rows(settings: Settings) -> int:
    with sqlite3.connect(settings.storage.path / "index.sqlite3") as db:
        (count,) = db.execute("SELECT count(*) FROM blob_journal").fetchone()
    return int(count)


def test_a_journaled_batch_is_recorded_here_and_committed_on_the_commit_thread(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    with Archive.open(sqlite_settings) as archive:
        prepared = _prepared(archive, tmp_path, 3)
        done = _Done()
        assert archive.finalize_now(prepared, done)
        done.wait()
        assert done.thread == "index-commit"
        assert [r.status for r in done.results] == [StoreStatus.STORED] * 3  # type: ignore[union-attr]
        for p in prepared:
            stored = archive.get_instance(p.result.sop_instance_uid)
            assert stored.blob_name == p.pending.blob.name
        assert _journal_rows(sqlite_settings) == 3
        # Idle: the writer thread flushes the files and drops the rows, as for its own.
        deadline = time.monotonic() + 10
        while _journal_rows(sqlite_settings) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _journal_rows(sqlite_settings) == 0


def test_another_process_writing_makes_it_decline(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    with Archive.open(sqlite_settings) as archive:
        prepared = _prepared(archive, tmp_path, 2)
        # Another open file description, as another process has: its flock excludes.
        fd = os.open(sqlite_settings.storage.path / "index.sqlite3-writer.lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            assert not archive.finalize_now(prepared, _Done())
            assert _indexed(sqlite_settings) == 0
        finally:
            os.close(fd)
        done = _Done()
        assert archive.finalize_now(prepared, done)
        assert [r.status for r in done.wait().results] == [StoreStatus.STORED] * 2  # type: ignore[union-attr]


def test_another_connection_writing_makes_it_decline_without_waiting(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    with Archive.open(sqlite_settings) as archive:
        prepared = _prepared(archive, tmp_path, 1)
        other = sqlite3.connect(
            sqlite_settings.storage.path / "index.sqlite3", isolation_level=None
        )
        try:
            other.execute("BEGIN IMMEDIATE")
            started = time.monotonic()
            assert not archive.finalize_now(prepared, _Done())
            assert time.monotonic() - started < 1  # SQLite's busy handler did not sleep
            other.execute("COMMIT")
        finally:
            other.close()
        done = _Done()
        assert archive.finalize_now(prepared, done)
        assert done.wait().results[0].status is StoreStatus.STORED  # type: ignore[union-attr]


def test_a_failing_commit_hands_the_batch_to_the_writer_thread(
    sqlite_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Sql.run

    def run(self: Sql, sql: str, params: tuple[object, ...] = ()) -> None:
        if sql == "COMMIT" and threading.current_thread().name == "index-commit":
            raise sqlite3.OperationalError("disk I/O error")
        real(self, sql, params)

    monkeypatch.setattr(Sql, "run", run)
    with Archive.open(sqlite_settings) as archive:
        prepared = _prepared(archive, tmp_path, 2)
        done = _Done()
        assert archive.finalize_now(prepared, done)
        done.wait()
        time.sleep(0.1)  # a second answer would come now
        assert done.calls == 1
        assert done.thread == "index-writer"
        assert [r.status for r in done.results] == [StoreStatus.STORED] * 2  # type: ignore[union-attr]
        assert _indexed(sqlite_settings) == 2


def test_failing_statements_leave_nothing_written_and_the_next_batch_goes_ahead(
    sqlite_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = ingest_now.Batch.record_all
    with Archive.open(sqlite_settings) as archive:
        prepared = _prepared(archive, tmp_path, 2)

        def broken(self: ingest_now.Batch, items: object) -> None:
            real(self, items)  # type: ignore[arg-type]  # written, then it fails
            raise RuntimeError("a bug")

        monkeypatch.setattr(ingest_now.Batch, "record_all", broken)
        assert not archive.finalize_now(prepared, _Done())
        assert _indexed(sqlite_settings) == 0  # rolled back
        monkeypatch.setattr(ingest_now.Batch, "record_all", real)
        done = _Done()
        assert archive.finalize_now(prepared, done)
        assert [r.status for r in done.wait().results] == [StoreStatus.STORED] * 2  # type: ignore[union-attr]


def test_large_blobs_are_not_recorded_here(sqlite_settings: Settings, tmp_path: Path) -> None:
    big = make_dataset()
    big.Rows, big.Columns = 256, 160
    big.PixelData = bytes(256 * 160 * 2)  # 80 KiB: past JOURNAL_LIMIT, a syncfs is needed
    with Archive.open(sqlite_settings) as archive:
        prepared = prepare(archive, write_part10(big, tmp_path / "big.dcm"))
        assert isinstance(prepared, Prepared) and prepared.pending.journal is None
        assert not archive.finalize_now([prepared], _Done())


def test_closing_the_archive_lets_the_commits_in_flight_finish(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    archive = Archive.open(sqlite_settings)
    dones = []
    for _ in range(5):
        done = _Done()
        if archive.finalize_now(_prepared(archive, tmp_path, 2), done):
            dones.append(done)
    archive.close()
    assert dones
    for done in dones:
        assert done.calls == 1
        assert [r.status for r in done.results] == [StoreStatus.STORED] * 2  # type: ignore[union-attr]
    assert _indexed(sqlite_settings) == 2 * len(dones)


def test_a_connection_that_cannot_be_had_makes_it_decline_and_frees_the_locks(
    sqlite_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Archive.open(sqlite_settings) as archive:
        prepared = _prepared(archive, tmp_path, 1)
        now = archive.index.now
        assert now is not None

        def no_connection() -> Sql:
            raise RuntimeError("unable to open database file")

        monkeypatch.setattr(now, "_connection", no_connection)
        assert not archive.finalize_now(prepared, _Done())
        # The writer flock is free again: another process's writer could take it.
        fd = os.open(sqlite_settings.storage.path / "index.sqlite3-writer.lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        monkeypatch.undo()
        done = _Done()
        assert archive.finalize_now(prepared, done)
        assert done.wait().results[0].status is StoreStatus.STORED  # type: ignore[union-attr]
