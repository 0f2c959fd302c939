"""``dicomvault delete``, ``protect``, ``unprotect`` and ``retention run`` on an archive
filled beforehand: the installed command in a subprocess for the main path, click's
runner in this process for the rest (a subprocess costs 1.8 s of start-up each). A
deletion cut short after its index commit (the queue rows a killed process leaves) is
finished by the next command that opens the archive."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from dicomvault.archive import Archive
from dicomvault.archive.deletion import Selection
from dicomvault.cli.main import cli
from dicomvault.config import Settings, load_settings
from tests.workflow.deletion_fixtures import ROOT, blob_files, store_many

DICOMVAULT = str(Path(sys.executable).with_name("dicomvault"))
STUDY_A = ROOT + ".30"
STUDY_B = ROOT + ".31"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def filled(data_dir: Path, tmp_path: Path) -> Settings:
    settings = load_settings(None, {"storage": {"path": data_dir, "fsync": False}})
    with Archive.open(settings) as archive:
        store_many(archive, tmp_path, 3, study=STUDY_A, series=STUDY_A + ".1")
        store_many(archive, tmp_path, 2, study=STUDY_B, series=STUDY_B + ".1", modality="MR")
    return settings


def run(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed command, in a subprocess."""
    return subprocess.run(
        [DICOMVAULT, *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def invoke(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The same command line in this process (click's runner; stdin is no terminal)."""
    result = CliRunner().invoke(cli, [*args, "--data-dir", str(data_dir)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def _counts(settings: Settings) -> tuple[int, int]:
    with Archive.open(settings, recover_on_start=False) as archive:
        return archive.stats().instances, len(blob_files(archive))


def test_delete_dry_run_then_for_real(filled: Settings, data_dir: Path) -> None:
    done = run(data_dir, "delete", "--study", STUDY_A, "--dry-run", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["dry_run"] is True
    assert (report["studies"], report["series"], report["instances"]) == (1, 1, 3)
    assert _counts(filled) == (5, 5)

    # Not on a terminal and no --yes: refused, nothing deleted.
    done = run(data_dir, "delete", "--study", STUDY_A)
    assert done.returncode == 2 and "--yes" in done.stderr
    assert _counts(filled) == (5, 5)

    done = run(data_dir, "delete", "--study", STUDY_A, "--yes", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["instances"] == 3
    assert _counts(filled) == (2, 2)

    done = run(data_dir, "delete", "--patient", "PID1", "--yes")
    assert done.returncode == 0, done.stderr
    assert "deleted: patient 'PID1'" in done.stdout
    assert _counts(filled) == (0, 0)


def test_delete_bad_input(filled: Settings, data_dir: Path) -> None:
    for args, message in (
        (["--study", "x.y"], "not digits"),
        (["--study", STUDY_A, "--series", STUDY_A + ".1"], "exactly one"),
        ([], "exactly one"),
        (["--study", STUDY_A, "--issuer", "I"], "--issuer goes with --patient"),
        (["--study", "1.2.3.4", "--yes"], "no study 1.2.3.4"),
    ):
        done = invoke(data_dir, "delete", *args)
        assert done.returncode == 2, args
        assert message in done.stderr, (args, done.stderr)
    assert _counts(filled) == (5, 5)


def test_protect_unprotect_and_force(filled: Settings, data_dir: Path) -> None:
    done = invoke(data_dir, "protect", STUDY_A, "--note", "legal hold")
    assert done.returncode == 0 and "protected" in done.stderr
    done = invoke(data_dir, "delete", "--study", STUDY_A, "--yes")
    assert done.returncode == 2 and "protected" in done.stderr
    assert _counts(filled) == (5, 5)
    done = invoke(data_dir, "delete", "--study", STUDY_A, "--dry-run", "--json")
    assert json.loads(done.stdout)["protected"] == [STUDY_A]
    done = invoke(data_dir, "unprotect", STUDY_A)
    assert done.returncode == 0 and "unprotected" in done.stderr
    assert "was not protected" in invoke(data_dir, "unprotect", STUDY_A).stderr
    assert invoke(data_dir, "protect", "1.2.3.4").returncode == 2
    invoke(data_dir, "protect", STUDY_A)
    done = invoke(data_dir, "delete", "--study", STUDY_A, "--yes", "--force")
    assert done.returncode == 0, done.stderr
    assert _counts(filled) == (2, 2)


def test_retention_run_from_the_cli(data_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "dicomvault.toml"
    config.write_text(
        '[storage]\nfsync = false\n\n[[retention.rules]]\nmodality = "CT"\n'
        'older_than_days = 3650\nby = "study_date"\n'
    )
    settings = load_settings(config, {"storage": {"path": data_dir}})
    with Archive.open(settings) as archive:
        store_many(
            archive, tmp_path, 2, study=STUDY_A, series=STUDY_A + ".1", study_date="19990101"
        )
        store_many(archive, tmp_path, 1, study=STUDY_B, series=STUDY_B + ".1")
    done = invoke(data_dir, "retention", "run", "--dry-run", "--json", "--config", str(config))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [r["study_instance_uid"] for r in report["retention"]] == [STUDY_A]
    assert _counts(settings) == (3, 3)
    done = invoke(data_dir, "retention", "run", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert STUDY_A in done.stdout
    assert _counts(settings) == (1, 1)


def test_a_deletion_cut_short_is_finished_by_the_next_command(
    filled: Settings, data_dir: Path
) -> None:
    """A process that committed a deletion and died before removing the blobs leaves
    queue rows; the next ``dicomvault`` command that opens the archive finishes them."""
    from datetime import UTC, datetime

    with Archive.open(filled) as archive:
        now = datetime.now(UTC)
        archive.index.deletions.delete(
            Selection("study", STUDY_A), force=False, reason="manual", now=now, not_before=now
        )
    assert _counts(filled) == (2, 5)
    done = run(data_dir, "delete", "--study", STUDY_B, "--dry-run")
    assert done.returncode == 0, done.stderr
    assert _counts(filled) == (2, 2)
