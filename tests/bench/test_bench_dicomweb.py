"""Tests for the DICOMweb benchmark harness ``bench.bench_dicomweb`` (no Orthanc needed:
the dicomvault side runs against ``fake_dicomweb.py``, an in-memory stand-in)."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest

from bench import bench_dicomweb
from bench.bench_dicomweb import PartCounter, boundary_of, multipart, query_string

FAKE = Path(__file__).with_name("fake_dicomweb.py")


def test_part_counter_across_any_chunking() -> None:
    parts = [b"first", b"--not-a-delimiter", b"x" * 1000]
    body, content_type = multipart(parts)
    boundary = boundary_of(content_type)
    assert body.startswith(b"--" + boundary)
    for size in (1, 7, len(boundary) + 1, 333, len(body)):
        counter = PartCounter(boundary)
        for start in range(0, len(body), size):
            counter.feed(body[start : start + size])
        assert (counter.parts, counter.bytes) == (3, len(body))
    unclosed = PartCounter(boundary)
    unclosed.feed(body[: body.rindex(b"--" + boundary)])
    assert unclosed.parts == 3


def test_boundary_of_quoted_and_missing() -> None:
    assert boundary_of('multipart/related; boundary="a b"; type="x"') == b"a b"
    assert boundary_of('multipart/related; type="application/dicom"; boundary=abc') == b"abc"
    with pytest.raises(ValueError):
        boundary_of("application/dicom")


def test_query_string_keeps_wildcards() -> None:
    query = query_string([("PatientName", "AB^C*"), ("includefield", "StudyDescription")])
    assert query == "?PatientName=AB%5EC*&includefield=StudyDescription"
    assert query_string([]) == ""


def test_parse_args_quick_and_only() -> None:
    args = bench_dicomweb.parse_args(["--quick", "--only", "orthanc,dicomvault", "--unknown"])
    assert (args.repeat, args.runs, args.series_instances) == (1, 5, 200)
    assert args.only == ["dicomvault", "orthanc"]
    args = bench_dicomweb.parse_args(["--quick", "--runs", "7"])
    assert (args.repeat, args.runs, args.large_runs) == (1, 7, 10)
    args = bench_dicomweb.parse_args([])
    assert (args.repeat, args.runs, args.series_instances, args.query_studies) == (
        5,
        20,
        1000,
        2000,
    )
    with pytest.raises(SystemExit):
        bench_dicomweb.parse_args(["--only", "nosuch"])


def _fake_executable(tmp_path: Path) -> str:
    script = tmp_path / "dicomvault"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def _argv(tmp_path: Path) -> list[str]:
    argv = ["--only", "dicomvault", "--repeat", "2", "--runs", "3", "--instances", "3"]
    argv += ["--series-instances", "6", "--query-studies", "12"]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--work-dir", str(tmp_path)]
    return [*argv, "--json", str(tmp_path / "r.json")]


def test_end_to_end_against_a_stand_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        bench_dicomweb, "_dicomvault_executable", lambda: _fake_executable(tmp_path)
    )
    assert bench_dicomweb.main(_argv(tmp_path)) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    rows = report["measurements"]
    assert not any(row["errors"] for row in rows.values())
    assert rows["stow"]["figures"]["dicomvault"]["rounds"] == 2
    assert rows["wado"]["figures"]["dicomvault"]["instances_per_s"] > 0
    assert rows["metadata"]["figures"]["dicomvault"]["matches"] == 6
    assert rows["qido patient-id"]["figures"]["dicomvault"]["matches"] >= 1
    assert rows["qido date-month"]["figures"]["dicomvault"]["runs"] == 3
    table = capsys.readouterr().out
    assert "STOW-RS 3 x" in table and "FAILED" not in table
    assert not list(tmp_path.glob("dicomvault-bench-dicomweb-*"))  # temp dir removed


def test_unavailable_server_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(bench_dicomweb, "_dicomvault_executable", lambda: "/bin/false")
    assert bench_dicomweb.main(_argv(tmp_path)) == 0
    assert "dicomvault: not available: dicomvault import exited 1" in capsys.readouterr().out
    report = json.loads((tmp_path / "r.json").read_text())
    assert "dicomvault" in report["unavailable"]
    assert report["measurements"]["stow"]["figures"] == {}
