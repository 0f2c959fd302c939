"""Ingest, duplicates, bad input, recovery and verify — on every index backend."""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from pathlib import Path

import pytest
from pydicom import dcmread

from dicomvault.archive import Archive, Prepared
from dicomvault.config import Settings
from dicomvault.model.errors import (
    CannotParse,
    DicomVaultError,
    DuplicateRejected,
    HierarchyConflict,
    InvalidUID,
    MissingAttribute,
    NotDicom,
    OutOfResources,
    UIDMismatch,
)
from dicomvault.model.records import StoreResult, StoreStatus
from tests.core.dicomfiles import bundled, dataset_bytes, make_dataset, write_bare, write_part10
from tests.core.receiving import finalize_together, prepare


def blobs(archive: Archive) -> list[str]:
    return list(archive.store.names())


def temp_files(archive: Archive) -> list[Path]:
    return list((archive.store.root / ".tmp").iterdir())


def assert_nothing_left(archive: Archive) -> None:
    assert blobs(archive) == []
    assert temp_files(archive) == []
    assert archive.stats().instances == 0


def test_store_part10_byte_for_byte(archive: Archive) -> None:
    src = bundled("CT_small.dcm")
    result = archive.store_file(src, source_ae="CT1")
    assert result.status is StoreStatus.STORED
    ds = dcmread(src, stop_before_pixels=True)
    assert result.sop_instance_uid == ds.SOPInstanceUID
    with archive.open_instance(ds.SOPInstanceUID) as f:
        stored_bytes = f.read()
    # Byte for byte after the preamble, which is stored as zeros (CT_small's holds a
    # TIFF header; a PE header there would make a polyglot, CVE-2019-11687).
    assert src.read_bytes()[:128] != bytes(128)
    assert stored_bytes == bytes(128) + src.read_bytes()[128:]
    stored = archive.get_instance(ds.SOPInstanceUID)
    assert stored.size == src.stat().st_size
    stats = archive.stats()
    assert (stats.patients, stats.studies, stats.series, stats.instances) == (1, 1, 1, 1)
    row = archive.index.row("instances", sop_instance_uid=ds.SOPInstanceUID)
    assert row is not None and row["source_ae"] == "CT1"
    assert '"BulkDataURI"' in row["metadata_json"]  # pixel data is not in the index
    assert len(row["metadata_json"]) < 20_000


def test_identical_resend_writes_nothing(archive: Archive) -> None:
    src = bundled("CT_small.dcm")
    archive.store_file(src)
    before = blobs(archive)
    assert archive.store_file(src).status is StoreStatus.DUPLICATE
    assert blobs(archive) == before and temp_files(archive) == []


def test_overwrite_replaces_blob_after_indexing(archive: Archive, tmp_path: Path) -> None:
    ds = make_dataset(sop_instance_uid="1.2.3.4.5")
    first = write_part10(ds, tmp_path / "a.dcm")
    archive.store_file(first)
    old = blobs(archive)
    ds.PatientName = "Changed^Name"
    second = write_part10(ds, tmp_path / "b.dcm")
    assert archive.store_file(second).status is StoreStatus.OVERWRITTEN
    assert len(blobs(archive)) == 1 and blobs(archive) != old
    with archive.open_instance("1.2.3.4.5") as f:
        assert f.read() == second.read_bytes()


@pytest.mark.parametrize("policy", ["reject", "keep-first"])
def test_duplicate_policies(settings: Settings, tmp_path: Path, policy: str) -> None:
    settings.storage.duplicates = policy  # type: ignore[assignment]
    with Archive.open(settings) as archive:
        ds = make_dataset(sop_instance_uid="1.2.3.4.6")
        archive.store_file(write_part10(ds, tmp_path / "a.dcm"))
        ds.PatientName = "Other"
        other = write_part10(ds, tmp_path / "b.dcm")
        if policy == "reject":
            with pytest.raises(DuplicateRejected):
                archive.store_file(other)
        else:
            assert archive.store_file(other).status is StoreStatus.KEPT_FIRST
        assert len(blobs(archive)) == 1 and temp_files(archive) == []
        with archive.open_instance("1.2.3.4.6") as f:
            assert f.read() == (tmp_path / "a.dcm").read_bytes()


def test_same_uid_in_another_study_is_rejected(archive: Archive, tmp_path: Path) -> None:
    archive.store_file(write_part10(make_dataset(sop_instance_uid="1.2.3.4.7"), tmp_path / "a.dcm"))
    moved = make_dataset(sop_instance_uid="1.2.3.4.7", study="1.2.99", series="1.2.99.1")
    with pytest.raises(HierarchyConflict, match="already stored in study"):
        archive.store_file(write_part10(moved, tmp_path / "b.dcm"))
    assert len(blobs(archive)) == 1 and temp_files(archive) == []


