"""``dicomvault commit`` (Storage Commitment SCU) against our own SCP, and the SCP's
pending reports surviving a crash of ``dicomvault serve`` (PS3.4 J.3)."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from commitment_peers import action_info, free_port, request
from dicomfiles import make_dataset, write_part10
from test_serve import DV, Server

from dicomvault.archive import Archive
from dicomvault.config import load_settings

LISTEN = free_port()


def commit(*args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    extra = ["--config", str(config)] if config else []
    return subprocess.run([DV, "commit", *extra, *args], capture_output=True, text=True, timeout=60)


def test_commit_files_same_association(wf_server: Any, tmp_path: Path, stored: Any) -> None:
    stored(1)
    files = sorted((tmp_path).glob("in0-*.dcm"))
    proc = commit("--to", f"DICOMVAULT@127.0.0.1:{wf_server.port}", "--json", *map(str, files))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["event_type_id"] == 1 and len(result["committed"]) == 1


def test_commit_reports_failures_with_exit_1(wf_server: Any, tmp_path: Path) -> None:
    never = write_part10(make_dataset(), tmp_path / "never-sent.dcm")
    proc = commit("--to", f"DICOMVAULT@127.0.0.1:{wf_server.port}", str(never))
    assert proc.returncode == 1, proc.stderr
    assert "0 committed, 1 failed" in proc.stdout
    assert "0x0112 no such object instance" in proc.stdout


@pytest.mark.parametrize(
    "workflow_overrides",
    [{"commitment": {"same_association": False},
      "remotes": {"cli": {"ae_title": "COMMITSCU", "host": "127.0.0.1", "port": LISTEN}}}],
)  # fmt: skip
def test_commit_study_report_on_new_association(
    wf_server: Any, wf_archive: Archive, stored: Any
) -> None:
    refs = stored(2)
    study = wf_archive.get_instance(refs[0][1]).study_instance_uid
    proc = commit(
        "--to", f"DICOMVAULT@127.0.0.1:{wf_server.port}", "--study", study,
        "--data-dir", str(wf_archive.settings.storage.path), "--calling-ae", "COMMITSCU",
        "--listen-port", str(LISTEN), "--timeout", "20",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "2 committed, 0 failed" in proc.stdout


def test_commit_refused_and_unreachable(
    wf_server: Any, wf_archive: Archive, tmp_path: Path
) -> None:
    proc = commit("--to", f"DICOMVAULT@127.0.0.1:{free_port()}", str(tmp_path), "--timeout", "5")
    assert proc.returncode == 2
    proc = commit(
        "--to", f"DICOMVAULT@127.0.0.1:{wf_server.port}", "--study", "1.2.3",
        "--data-dir", str(tmp_path / "elsewhere"),
    )  # fmt: skip
    assert proc.returncode == 2 and "no archive at" in proc.stderr
    assert not (tmp_path / "elsewhere").exists()  # a mistyped --data-dir creates nothing
    proc = commit(
        "--to", f"DICOMVAULT@127.0.0.1:{wf_server.port}", "--study", "1.2.3",
        "--data-dir", str(wf_archive.settings.storage.path),
    )  # fmt: skip
    assert proc.returncode == 2 and "no study 1.2.3" in proc.stderr


@pytest.mark.dcmtk
def test_report_sent_after_a_crash(
    tmp_path: Path, report_listener: Any, listener_port: int
) -> None:
    data = tmp_path / "data"
    ds = make_dataset()
    with Archive.open(load_settings(None, {"storage": {"path": data}})) as archive:
        archive.store_file(write_part10(ds, tmp_path / "one.dcm"))
    config = tmp_path / "dicomvault.toml"
    config.write_text(
        "[commitment]\nsame_association = false\nretry_initial = 0.5\nretry_max = 1.0\n"
        "poll_interval = 0.2\n"
        f'[remotes.modality]\nae_title = "MODALITY"\nhost = "127.0.0.1"\nport = {listener_port}\n'
    )
    server = Server(data, "--config", str(config))
    info = action_info([(str(ds.SOPClassUID), str(ds.SOPInstanceUID))])
    try:
        assert request(server.port, info) == 0x0000
        server.wait_for_log("report not delivered", timeout=20)
    finally:
        server.proc.send_signal(signal.SIGKILL)  # a crash: nothing is flushed or finished
        server.proc.wait(timeout=10)
    reports = report_listener()
    again = Server(data, "--config", str(config))
    try:
        event_type, result, _ = reports.wait(20)
        assert event_type == 1 and result.TransactionUID == info.TransactionUID
        again.wait_for_log(f"commitment {info.TransactionUID} reported to MODALITY", timeout=10)
    finally:
        assert again.stop() == 0
