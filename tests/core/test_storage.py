from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from dicomvault.model.errors import NotFound
from dicomvault.storage import FileSystemBlobStore


def test_spool_commit_is_durable_and_named_by_us(tmp_path: Path) -> None:
    store = FileSystemBlobStore(tmp_path / "blobs")
    spool = store.spool()
    spool.write(b"meta")
    spool.mark_dataset_start()
    spool.write(b"dataset")
    name = spool.commit()
    assert spool.sha256() == hashlib.sha256(b"metadataset").hexdigest()
    assert spool.dataset_sha256() == hashlib.sha256(b"dataset").hexdigest()
    day, minute, leaf = name.split("/")
    assert len(day) == 8 and len(minute) == 4 and len(leaf) == 32
    with store.open(name) as f:
        assert f.read() == b"metadataset"
    assert store.read_range(name, 4, 3) == b"dat"
    assert store.size(name) == 11
    assert list(store.names()) == [name]
    assert not list((tmp_path / "blobs" / ".tmp").iterdir())
    store.delete(name)
    assert not store.exists(name)
    with pytest.raises(NotFound):
        store.open(name)


def test_discard_leaves_nothing(tmp_path: Path) -> None:
    store = FileSystemBlobStore(tmp_path / "blobs")
    spool = store.spool()
    spool.write(b"x" * 1000)
    spool.discard()
    spool.discard()
    assert list(store.names()) == []
    assert not list((tmp_path / "blobs" / ".tmp").iterdir())


@pytest.mark.parametrize(
    "name", ["../../etc/passwd", "20260101/1200/../../x", "/etc/passwd", "20260101/1200/EF"]
)
def test_names_never_escape_the_store(tmp_path: Path, name: str) -> None:
    store = FileSystemBlobStore(tmp_path / "blobs")
    with pytest.raises(ValueError, match="not a blob name"):
        store.open(name)


def test_stale_temp_removed(tmp_path: Path) -> None:
    store = FileSystemBlobStore(tmp_path / "blobs")
    spool = store.spool()
    spool.write(b"partial")
    old = spool.path
    os.utime(old, (1, 1))
    fresh = store.spool()
    fresh.write(b"in flight")
    assert store.remove_stale_temp(3600) == 1
    assert not old.exists() and fresh.path.exists()
    spool.discard()  # the crashed writer's handle; its file is already gone
    fresh.discard()


def test_deferred_hashing_matches_inline(tmp_path: Path) -> None:
    store = FileSystemBlobStore(tmp_path / "blobs")
    parts = [b"M" * 300, b"D" * (3 << 20), b"E" * 17]
    inline, deferred = store.spool(), store.spool(hash_inline=False)
    for spool in (inline, deferred):
        spool.write(parts[0])
        spool.mark_dataset_start()
        spool.write(parts[1])
        spool.write(parts[2])
    assert deferred.sha256() == inline.sha256() == hashlib.sha256(b"".join(parts)).hexdigest()
    assert deferred.dataset_sha256() == hashlib.sha256(parts[1] + parts[2]).hexdigest()
    assert inline.dataset_sha256() == deferred.dataset_sha256()
    inline.discard()
    deferred.discard()


def test_large_writes_hashed_on_threads_keep_their_order(tmp_path: Path) -> None:
    """Writes of PARALLEL_HASH_MIN bytes or more are hashed on hashing threads while the
    file is written; the digests must still be those of the bytes in order, inline and
    read back (where the data set starts inside a large chunk)."""
    from dicomvault.storage.filesystem import PARALLEL_HASH_MIN

    store = FileSystemBlobStore(tmp_path / "blobs")
    big = PARALLEL_HASH_MIN
    parts = [os.urandom(300), os.urandom(big), os.urandom(5), os.urandom(big * 2 + 7)]
    inline, deferred = store.spool(), store.spool(hash_inline=False)
    for spool in (inline, deferred):
        spool.write(parts[0])
        spool.mark_dataset_start()
        for part in parts[1:]:
            spool.write(bytearray(part))
    everything, dataset = b"".join(parts), b"".join(parts[1:])
    assert inline.sha256() == deferred.sha256() == hashlib.sha256(everything).hexdigest()
    assert inline.dataset_sha256() == hashlib.sha256(dataset).hexdigest()
    assert deferred.dataset_sha256() == hashlib.sha256(dataset).hexdigest()
    name = inline.commit()
    with store.open(name) as f:
        assert f.read() == everything
    deferred.discard()


