"""bench_workflow runs end to end on a tiny set (the figures themselves are not checked:
benchmarks print, tests assert behaviour)."""

from __future__ import annotations

import pytest

from bench import bench_workflow


def test_bench_workflow_small(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_workflow.main(["--instances", "12", "--items", "90", "--runs", "3"]) == 0
    out = capsys.readouterr().out
    assert "storage commitment of 12 x 0.5 MB" in out
    assert "C-FIND station-today:" in out and "C-FIND patient-id:" in out
