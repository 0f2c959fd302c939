"""The blob journal: a small received blob is durable through the index commit that
holds its bytes; its file is flushed later and mended from the journal after a power
cut (README, "How an instance is stored")."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom import dcmread

from dicomvault.archive import Archive, Prepared
from dicomvault.config import Settings
from dicomvault.model.records import StoreResult, StoreStatus
from tests.core.dicomfiles import dataset_bytes, make_dataset, write_part10
from tests.core.receiving import finalize_together, prepare


def _receive(archive: Archive, paths: list[Path]) -> list[StoreResult | BaseException]:
    prepared = [prepare(archive, path) for path in paths]
    assert all(isinstance(p, Prepared) for p in prepared), prepared
    return finalize_together(archive, prepared)  # type: ignore[arg-type]


def _journal(settings: Settings) -> list[tuple[str, bytes]]:
    with sqlite3.connect(settings.storage.path / "index.sqlite3") as db:
        return [(n, bytes(d)) for n, d in db.execute("SELECT blob_name, data FROM blob_journal")]


def _files(tmp_path: Path, count: int) -> list[Path]:
    return [write_part10(make_dataset(), tmp_path / f"in{i}.dcm") for i in range(count)]


def test_a_small_received_blob_is_durable_with_its_row_and_flushed_later(
    sqlite_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dicomvault.storage import filesystem

    syncs: list[int] = []
    real = filesystem._syncfs

    def syncfs(path: Path) -> None:
        syncs.append(len(_journal(sqlite_settings)))  # rows still there when it runs
        real(path)

    monkeypatch.setattr(filesystem, "_syncfs", syncfs)
    with Archive.open(sqlite_settings) as archive:
        results = _receive(archive, _files(tmp_path, 3))
        assert [r.status for r in results] == [StoreStatus.STORED] * 3  # type: ignore[union-attr]
        # Answered without a syncfs: the commit holding row and bytes was the one flush.
        assert syncs == []
        journal = dict(_journal(sqlite_settings))
        for result in results:
            stored = archive.get_instance(result.sop_instance_uid)  # type: ignore[union-attr]
            with archive.store.open(stored.blob_name) as f:
                assert journal[stored.blob_name] == f.read()
        # Idle: one syncfs for all three files, then their rows go.
        deadline = time.monotonic() + 10
        while _journal(sqlite_settings) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert syncs == [3]
        assert _journal(sqlite_settings) == []


def test_duplicates_large_blobs_and_postgresql_are_not_journaled(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dicomvault.archive import writer

    monkeypatch.setattr(writer, "JOURNAL_IDLE", 60.0)  # keep what is journaled in sight
    small = _files(tmp_path, 1)[0]
    again = tmp_path / "again.dcm"  # the same instance, in the same batch
    again.write_bytes(small.read_bytes())
    big = make_dataset()
    big.Rows, big.Columns = 256, 160
    big.PixelData = bytes(256 * 160 * 2)  # 80 KiB: past JOURNAL_LIMIT
    large = write_part10(big, tmp_path / "large.dcm")
    with Archive.open(settings) as archive:
        stored = _receive(archive, [small, again, large])
        assert [r.status for r in stored] == [  # type: ignore[union-attr]
            StoreStatus.STORED,
            StoreStatus.DUPLICATE,
            StoreStatus.STORED,
        ]
        if archive.index.is_sqlite:
            small_blob = archive.get_instance(dcmread(small).SOPInstanceUID).blob_name
            assert [name for name, _ in _journal(settings)] == [small_blob]
        else:
            assert archive.index.journal_mark() == 0  # a remote index: syncfs per batch


_CRASHING_RECEIVER = """
import os, sys, threading
from pathlib import Path
from dicomvault.archive import Archive, writer
from dicomvault.config import load_settings
from tests.core.test_blob_journal import _receive
writer.JOURNAL_IDLE = 60.0  # the files are never flushed: as if the power went first
archive = Archive.open(load_settings(None, {"storage": {"path": sys.argv[1]}}))
results = _receive(archive, [Path(p) for p in sys.argv[3:]])
archive.delete_instances([results[-1].sop_instance_uid])  # deleted: must not come back
Path(sys.argv[2]).write_text(
    "\\n".join(archive.get_instance(r.sop_instance_uid).blob_name for r in results[:-1])
)
os._exit(0)
"""


def test_recovery_rewrites_received_files_a_power_cut_lost(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    """Success was answered once the commit with the journal was durable; a power cut
    can still take files that were only in the page cache. Start-up rewrites them from
    the journal, byte for byte, and brings nothing deleted back."""
    data = sqlite_settings.storage.path
    sent = _files(tmp_path, 4)
    names_file = tmp_path / "names"
    done = subprocess.run(
        [sys.executable, "-c", _CRASHING_RECEIVER, str(data), str(names_file), *map(str, sent)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr
    names = names_file.read_text().split()
    assert len(_journal(sqlite_settings)) == 4  # the deleted one's row too
    blobs = data / "blobs"
    (blobs / names[0]).unlink()  # never reached the disk
    (blobs / names[1]).write_bytes((blobs / names[1]).read_bytes()[:100])  # partly
    with Archive.open(sqlite_settings) as archive:
        assert _journal(sqlite_settings) == []
        report = archive.verify()
        assert report.consistent and report.checked == 3
        for path, name in zip(sent[:-1], names, strict=True):
            stored = archive.get_instance(dcmread(path).SOPInstanceUID)
            assert stored.blob_name == name
            with archive.store.open(name) as f:
                assert f.read()[-len(dataset_bytes(path)) :] == dataset_bytes(path)
        assert archive.stats().instances == 3
        assert len(list(archive.store.names())) == 3


def test_journal_keys_are_never_reused(sqlite_settings: Settings, tmp_path: Path) -> None:
    """A flush drops the rows up to the key it read before its syncfs (another process
    may flush meanwhile): a key handed out after an emptied journal must be higher."""
    with Archive.open(sqlite_settings) as archive:
        _receive(archive, _files(tmp_path, 2))
        first = archive.index.journal_mark()
        archive.index.journal_forget(first)
        assert archive.index.journal_mark() == 0
        _receive(archive, [write_part10(make_dataset(), tmp_path / "later.dcm")])
        assert archive.index.journal_mark() > first