def test_a_spool_without_overlap_hashes_large_writes_on_its_own_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``overlap=False`` (C-STORE data sets prepared several at once): the same digests,
    and no write goes to the hashing threads, however large."""
    from dicomvault.storage import filesystem

    def no_hashing_threads(*args: object) -> None:
        raise AssertionError("handed to the hashing threads")

    monkeypatch.setattr(filesystem, "_hash_beside", no_hashing_threads)
    store = FileSystemBlobStore(tmp_path / "blobs")
    meta, dataset = os.urandom(300), os.urandom(filesystem.PARALLEL_HASH_MIN * 2 + 3)
    spool = store.spool(overlap=False)
    spool.write(meta)
    spool.mark_dataset_start()
    spool.write(bytearray(dataset))
    assert spool.sha256() == hashlib.sha256(meta + dataset).hexdigest()
    assert spool.dataset_sha256() == hashlib.sha256(dataset).hexdigest()
    default = store.spool()
    with pytest.raises(AssertionError, match="hashing threads"):
        default.write(dataset)  # the default still overlaps
    default.discard()
    spool.discard()


def test_directory_fsync_is_shared_but_never_early(tmp_path: Path) -> None:
    """Threads needing the same directory durable share fsyncs (group commit), yet each
    returns only after an fsync that started after it asked; a failed fsync is the
    caller's error and the threads waiting on it run their own."""
    import threading
    import time

    from dicomvault.storage import filesystem

    syncs: list[tuple[float, float]] = []
    fail_first = [True]

    def slow_fsync(path: Path) -> None:
        start = time.monotonic()
        time.sleep(0.02)
        if fail_first[0]:
            fail_first[0] = False
            raise OSError(5, "I/O error")
        syncs.append((start, time.monotonic()))

    shared = filesystem._SharedSyncs()
    calls: list[tuple[float, float]] = []
    errors: list[OSError] = []

    def need(delay: float) -> None:
        time.sleep(delay)
        asked = time.monotonic()
        try:
            shared.sync(tmp_path, slow_fsync)
        except OSError as exc:
            errors.append(exc)
            return
        calls.append((asked, time.monotonic()))

    threads = [threading.Thread(target=need, args=(i * 0.004,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(errors) == 1 and len(calls) == 11
    for asked, returned in calls:
        assert any(asked <= start and end <= returned for start, end in syncs)
    assert len(syncs) < len(calls)  # shared: fewer fsyncs than callers
    assert shared._dirs == {}  # nothing kept once nobody waits


def _count_syncs(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count fsync(2) calls (files and directories) and syncfs(2) calls, still made."""
    from dicomvault.storage import filesystem

    counts = {"fsync": 0, "syncfs": 0}
    real_fsync, real_syncfs = os.fsync, filesystem._syncfs

    def fsync(fd: int) -> None:
        counts["fsync"] += 1
        real_fsync(fd)

    def syncfs(path: Path) -> None:
        counts["syncfs"] += 1
        real_syncfs(path)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(filesystem, "_syncfs", syncfs)
    return counts


def _placed(store: FileSystemBlobStore, count: int) -> list[str]:
    names = []
    for i in range(count):
        spool = store.spool()
        spool.write(b"blob %d" % i)
        names.append(spool.place())
    return names


def test_batch_sync_makes_placed_blobs_durable_with_one_syncfs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """storage.sync = "batch": placing writes and renames only; one syncfs then covers
    every placed blob, data and directory entries (no fsync at all)."""
    counts = _count_syncs(monkeypatch)
    store = FileSystemBlobStore(tmp_path / "blobs")
    assert store.batch_sync  # the default on Linux
    names = _placed(store, 3)
    assert counts == {"fsync": 0, "syncfs": 0}
    assert [store.read_range(n, 0, 100) for n in names] == [b"blob 0", b"blob 1", b"blob 2"]
    store.sync(names)
    assert counts == {"fsync": 0, "syncfs": 1}
    store.sync([])  # nothing placed: nothing to sync
    assert counts == {"fsync": 0, "syncfs": 1}
    spool = store.spool()
    spool.write(b"alone")
    spool.commit()  # commit = place + sync
    assert counts == {"fsync": 0, "syncfs": 2}


def test_blob_sync_fsyncs_every_file_and_each_directory_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counts = _count_syncs(monkeypatch)
    store = FileSystemBlobStore(tmp_path / "blobs", sync="blob")
    assert not store.batch_sync
    names = _placed(store, 3)
    assert counts == {"fsync": 3, "syncfs": 0}  # each file before its rename
    store.sync(names)
    directories = {n.rsplit("/", 1)[0] for n in names}
    assert counts == {"fsync": 3 + len(directories), "syncfs": 0}


def test_no_sync_at_all_with_fsync_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    counts = _count_syncs(monkeypatch)
    store = FileSystemBlobStore(tmp_path / "blobs", fsync=False)
    assert not store.batch_sync
    store.sync(_placed(store, 2))
    assert counts == {"fsync": 0, "syncfs": 0}


def test_syncfs_reports_errors(tmp_path: Path) -> None:
    from dicomvault.storage import filesystem

    filesystem._syncfs(tmp_path)  # the real call, on this test's filesystem
    with pytest.raises(FileNotFoundError):
        filesystem._syncfs(tmp_path / "absent")


def test_place_syncs_only_with_per_blob_fsyncs(tmp_path: Path) -> None:
    # The DIMSE event loop places small blobs itself only when that cannot wait for the
    # device (Archive.receives_inline).
    assert FileSystemBlobStore(tmp_path / "a", fsync=True, sync="blob").place_syncs
    assert not FileSystemBlobStore(tmp_path / "b", fsync=True, sync="batch").place_syncs
    assert not FileSystemBlobStore(tmp_path / "c", fsync=False, sync="blob").place_syncs