def test_no_preamble_and_no_meta_are_stored_as_part10(archive: Archive, tmp_path: Path) -> None:
    ds = make_dataset(sop_instance_uid="1.2.3.4.8")
    part10 = write_part10(ds, tmp_path / "full.dcm")
    no_preamble = tmp_path / "nopre.dcm"
    no_preamble.write_bytes(part10.read_bytes()[128:])
    archive.store_file(no_preamble)
    with archive.open_instance("1.2.3.4.8") as f:
        assert f.read() == part10.read_bytes()  # preamble added, nothing else changed

    bare_ds = make_dataset(sop_instance_uid="1.2.3.4.9")
    bare = write_bare(bare_ds, tmp_path / "bare.dcm", implicit=True)
    result = archive.store_file(bare)
    assert result.transfer_syntax_uid == "1.2.840.10008.1.2"
    stored = archive.store.root / archive.get_instance("1.2.3.4.9").blob_name
    again = dcmread(stored)
    assert again.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    assert again.file_meta.MediaStorageSOPInstanceUID == "1.2.3.4.9"
    assert dataset_bytes(stored) == bare.read_bytes()  # the data set byte for byte


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, type[Exception], str]]:
    out: dict[str, tuple[Path, type[Exception], str]] = {}
    text = tmp_path / "notes.txt"
    text.write_text("this is not DICOM\n" * 20)
    out["not dicom"] = (text, NotDicom, "")
    good = write_part10(make_dataset(), tmp_path / "good.dcm").read_bytes()
    trunc = tmp_path / "trunc.dcm"
    trunc.write_bytes(good[:300])
    out["truncated"] = (trunc, CannotParse, "")
    ds = make_dataset()
    del ds.SOPInstanceUID
    out["missing SOP Instance UID"] = (
        write_bare(ds, tmp_path / "nouid.dcm", implicit=False),
        MissingAttribute,
        "(0008,0018)",
    )
    for label, uid in [
        ("letters", "1.2.abc"),
        ("too long", "1." * 40 + "1"),
        ("path", "../../etc/x"),
    ]:
        ds = make_dataset(sop_instance_uid=uid)
        out[label] = (write_bare(ds, tmp_path / f"{label}.dcm", implicit=False), InvalidUID, "")
    return out


def test_bad_input_is_rejected_and_nothing_is_left(archive: Archive, tmp_path: Path) -> None:
    for label, (path, error, needle) in _bad_files(tmp_path).items():
        with pytest.raises(error) as info:
            archive.store_file(path)
        message = str(info.value)
        assert message and "\n" not in message, label
        assert needle in message, (label, message)
    assert_nothing_left(archive)
    for p in tmp_path.glob("*.dcm"):  # no UID ever becomes a path
        assert not (archive.store.root / "etc").exists(), p


def test_unknown_charset_is_stored_with_a_warning(archive: Archive, tmp_path: Path) -> None:
    ds = make_dataset(charset="ISO_IR 999", name="Strange^Name")
    result = archive.store_file(write_part10(ds, tmp_path / "cs.dcm"))
    assert result.status is StoreStatus.STORED
    assert any("ISO_IR 999" in w for w in result.warnings)


def test_receive_stream(archive: Archive) -> None:
    src = bundled("CT_small.dcm")
    ds = dcmread(src, stop_before_pixels=True)
    data = dataset_bytes(src)
    rx = archive.begin_receive(
        sop_class_uid=ds.SOPClassUID,
        sop_instance_uid=ds.SOPInstanceUID,
        transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
        source_ae="SCU",
    )
    for i in range(0, len(data), 1000):
        rx.write(memoryview(data)[i : i + 1000])
    result = rx.finish()
    assert result.status is StoreStatus.STORED
    stored = archive.store.root / archive.get_instance(ds.SOPInstanceUID).blob_name
    assert dataset_bytes(stored) == data


def test_stale_file_meta_is_stored_with_a_warning(archive: Archive, tmp_path: Path) -> None:
    """Anonymisers often change the data set's UIDs and leave the file meta: the data set
    is authoritative, the bytes are kept, and the mismatch is reported."""
    ds = make_dataset(sop_instance_uid="1.2.3.4.10")
    path = write_part10(ds, tmp_path / "stale.dcm")
    raw = path.read_bytes().replace(b"1.2.3.4.10", b"1.2.3.4.11", 1)  # the meta's copy
    path.write_bytes(raw)
    result = archive.store_file(path)
    assert result.sop_instance_uid == "1.2.3.4.10"
    assert any("Media Storage SOP Instance UID" in w for w in result.warnings)
    with archive.open_instance("1.2.3.4.10") as f:
        assert f.read() == raw


