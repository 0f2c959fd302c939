"""Tests for the deterministic synthetic data sets in ``bench.datasets``."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from bench import datasets


def _bytes(paths: list[Path]) -> list[bytes]:
    return [p.read_bytes() for p in paths]


def test_ct_series_is_deterministic_and_readable(tmp_path: Path) -> None:
    first = datasets.ct_series(
        tmp_path / "a", 6, rows=64, cols=64, patients=2, studies_per_patient=1, series_per_study=3
    )
    second = datasets.ct_series(
        tmp_path / "b", 6, rows=64, cols=64, patients=2, studies_per_patient=1, series_per_study=3
    )
    assert _bytes(first) == _bytes(second)

    parsed = [pydicom.dcmread(p) for p in first]
    assert {ds.SOPClassUID for ds in parsed} == {datasets.CT_IMAGE_STORAGE}
    assert len({ds.SOPInstanceUID for ds in parsed}) == 6
    assert len({ds.PatientID for ds in parsed}) == 2
    assert len({ds.SeriesInstanceUID for ds in parsed}) == 6
    assert parsed[0].pixel_array.shape == (64, 64)
    assert parsed[0].file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian


def test_ct_series_default_size_is_half_a_megabyte(tmp_path: Path) -> None:
    (path,) = datasets.ct_series(tmp_path, 1)
    assert 512 * 512 * 2 < path.stat().st_size < 512 * 512 * 2 + 4096


def test_different_seeds_give_different_uids(tmp_path: Path) -> None:
    (a,) = datasets.ct_series(tmp_path / "a", 1, rows=8, cols=8, seed=1)
    (b,) = datasets.ct_series(tmp_path / "b", 1, rows=8, cols=8, seed=5)
    assert pydicom.dcmread(a).SOPInstanceUID != pydicom.dcmread(b).SOPInstanceUID


def test_small_instances_size_and_determinism(tmp_path: Path) -> None:
    first = datasets.small_instances(tmp_path / "a", 3)
    assert _bytes(first) == _bytes(datasets.small_instances(tmp_path / "b", 3))
    for path in first:
        assert 9_000 <= path.stat().st_size <= 11_000
        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID == datasets.SECONDARY_CAPTURE_STORAGE
        assert ds.pixel_array.dtype.itemsize == 1


def test_large_multiframe_streams_a_valid_file(tmp_path: Path) -> None:
    size = 5 * 1024 * 1024
    a = datasets.large_multiframe(tmp_path / "a.dcm", size_bytes=size)
    b = datasets.large_multiframe(tmp_path / "b.dcm", size_bytes=size)
    assert a.read_bytes() == b.read_bytes()

    ds = pydicom.dcmread(a)
    assert ds.SOPClassUID == datasets.MULTIFRAME_WORD_SC_STORAGE
    assert int(ds.NumberOfFrames) == 10
    assert len(ds.PixelData) == 10 * 512 * 512 * 2
    assert ds.pixel_array.shape == (10, 512, 512)
    # The pixel data element is the last one and its declared length reaches the end of file.
    assert a.stat().st_size - len(ds.PixelData) - 12 > 0
    header = pydicom.dcmread(a, stop_before_pixels=True)
    assert "PixelData" not in header


def test_large_multiframe_rejects_oversize(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        datasets.large_multiframe(tmp_path / "x.dcm", size_bytes=1 << 33)


def test_cached_reuses_files(tmp_path: Path) -> None:
    first = datasets.cached("small", 2, cache_root=tmp_path, size=2_000)
    mtimes = [p.stat().st_mtime_ns for p in first]
    again = datasets.cached("small", 2, cache_root=tmp_path, size=2_000)
    assert again == first
    assert [p.stat().st_mtime_ns for p in again] == mtimes
    with pytest.raises(ValueError):
        datasets.cached("nope", 1, cache_root=tmp_path)


def test_cli_writes_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert datasets.main(["small", str(tmp_path), "--count", "2"]) == 0
    assert len(list(tmp_path.glob("*.dcm"))) == 2
    assert "wrote 2 files" in capsys.readouterr().out
