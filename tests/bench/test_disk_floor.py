"""Tests for the disk's durable-write ceiling ``bench.disk_floor``."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import disk_floor


def _sources(tmp_path: Path, count: int) -> list[Path]:
    folder = tmp_path / "sources"
    folder.mkdir()
    paths = []
    for number in range(count):
        path = folder / f"{number}.dcm"
        path.write_bytes(bytes([number]) * (1000 + number))
        paths.append(path)
    return paths


def test_every_file_is_written_whole_by_its_stream(tmp_path: Path) -> None:
    sources = _sources(tmp_path, 7)
    out = tmp_path / "out"
    out.mkdir()
    rate = disk_floor.durable_write_floor(sources, 3, out)
    assert rate > 0
    # Stream k writes files k, k+3, k+6 ... of the list, numbered in its own order.
    written = {path.name: path.read_bytes() for path in out.iterdir()}
    expected = {
        f"{stream}-{number}": sources[stream + 3 * number].read_bytes()
        for stream in range(3)
        for number in range(len(sources[stream::3]))
    }
    assert written == expected


def test_more_streams_than_files_and_no_files(tmp_path: Path) -> None:
    sources = _sources(tmp_path, 2)
    out = tmp_path / "out"
    out.mkdir()
    assert disk_floor.durable_write_floor(sources, 5, out) > 0
    assert sorted(path.name for path in out.iterdir()) == ["0-0", "1-0"]
    assert disk_floor.durable_write_floor([], 4, out) == 0.0
    with pytest.raises(ValueError, match="at least 1"):
        disk_floor.durable_write_floor(sources, 0, out)


def test_a_writer_that_fails_fails_the_measurement(tmp_path: Path) -> None:
    sources = _sources(tmp_path, 4)
    with pytest.raises(FileNotFoundError):
        disk_floor.durable_write_floor(sources, 2, tmp_path / "no-such-directory")
    out = tmp_path / "out"
    out.mkdir()
    (out / "1-0").write_bytes(b"there already")  # O_EXCL: never overwrites
    with pytest.raises(FileExistsError):
        disk_floor.durable_write_floor(sources, 2, out)


def test_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sources = _sources(tmp_path, 3)
    monkeypatch.setattr(disk_floor.datasets, "cached", lambda kind, count: sources[:count])
    argv = ["small", "--count", "3", "--streams", "2", "--repeat", "2"]
    assert disk_floor.main([*argv, "--work-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert all(line.startswith("small: 3 files, 2 streams: ") for line in lines)
    assert not list(tmp_path.glob("bench-floor-*"))  # removed at the end