def test_receive_mismatch_and_abort(archive: Archive) -> None:
    src = bundled("CT_small.dcm")
    ds = dcmread(src, stop_before_pixels=True)
    data = dataset_bytes(src)
    rx = archive.begin_receive(
        sop_class_uid=ds.SOPClassUID,
        sop_instance_uid="1.2.3.999",
        transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
    )
    rx.write(data)
    with pytest.raises(UIDMismatch):
        rx.finish()
    rx = archive.begin_receive(
        sop_class_uid=ds.SOPClassUID,
        sop_instance_uid=ds.SOPInstanceUID,
        transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
    )
    rx.write(data[:500])
    rx.abort()
    assert_nothing_left(archive)


def test_blobs_are_durable_before_the_commit_that_indexes_them(
    archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """storage.sync = "batch" (the default): the index writer's syncfs runs in front of
    the commit that makes the instance findable (DESIGN.md steps 3-4)."""
    from dicomvault.storage import filesystem

    findable_at_sync: list[bool] = []
    real = filesystem._syncfs

    def syncfs(path: Path) -> None:
        findable_at_sync.append(archive.index.ingest_probe("1.2.7.1")[0])
        real(path)
        time.sleep(0.2)  # the writer's INSERTs run meanwhile, and must wait to commit
        findable_at_sync.append(archive.index.ingest_probe("1.2.7.1")[0])

    monkeypatch.setattr(filesystem, "_syncfs", syncfs)
    src = write_part10(make_dataset(sop_instance_uid="1.2.7.1"), tmp_path / "a")
    assert archive.store_file(src).status is StoreStatus.STORED
    assert findable_at_sync == [False, False]
    assert archive.index.ingest_probe("1.2.7.1")[0]


@pytest.mark.parametrize(
    ("code", "error", "message"),
    [
        (errno.ENOSPC, OutOfResources, "storage full while committing"),
        (errno.EIO, OSError, "Input/output error"),
    ],
)
def test_a_failed_syncfs_fails_the_store_and_leaves_nothing(
    archive: Archive,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    code: int,
    error: type[Exception],
    message: str,
) -> None:
    from dicomvault.storage import filesystem

    def syncfs(path: Path) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(filesystem, "_syncfs", syncfs)
    src = write_part10(make_dataset(sop_instance_uid="1.2.7.2"), tmp_path / "a")
    with pytest.raises(error, match=message):
        archive.store_file(src)
    assert_nothing_left(archive)
    monkeypatch.undo()  # the disk is back: the same instance goes in
    assert archive.store_file(src).status is StoreStatus.STORED


def test_recovery_removes_orphans_and_temp(settings: Settings) -> None:
    with Archive.open(settings) as archive:
        archive.store_file(bundled("CT_small.dcm"))
        spool = archive.store.spool()
        spool.write(b"orphan")
        orphan = spool.commit()
        partial = archive.store.spool()
        partial.write(b"partial")
        partial._file.close()  # type: ignore[union-attr]  # as if the process died
        partial._file = None  # type: ignore[assignment]
    with Archive.open(settings) as archive:
        assert orphan not in blobs(archive)
        assert temp_files(archive) == []
        assert archive.stats().instances == 1
        assert archive.verify().consistent


def test_verify_reports_missing_corrupt_orphans(settings: Settings, tmp_path: Path) -> None:
    with Archive.open(settings) as archive:
        a = archive.store_file(
            write_part10(make_dataset(sop_instance_uid="1.2.5.1"), tmp_path / "a")
        )
        b = archive.store_file(
            write_part10(make_dataset(sop_instance_uid="1.2.5.2"), tmp_path / "b")
        )
        archive.store_file(write_part10(make_dataset(sop_instance_uid="1.2.5.3"), tmp_path / "c"))
        os.unlink(archive.store.root / archive.get_instance(a.sop_instance_uid).blob_name)
        path_b = archive.store.root / archive.get_instance(b.sop_instance_uid).blob_name
        raw = bytearray(path_b.read_bytes())
        raw[-1] ^= 0xFF
        path_b.write_bytes(bytes(raw))
        spool = archive.store.spool()
        spool.write(b"x")
        orphan = spool.commit()
        report = archive.verify()
        assert report.missing == ["1.2.5.1"] and report.corrupt == ["1.2.5.2"]
        assert report.orphans == [orphan] and report.ok == 1 and not report.consistent
        report = archive.verify(repair=True)
        assert report.removed_orphans == 1 and orphan not in blobs(archive)


def test_delete_study_removes_rows_then_blobs(archive: Archive, tmp_path: Path) -> None:
    for i in range(3):
        archive.store_file(
            write_part10(make_dataset(sop_instance_uid=f"1.2.6.{i}"), tmp_path / f"{i}")
        )
    assert archive.delete_study("1.2.826.0.1.3680043.8.498.1") == 3
    assert_nothing_left(archive)


CHARSET_NAMES = {
    "chrArab.dcm": "قباني^لنزار",
    "chrFren.dcm": "Buc^Jérôme",
    "chrGerm.dcm": "Äneas^Rüdiger",
    "chrGreek.dcm": "Διονυσιος",
    "chrH31.dcm": "Yamada^Tarou=山田^太郎=やまだ^たろう",
    "chrH32.dcm": "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう",
    "chrHbrw.dcm": "שרון^דבורה",
    "chrI2.dcm": "Hong^Gildong=洪^吉洞=홍^길동",
    "chrJapMulti.dcm": "やまだ^たろう",
    "chrKoreanMulti.dcm": "김희중",
    "chrRuss.dcm": "Люкceмбypг",
}


@pytest.mark.parametrize(("name", "expected"), sorted(CHARSET_NAMES.items()))
def test_specific_character_set_is_stored_as_unicode(
    archive: Archive, name: str, expected: str
) -> None:
    """Names in Japanese, Korean, Greek, Cyrillic, Arabic, Hebrew… (PS3.5 6.1) are decoded
    with the data set's Specific Character Set and stored as Unicode in the index."""
    from pydicom.data import get_charset_files

    [path] = get_charset_files(name)
    result = archive.store_file(Path(path))
    if name == "chrJapMulti.dcm":  # pydicom's file: meta ...17461, data set ...17462
        assert len(result.warnings) == 1 and "differs from" in result.warnings[0]
    else:
        assert result.warnings == ()
    row = archive.index.row("patients", patient_id=dcmread(path).PatientID)
    assert row is not None and row["patient_name"] == expected
    meta = json.loads(archive.index.metadata_json(result.sop_instance_uid))
    pn = meta["00100010"]["Value"][0]  # PS3.18 F.2.2: PN as its component groups
    groups = [pn.get(k, "") for k in ("Alphabetic", "Ideographic", "Phonetic")]
    assert "=".join(groups).rstrip("=") == expected


def test_a_batch_of_prepared_instances_is_indexed_together(
    archive: Archive, tmp_path: Path
) -> None:
    first = write_part10(make_dataset(), tmp_path / "a.dcm")
    second = write_part10(make_dataset(), tmp_path / "b.dcm")
    # Same SOP Instance UID as `first`, in another study: refused by the index.
    clash = write_part10(
        make_dataset(
            sop_instance_uid=dcmread(first).SOPInstanceUID,
            study="1.2.826.0.1.3680043.8.498.2",
            series="1.2.826.0.1.3680043.8.498.2.1",
        ),
        tmp_path / "c.dcm",
    )
    prepared = [prepare(archive, p) for p in (first, second, clash)]
    assert all(isinstance(p, Prepared) for p in prepared)
    # Placed, not yet indexed: nothing is findable before the writer's commit.
    assert archive.stats().instances == 0
    results = finalize_together(archive, prepared)  # type: ignore[arg-type]
    assert [r.status for r in results[:2]] == [StoreStatus.STORED] * 2  # type: ignore[union-attr]
    assert isinstance(results[2], HierarchyConflict)
    assert archive.stats().instances == 2
    # The refused one's blob is gone; the stored ones' are named by the index.
    names = {archive.get_instance(dcmread(p).SOPInstanceUID).blob_name for p in (first, second)}
    assert set(blobs(archive)) == names
    assert temp_files(archive) == []
    # Sent again, identical: answered before anything is written.
    again = prepare(archive, second)
    assert isinstance(again, StoreResult) and again.status is StoreStatus.DUPLICATE
    assert set(blobs(archive)) == names


def test_a_failing_batch_callback_does_not_stop_the_writer(
    archive: Archive, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    prepared = prepare(archive, write_part10(make_dataset(), tmp_path / "a.dcm"))
    failed = threading.Event()

    def broken(results: list[StoreResult | BaseException]) -> None:
        failed.set()
        raise RuntimeError("a bug in the caller")

    archive.finalize_many([prepared], broken)  # type: ignore[list-item]
    assert failed.wait(30)
    # The writer goes on: the next instance is indexed.
    result = archive.store_file(write_part10(make_dataset(), tmp_path / "b.dcm"))
    assert result.status is StoreStatus.STORED
    assert archive.stats().instances == 2
    assert "a batch's completion failed" in caplog.text


def test_a_batch_refused_by_a_closed_writer_leaves_no_blob(
    archive: Archive, tmp_path: Path
) -> None:
    prepared = prepare(archive, write_part10(make_dataset(), tmp_path / "a.dcm"))
    assert isinstance(prepared, Prepared)
    assert blobs(archive) == [prepared.pending.blob.name]  # placed, not yet indexed
    archive._writer.close()
    with pytest.raises(DicomVaultError, match="closed"):
        archive.finalize_many([prepared], lambda results: None)
    assert_nothing_left(archive)
