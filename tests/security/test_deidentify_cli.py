"""``dicomvault anonymize`` with real files, a real archive and DCMTK ``storescp`` as the
receiver: files → folder, stored study → new stored study, → a Storage SCP; the Export
audit message; and bad inputs (a clear message, a non-zero exit, nothing half-done)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread

from dicomvault.archive import Archive, audit
from dicomvault.archive.anonymize import KEY_FILE, deid_keys
from dicomvault.config import Settings, load_settings
from dicomvault.index.audit import AuditFilter
from tests.core.dicomfiles import bundled, make_dataset, write_part10
from tests.query.corpus import query

STUDY = "1.2.826.0.1.3680043.8.498.4242"


@dataclass
class Ran:
    code: int
    stdout: str
    stderr: str


def dv(*args: str | Path) -> Ran:
    """The CLI in this process (click's runner): the installed script's code path."""
    from click.testing import CliRunner

    from dicomvault.cli.main import cli

    result = CliRunner().invoke(cli, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Ran(result.exit_code, result.stdout, result.stderr)


@pytest.fixture
def data(sqlite_settings: Settings) -> Path:
    return sqlite_settings.storage.path


def _settings(data: Path, **extra: dict[str, object]) -> Settings:
    return load_settings(None, {"storage": {"path": data}, **extra})


def _study(folder: Path, count: int = 2, study: str = STUDY, **kw: object) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(count):
        ds = make_dataset(
            sop_instance_uid=f"{study}.1.{n + 1}", study=study, series=f"{study}.1", name="Doe^Jane"
        )
        for key, value in kw.items():
            setattr(ds, key, value)
        paths.append(write_part10(ds, folder / f"in{n}.dcm"))
    return paths


def _stored(data: Path, paths: list[Path]) -> None:
    with Archive.open(_settings(data)) as archive:
        for path in paths:
            archive.store_file(path)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_files_to_a_folder(tmp_path: Path, data: Path) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    polyglot = bytearray(bundled("CT_small.dcm").read_bytes())
    polyglot[:4] = b"MZ\x90\x00"  # a PE header in the preamble (CVE-2019-11687)
    (inputs / "ct.dcm").write_bytes(bytes(polyglot))
    shutil.copy(bundled("MR_small.dcm"), inputs / "mr.dcm")
    (inputs / "README.txt").write_text("not DICOM")  # found in a folder: skipped
    out = tmp_path / "out"
    ran = dv("anonymize", inputs, "--out", out, "--data-dir", data, "--json")
    assert ran.code == 0, ran.stderr
    report = json.loads(ran.stdout)
    assert report["ok"] and report["instances"] == 2 and len(report["skipped"]) == 1
    written = _files(out)
    assert [p.name for p in written] == ["IMG00001.dcm", "IMG00002.dcm"]
    for path in written:
        raw = path.read_bytes()
        assert raw[:128] == bytes(128) and raw[128:132] == b"DICM"
        ds = dcmread(path)
        assert ds.PatientIdentityRemoved == "YES" and ds.PatientID.startswith("ANON-")
    # the archive's key was created once, owner-only
    key = data / KEY_FILE
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_bytes()) == 32
    # the same key next time: the same new UIDs
    again = dv("anonymize", inputs / "ct.dcm", "--out", tmp_path / "again", "--data-dir", data)
    assert again.code == 0, again.stderr
    assert dcmread(_files(tmp_path / "again")[0]).SOPInstanceUID in {
        dcmread(p).SOPInstanceUID for p in written
    }


def test_a_folder_that_is_not_empty_needs_force(tmp_path: Path, data: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "IMG00007.dcm").write_bytes(b"mine")
    ct = bundled("CT_small.dcm")
    refused = dv("anonymize", ct, "--out", out, "--data-dir", data)
    assert refused.code == 2 and "not empty" in refused.stderr
    added = dv("anonymize", ct, "--out", out, "--force", "--data-dir", data)
    assert added.code == 0, added.stderr
    assert [p.name for p in _files(out)] == ["IMG00007.dcm", "IMG00008.dcm"]
    assert (out / "IMG00007.dcm").read_bytes() == b"mine"  # nothing replaced


def test_stored_study_to_a_new_stored_study(tmp_path: Path, data: Path) -> None:
    _stored(data, _study(tmp_path / "in"))
    ran = dv("anonymize", "--study", STUDY, "--store", "--json", "--data-dir", data)
    assert ran.code == 0, ran.stderr
    report = json.loads(ran.stdout)
    (study,) = report["studies"]
    assert study["source_study_instance_uid"] == STUDY and study["instances"] == 2
    assert report["stored"] == {"stored": 2}
    settings = _settings(data)
    with Archive.open(settings) as archive:
        pseudonym = deid_keys(settings).pseudonym("PID1")
        found = list(archive.find(query("STUDY", PatientID=pseudonym, StudyInstanceUID="")))
        assert [str(m.values[0x0020000D]) for m in found] == [study["study_instance_uid"]]
        assert len(list(archive.find(query("STUDY", StudyInstanceUID="")))) == 2  # + original
        rows = audit.search(archive, AuditFilter(event_id="110106"))
        assert rows == []  # nothing left the archive


def test_stored_study_to_a_folder_is_an_audited_export(tmp_path: Path, data: Path) -> None:
    _stored(data, _study(tmp_path / "in"))
    out = tmp_path / "out"
    ran = dv("anonymize", "--study", STUDY, "--out", out, "--data-dir", data)
    assert ran.code == 0, ran.stderr
    assert len(_files(out)) == 2
    with Archive.open(_settings(data)) as archive:
        (row,) = audit.search(archive, AuditFilter(event_id="110106"))
    assert row.study_instance_uid == STUDY and row.patient_id == "PID1" and row.outcome == 0
    assert str(out.resolve()) in row.xml


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    received = tmp_path / "received"
    received.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    proc = subprocess.Popen(
        ["/usr/bin/storescp", "-aet", "STORESCP", "-od", str(received), str(port)],
        env={**os.environ, "TCP_NODELAY": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield port, received
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.dcmtk
def test_study_sent_to_storescp(tmp_path: Path, data: Path, storescp: tuple[int, Path]) -> None:
    port, received = storescp
    _stored(data, _study(tmp_path / "in"))
    target = f"STORESCP@127.0.0.1:{port}"
    ran = dv("anonymize", "--study", STUDY, "--to", target, "--json", "--data-dir", data)
    assert ran.code == 0, ran.stderr
    assert json.loads(ran.stdout)["sent"] == {"sent": 2}
    files = _files(received)
    assert len(files) == 2
    for path in files:
        ds = dcmread(path)
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.StudyInstanceUID != STUDY and str(ds.PatientName).startswith("ANON-")
    with Archive.open(_settings(data)) as archive:
        (row,) = audit.search(archive, AuditFilter(event_id="110106"))
    assert row.study_instance_uid == STUDY and "STORESCP" in row.xml


def test_usage_errors(tmp_path: Path, data: Path) -> None:
    ct = bundled("CT_small.dcm")
    none = dv("anonymize", ct, "--data-dir", data)
    assert none.code == 2 and "exactly one output" in none.stderr
    two = dv("anonymize", ct, "--out", tmp_path / "o", "--store", "--data-dir", data)
    assert two.code == 2 and "--out and --store" in two.stderr
    nothing = dv("anonymize", "--out", tmp_path / "o", "--data-dir", data)
    assert nothing.code == 2 and "give PATHS or --study" in nothing.stderr
    missing = dv("anonymize", tmp_path / "nope.dcm", "--out", tmp_path / "o", "--data-dir", data)
    assert missing.code == 2 and "does not exist" in missing.stderr
    same_uids = dv("anonymize", ct, "--store", "--retain-uids", "--data-dir", data)
    assert same_uids.code == 2 and "--retain-uids cannot go with --store" in same_uids.stderr
    unknown = dv("anonymize", "--study", "1.2.3.999", "--out", tmp_path / "o", "--data-dir", data)
    assert unknown.code == 2 and "no archive at" in unknown.stderr  # nothing stored yet
    assert not (tmp_path / "o").exists()
    Archive.open(_settings(data)).close()
    unknown = dv("anonymize", "--study", "1.2.3.999", "--out", tmp_path / "o", "--data-dir", data)
    assert unknown.code == 2 and "no study with Study Instance UID 1.2.3.999" in unknown.stderr
    assert not (tmp_path / "o").exists()


def test_unreadable_file_writes_nothing(tmp_path: Path, data: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\xff" * 500)
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(bundled("CT_small.dcm").read_bytes()[:3000])
    out = tmp_path / "out"
    ran = dv(
        "anonymize", bundled("MR_small.dcm"), junk, truncated, "--out", out, "--data-dir", data
    )
    assert ran.code == 1
    assert f"{junk}: not DICOM" in ran.stderr and str(truncated) in ran.stderr
    assert not out.exists()  # created for this run, removed again: no partial output


def test_burned_in_annotation_is_refused_and_nothing_is_stored(tmp_path: Path, data: Path) -> None:
    inputs = tmp_path / "in"
    _study(inputs, count=1)
    burned = make_dataset(sop_instance_uid=f"{STUDY}.1.9", study=STUDY, series=f"{STUDY}.1")
    burned.BurnedInAnnotation = "YES"
    write_part10(burned, inputs / "burned.dcm")
    ran = dv("anonymize", inputs, "--store", "--data-dir", data)
    assert ran.code == 1
    assert "burned.dcm: Burned In Annotation is YES" in ran.stderr
    assert "--allow-burned-in" in ran.stderr
    with Archive.open(_settings(data)) as archive:
        assert archive.stats().instances == 0
    allowed = dv("anonymize", inputs, "--store", "--allow-burned-in", "--data-dir", data)
    assert allowed.code == 0, allowed.stderr
    with Archive.open(_settings(data)) as archive:
        assert archive.stats().instances == 2


def test_a_failed_store_leaves_no_partial_study(tmp_path: Path, data: Path) -> None:
    """The quota refuses the second instance: the first one stored is removed again."""
    paths = _study(tmp_path / "in", count=2)
    quota = int(paths[0].stat().st_size * 1.6)
    config = tmp_path / "dv.toml"
    config.write_text(f"[retention]\nquota_bytes = {quota}\n")
    ran = dv("anonymize", tmp_path / "in", "--store", "--config", config, "--data-dir", data)
    assert ran.code == 2 and "quota" in ran.stderr
    with Archive.open(_settings(data)) as archive:
        assert archive.stats().instances == 0
