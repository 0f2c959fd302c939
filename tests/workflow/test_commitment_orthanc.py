"""Storage commitment against Orthanc (Debian's Orthanc 1.10, whose DIMSE side is DCMTK):
Orthanc as the SCU asking dicomvault (report on a new association to Orthanc), and
``dicomvault commit`` asking Orthanc (report on a new association to our listener)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from commitment_peers import free_port
from dicomfiles import make_dataset, write_part10

from tests.core.test_serve import DV

ORTHANC = Path("/usr/sbin/Orthanc")
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}

pytestmark = [
    pytest.mark.dcmtk,
    pytest.mark.skipif(not ORTHANC.exists(), reason="Orthanc not installed (make tools)"),
]


@dataclass
class Orthanc:
    dicom_port: int
    http: httpx.Client
    scu_port: int  # where Orthanc sends its reports to us ("VAULTSCU")


@pytest.fixture
def ports() -> tuple[int, int, int]:
    """Orthanc's DICOM and HTTP ports, and our listener's for its reports."""
    return free_port(), free_port(), free_port()


@pytest.fixture
def workflow_overrides(ports: tuple[int, int, int]) -> dict[str, Any]:
    # Where dicomvault sends its reports: Orthanc's own DICOM port.
    return {"remotes": {"orthanc": {"ae_title": "ORTHANC", "host": "127.0.0.1",
                                    "port": ports[0]}}}  # fmt: skip


@pytest.fixture
def orthanc(tmp_path: Path, wf_server: Any, ports: tuple[int, int, int]) -> Iterator[Orthanc]:
    dicom_port, http_port, scu_port = ports
    config = {
        "Name": "dicomvault-test",
        "StorageDirectory": str(tmp_path / "orthanc"),
        "IndexDirectory": str(tmp_path / "orthanc"),
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomModalities": {
            "vault": ["VAULTSCU", "127.0.0.1", scu_port],
            "dv": ["DICOMVAULT", "127.0.0.1", wf_server.port],
        },
        "Plugins": [],
    }
    path = tmp_path / "orthanc.json"
    path.write_text(json.dumps(config))
    log = (tmp_path / "orthanc.log").open("w")
    proc = subprocess.Popen([str(ORTHANC), str(path)], stdout=log, stderr=log, env=DCMTK_ENV)
    client = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=30)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                client.get("/system").raise_for_status()
                break
            except httpx.HTTPError:
                assert proc.poll() is None, (tmp_path / "orthanc.log").read_text()
                assert time.monotonic() < deadline, "Orthanc did not start in 30 s"
                time.sleep(0.2)
        yield Orthanc(dicom_port, client, scu_port)
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_orthanc_asks_dicomvault(orthanc: Orthanc, stored: Any) -> None:
    (kept,) = stored(1)
    missing = (kept[0], "1.2.3.4.5.6")
    body = {"DicomInstances": [list(kept), list(missing)], "Timeout": 30}
    job = orthanc.http.post("/modalities/dv/storage-commitment", json=body).json()
    deadline = time.monotonic() + 30
    while (report := orthanc.http.get(job["Path"]).json())["Status"] == "Pending":
        assert time.monotonic() < deadline, report
        time.sleep(0.1)
    assert report["Status"] == "Failure"  # Orthanc's word for "event 2"
    assert [s["SOPInstanceUID"] for s in report["Success"]] == [kept[1]]
    assert [(f["SOPInstanceUID"], f["FailureReason"]) for f in report["Failures"]] == [
        ("1.2.3.4.5.6", 0x0112)
    ]


def test_dicomvault_commit_asks_orthanc(orthanc: Orthanc, tmp_path: Path) -> None:
    sent = write_part10(make_dataset(), tmp_path / "sent.dcm")
    never = write_part10(make_dataset(), tmp_path / "never.dcm")
    stored = subprocess.run(
        ["/usr/bin/storescu", "-aec", "ORTHANC", "127.0.0.1", str(orthanc.dicom_port), str(sent)],
        env=DCMTK_ENV, capture_output=True, timeout=30,
    )  # fmt: skip
    assert stored.returncode == 0, stored.stderr
    proc = subprocess.run(
        [DV, "commit", "--to", f"ORTHANC@127.0.0.1:{orthanc.dicom_port}", "--calling-ae",
         "VAULTSCU", "--listen-port", str(orthanc.scu_port), "--timeout", "30", "--json",
         str(sent), str(never)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr  # one of two failed
    result = json.loads(proc.stdout)
    assert len(result["committed"]) == 1 and result["event_type_id"] == 2
    assert result["failed"][0]["failure_reason"] == "0x0112"
