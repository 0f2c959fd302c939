"""Our Query/Retrieve SCU (``dicomvault find/move/get``) against DCMTK dcmqrscp."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from peers import DCMTK_ENV, PYDICOM_TEST_FILES, dcmtk, free_port
from pydicom import dcmread

from dicomvault.cli.main import cli

FILES = [PYDICOM_TEST_FILES / "CT_small.dcm", PYDICOM_TEST_FILES / "MR_small.dcm"]

pytestmark = pytest.mark.dcmtk


class Dcmqrscp:
    def __init__(self, root: Path, move_port: int) -> None:
        self.port = free_port()
        db = root / "db"
        db.mkdir()
        config = root / "dcmqrscp.cfg"
        config.write_text(
            f"NetworkTCPPort = {self.port}\n"
            "MaxPDUSize = 16384\nMaxAssociations = 16\n"
            "HostTable BEGIN\n"
            f"dest = (DEST, 127.0.0.1, {move_port})\n"
            "HostTable END\nVendorTable BEGIN\nVendorTable END\n"
            "AETable BEGIN\n"
            f"COMMON {db} RW (200, 1024mb) ANY\n"
            "AETable END\n"
        )
        for path in FILES:
            copy = db / path.name
            shutil.copy(path, copy)
            run = dcmtk("dcmqridx", db, copy)
            assert run.returncode == 0, run.stderr
        self.proc = subprocess.Popen(
            ["/usr/bin/dcmqrscp", "-c", str(config)],
            env=DCMTK_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if (
                dcmtk("echoscu", "-aec", "COMMON", "127.0.0.1", self.port, timeout=5).returncode
                == 0
            ):
                return
            time.sleep(0.1)
        raise AssertionError("dcmqrscp did not start")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def qrscp(tmp_path: Path) -> Iterator[tuple[Dcmqrscp, int]]:
    move_port = free_port()
    server = Dcmqrscp(tmp_path, move_port)
    try:
        yield server, move_port
    finally:
        server.close()


def test_find_table_json_csv(qrscp: tuple[Dcmqrscp, int]) -> None:
    server, _ = qrscp
    target = f"COMMON@127.0.0.1:{server.port}"
    runner = CliRunner()
    keys = ["-k", "PatientID", "-k", "StudyInstanceUID", "-k", "PatientName"]
    result = runner.invoke(cli, ["find", target, *keys, "--json"])
    assert result.exit_code == 0, result.output
    matches = json.loads(result.output)
    studies = {m["0020000D"]["Value"][0] for m in matches}
    assert studies == {dcmread(p).StudyInstanceUID for p in FILES}
    result = runner.invoke(cli, ["find", target, *keys, "--csv"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == "PatientID,StudyInstanceUID,PatientName"
    assert len(result.output.splitlines()) == 3
    ct = dcmread(FILES[0])
    image_keys = ["-k", f"StudyInstanceUID={ct.StudyInstanceUID}", "-k",
                  f"SeriesInstanceUID={ct.SeriesInstanceUID}", "-k", "SOPInstanceUID"]  # fmt: skip
    result = runner.invoke(cli, ["find", target, *image_keys, "--level", "IMAGE"])
    assert result.exit_code == 0, result.output
    assert "1 match(es)" in result.output
    # A hierarchical IMAGE query without the series is refused by dcmqrscp: exit 1.
    result = runner.invoke(cli, ["find", target, "-k", "SOPInstanceUID", "--level", "IMAGE"])
    assert result.exit_code == 1 and "status 0xC000" in result.output


def test_get_into_folder(qrscp: tuple[Dcmqrscp, int], tmp_path: Path) -> None:
    server, _ = qrscp
    out = tmp_path / "out"
    uid = dcmread(FILES[0]).StudyInstanceUID
    result = CliRunner().invoke(
        cli,
        ["get", f"COMMON@127.0.0.1:{server.port}", "-k", f"StudyInstanceUID={uid}",
         "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    files = sorted(out.glob("*.dcm"))
    assert len(files) == 1
    assert dcmread(files[0]).SOPInstanceUID == dcmread(FILES[0]).SOPInstanceUID
    result = CliRunner().invoke(
        cli,
        ["get", f"COMMON@127.0.0.1:{server.port}", "-k", f"StudyInstanceUID={uid}",
         "--out", str(out), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["operation"] == "C-GET" and report["status"] == "0x0000"
    assert (report["completed"], report["warning"], report["failed"]) == (1, 0, 0)
    assert report["failed_sop_instance_uids"] == []


def test_move_to_storescp(qrscp: tuple[Dcmqrscp, int], tmp_path: Path) -> None:
    server, move_port = qrscp
    received = tmp_path / "received"
    received.mkdir()
    storescp = subprocess.Popen(
        ["/usr/bin/storescp", "-aet", "DEST", "-od", str(received), str(move_port)],
        env=DCMTK_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        result = CliRunner().invoke(
            cli,
            ["move", f"COMMON@127.0.0.1:{server.port}", "--dest", "DEST", "-k",
             "PatientID", "--level", "PATIENT", "--model", "patient"],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert "completed" in result.output
        assert len(list(received.iterdir())) == 2
        result = CliRunner().invoke(
            cli,
            ["move", f"COMMON@127.0.0.1:{server.port}", "--dest", "NOWHERE", "-k",
             "PatientID", "--level", "PATIENT", "--model", "patient"],
        )  # fmt: skip
        assert result.exit_code == 1
        result = CliRunner().invoke(
            cli,
            ["move", f"COMMON@127.0.0.1:{server.port}", "--dest", "NOWHERE", "-k",
             "PatientID", "--level", "PATIENT", "--model", "patient", "--json"],
        )  # fmt: skip
        assert result.exit_code == 1
        report = json.loads(result.stdout)  # the refusal, for a program to read
        assert report["operation"] == "C-MOVE to NOWHERE" and report["status"] != "0x0000"
        assert report["completed"] == 0
    finally:
        storescp.terminate()
        storescp.wait(10)
