"""``dicomvault import`` / ``verify`` / ``stats`` / ``db`` / ``config`` as a user runs them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from bench.datasets import ct_series
from tests.core.dicomfiles import make_dataset, write_part10
from tests.processes import descendants, kill_all, wait_until_gone

DV = str(Path(sys.executable).with_name("dicomvault"))


def dv(
    *args: str | Path, check: bool = False, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [DV, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"dicomvault {args} exited {proc.returncode}: {proc.stderr}")
    return proc


def stats(data: Path, *extra: str) -> dict[str, int]:
    return json.loads(dv("stats", "--json", "--data-dir", data, *extra, check=True).stdout)


@pytest.fixture(scope="module")
def series_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("series")
    ct_series(out, 24, rows=64, cols=64, patients=2, studies_per_patient=2, series_per_study=2)
    return out


def test_import_folder_then_stats(series_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = dv("import", series_dir, "--data-dir", data, "--json", check=True)
    report = json.loads(proc.stdout)
    assert report["stored"] == 24 and report["rejected"] == [] and report["not_dicom"] == 0
    assert stats(data) == {
        "patients": 2,
        "studies": 4,
        "series": 8,
        "instances": 24,
        "bytes": report["bytes"],
    }
    again = json.loads(dv("import", series_dir, "--data-dir", data, "--json", check=True).stdout)
    assert again["duplicate"] == 24 and again["stored"] == 0
    human = dv("stats", "--data-dir", data, check=True).stdout
    assert "instances" in human and "CT" in human
    verify = dv("verify", "--data-dir", data, check=True)
    assert "consistent" in verify.stderr


def test_import_postgres_backend(series_dir: Path, tmp_path: Path, pg_database: str) -> None:
    env = {"DICOMVAULT_INDEX__URL": pg_database}
    from tests.conftest import _reset_pg

    _reset_pg(pg_database)
    dv("import", series_dir, "--data-dir", tmp_path / "d", "--no-progress", check=True, env=env)
    proc = dv("stats", "--json", "--data-dir", tmp_path / "d", check=True, env=env)
    assert json.loads(proc.stdout)["instances"] == 24
    assert not (tmp_path / "d" / "index.sqlite3").exists()


def test_import_zip_and_dicomdir(series_dir: Path, tmp_path: Path) -> None:
    archive_zip = tmp_path / "cd.zip"
    with zipfile.ZipFile(archive_zip, "w") as zf:
        for path in sorted(series_dir.glob("*.dcm"))[:5]:
            zf.write(path, f"DICOM/{path.name}")
        zf.writestr("README.TXT", "not dicom")
    data = tmp_path / "data"
    report = json.loads(dv("import", archive_zip, "--data-dir", data, "--json", check=True).stdout)
    assert report["stored"] == 5 and report["not_dicom"] == 1

    dicomdir = Path(get_testdata_file("DICOMDIR"))  # type: ignore[arg-type]
    medium = tmp_path / "medium"
    shutil.copytree(dicomdir.parent, medium, ignore=shutil.ignore_patterns("*.zip", "*.gz"))
    report = json.loads(
        dv("import", medium / "DICOMDIR", "--data-dir", tmp_path / "d2", "--json").stdout
    )
    assert report["stored"] > 0 and report["dicomdir"] == 0
    by_dir = json.loads(
        dv("import", medium / "77654033", "--data-dir", tmp_path / "d3", "--json").stdout
    )
    assert by_dir["stored"] > 0


def test_rejections_give_reasons_and_exit_1(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    write_part10(make_dataset(sop_instance_uid="1.2.7.1"), src / "good.dcm")
    (src / "notes.txt").write_text("hello")
    write_part10(make_dataset(sop_instance_uid="1.2.x.1"), src / "baduid.dcm")
    proc = dv("import", src, "--data-dir", tmp_path / "data", "--no-progress")
    assert proc.returncode == 1
    assert "rejected" in proc.stderr and "baduid.dcm" in proc.stderr
    assert "1.2.x.1" in proc.stderr
    assert stats(tmp_path / "data")["instances"] == 1


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    proc = dv("import", tmp_path / "nope", "--data-dir", tmp_path / "d")
    assert proc.returncode == 2 and "no such file or directory" in proc.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[storage]\nduplicates = 'maybe'\n")
    proc = dv("stats", "--config", bad)
    assert proc.returncode == 2 and "storage.duplicates" in proc.stderr
    proc = dv("stats", "--data-dir", tmp_path / "absent")  # a message, not a traceback
    assert proc.returncode == 2, proc.stderr
    assert "cannot open the index database" in proc.stderr
    assert "No such file or directory" in proc.stderr and "Traceback" not in proc.stderr


def test_maintenance_on_a_mistyped_data_dir_creates_nothing(tmp_path: Path) -> None:
    """Commands that look at an archive (verify, retention, protect, the list commands):
    a --data-dir that names none is an error (exit 2), not a new empty archive that
    verify would call consistent or a list would show as empty."""
    absent = tmp_path / "typo"
    for args in (
        ("verify",),
        ("retention", "run"),
        ("protect", "1.2.3"),
        ("user", "list"),
        ("token", "list"),
        ("remote", "list"),
        ("worklist", "list"),
    ):
        proc = dv(*args, "--data-dir", absent)
        assert proc.returncode == 2, (args, proc.stderr)
        assert f"no archive at {absent}" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
        assert not absent.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = dv("verify", "--data-dir", empty)
    assert proc.returncode == 2 and "holds no index.sqlite3" in proc.stderr, proc.stderr
    proc = dv("stats", "--data-dir", empty)
    assert proc.returncode == 2 and "No such file or directory" in proc.stderr
    assert list(empty.iterdir()) == []  # no empty index.sqlite3 left behind


def test_config_show_and_db_upgrade(tmp_path: Path) -> None:
    proc = dv(
        "config",
        "show",
        "--json",
        "--data-dir",
        tmp_path / "d",
        check=True,
        env={"DICOMVAULT_DICOM__AE_TITLE": "FROMENV"},
    )
    shown = json.loads(proc.stdout)
    assert shown["dicom"]["ae_title"] == "FROMENV" and shown["dicom"]["port"] == 11112
    assert shown["storage"]["path"] == str(tmp_path / "d")
    assert "[dicom]" in dv("config", "show", check=True).stdout
    up = dv("db", "upgrade", "--data-dir", tmp_path / "d", check=True)
    assert "revision 0010" in up.stderr
    assert "already up to date" in dv("db", "upgrade", "--data-dir", tmp_path / "d").stderr


def test_kill_9_half_way_then_restart_is_consistent(tmp_path: Path) -> None:
    src = tmp_path / "many"
    ct_series(src, 300, rows=256, cols=256, seed=9)
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [DV, "import", str(src), "--data-dir", str(data), "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    db = data / "index.sqlite3"
    # Kill once some instances are in (bounded wait), mid-stream.
    while time.monotonic() < deadline and proc.poll() is None:
        blobs = data / "blobs"
        if db.exists() and blobs.exists() and sum(1 for _ in blobs.rglob("*")) > 60:
            break
        time.sleep(0.02)
    workers = descendants(proc.pid)
    assert workers, "the import ran without worker processes: nothing tested below"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    # Its worker processes (and multiprocessing's resource tracker) end with it, not idle
    # for ever holding their memory.
    left = wait_until_gone(workers, timeout=20)
    kill_all(left)
    assert not left, f"processes of the killed import still running: {sorted(left)}"
    # Restart: the next import recovers (orphans, temp files) and completes the set.
    report = json.loads(dv("import", src, "--data-dir", data, "--json", check=True).stdout)
    assert report["stored"] + report["duplicate"] == 300
    assert report["duplicate"] > 0  # the first run really got part of the way
    verify = json.loads(dv("verify", "--data-dir", data, "--json").stdout)
    assert verify["consistent"] and verify["orphans"] == [] and verify["checked"] == 300


@pytest.fixture
def small_disk(tmp_path: Path) -> Path:
    mount = tmp_path / "small"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
    yield mount  # type: ignore[misc]
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_half_way(small_disk: Path, tmp_path: Path) -> None:
    src = tmp_path / "ct"
    ct_series(src, 12, rows=512, cols=512, seed=11)  # ~6 MB into a 3 MB disk
    data = small_disk / "data"
    proc = dv("import", src, "--data-dir", data, "--json", "--workers", "1")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["stopped"] and "full" in report["stopped"]
    assert 0 < report["stored"] < 12
    verify = json.loads(dv("verify", "--data-dir", data, "--json").stdout)
    assert verify["consistent"] and verify["checked"] == report["stored"]
    assert list((data / "blobs" / ".tmp").iterdir()) == []  # nothing partial remains
