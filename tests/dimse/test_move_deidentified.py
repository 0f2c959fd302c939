"""Remote AEs configured with ``deidentify = true`` receive de-identified copies only
(PS3.15 Annex E), as C-MOVE destination (DCMTK movescu -> storescp) and as C-GET
requestor (DCMTK getscu)."""

from __future__ import annotations

from pathlib import Path

from peers import PYDICOM_TEST_FILES, dcmtk, free_port
from pydicom import dcmread
from qr_peers import archive_server, storescp

from dicomvault.archive import audit
from dicomvault.config import Settings, load_settings

CT = PYDICOM_TEST_FILES / "CT_small.dcm"
MR = PYDICOM_TEST_FILES / "MR_small.dcm"


def _settings(tmp_path: Path, dest_port: int) -> Settings:
    config = tmp_path / "dicomvault.toml"
    config.write_text(
        f'[remotes.research]\nae_title = "RESEARCH"\nhost = "127.0.0.1"\nport = {dest_port}\n'
        "deidentify = true\n"
        f'[remotes.clinic]\nae_title = "CLINIC"\nhost = "127.0.0.1"\nport = {dest_port}\n'
        '[remotes.getter]\nae_title = "GETTER"\nhost = "127.0.0.1"\nport = 104\n'
        "deidentify = true\n"
    )
    return load_settings(
        config,
        {
            "storage": {"path": tmp_path / "data", "fsync": False},
            "dicom": {"host": "127.0.0.1", "port": 0, "idle_timeout": 10, "artim_timeout": 2},
        },
    )


def _assert_deidentified(received: list[Path], originals: list[Path]) -> None:
    sources = {dcmread(p).SOPClassUID: dcmread(p) for p in originals}
    assert len(received) == len(originals)
    for path in received:
        ds = dcmread(path)
        source = sources[ds.SOPClassUID]
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.SOPInstanceUID != source.SOPInstanceUID
        assert ds.StudyInstanceUID != source.StudyInstanceUID
        assert ds.PatientName != source.PatientName
        assert str(ds.PatientID).startswith("ANON-")
        assert ds.PixelData == source.PixelData  # pixels untouched


def test_move_to_a_deidentify_destination_sends_copies(tmp_path: Path) -> None:
    dest_port = free_port()
    received = tmp_path / "received"
    received.mkdir()
    study = dcmread(CT).StudyInstanceUID
    with (
        archive_server(_settings(tmp_path, dest_port), [CT, MR]) as (archive, port),
        storescp(received, dest_port),
    ):
        run = dcmtk(
            "movescu", "-S", "-aec", "DICOMVAULT", "-aem", "RESEARCH",
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
            "127.0.0.1", str(port),
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        _assert_deidentified(sorted(received.iterdir()), [CT])
        # The same study to a destination without the flag: the stored instance itself.
        for path in received.iterdir():
            path.unlink()
        run = dcmtk(
            "movescu", "-S", "-aec", "DICOMVAULT", "-aem", "CLINIC",
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
            "127.0.0.1", str(port),
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        (path,) = received.iterdir()
        assert dcmread(path).SOPInstanceUID == dcmread(CT).SOPInstanceUID
        assert archive.stats().instances == 2  # nothing stored or changed here
        assert audit.trail_of(archive).flush()
        # Instances Transferred (PS3.15 A.5.3.7) says which transfer was de-identified.
        log = audit.audit_log_path(archive.settings).read_text().splitlines()
        sent = [
            line for line in log if 'csd-code="110104"' in line and 'EventActionCode="R"' in line
        ]
        research = [line for line in sent if "RESEARCH" in line]
        clinic = [line for line in sent if "CLINIC" in line]
        assert len(research) == 1 and "<Anonymized>true</Anonymized>" in research[0]
        assert len(clinic) == 1 and "<Anonymized>" not in clinic[0]


def test_get_by_a_deidentify_requestor_receives_copies(tmp_path: Path) -> None:
    out = tmp_path / "got"
    out.mkdir()
    study = dcmread(MR).StudyInstanceUID
    with archive_server(_settings(tmp_path, free_port()), [CT, MR]) as (_, port):
        run = dcmtk(
            "getscu", "-S", "-aet", "GETTER", "-aec", "DICOMVAULT", "-od", out,
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
            "127.0.0.1", str(port),
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
    _assert_deidentified(sorted(out.iterdir()), [MR])


def test_a_remote_added_at_run_time_with_deidentify_gets_copies(tmp_path: Path) -> None:
    from dicomvault.archive import remotes

    dest_port = free_port()
    received = tmp_path / "received"
    received.mkdir()
    study = dcmread(CT).StudyInstanceUID
    with (
        archive_server(_settings(tmp_path, dest_port), [CT]) as (archive, port),
        storescp(received, dest_port),
    ):
        entry = remotes.add_remote(
            archive,
            "lab",
            {"ae_title": "LAB", "host": "127.0.0.1", "port": dest_port, "deidentify": True},
            actor="test",
        )
        assert entry.remote.deidentify
        assert remotes.effective_remotes(archive)["lab"].deidentify  # read back from the index
        run = dcmtk(
            "movescu", "-S", "-aec", "DICOMVAULT", "-aem", "LAB",
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
            "127.0.0.1", str(port),
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
    _assert_deidentified(sorted(received.iterdir()), [CT])
