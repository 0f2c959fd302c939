"""DICOMDIR references (PS3.10 8, PS3.3 F.3)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest

from dicomvault.dicom import dicomdir_references, is_dicomdir
from dicomvault.model.errors import CannotParse
from tests.dicom.files import bundled_file, deliberately_invalid

DICOMDIR_TESTS = bundled_file("CT_small.dcm").parent / "dicomdirtests"


def _expected(dicomdir: Path) -> list[Path]:
    """The oracle: pydicom's view of the records' Referenced File IDs."""
    ds = pydicom.dcmread(dicomdir)
    out = []
    for record in ds.DirectoryRecordSequence:
        if "ReferencedFileID" in record:
            parts = record.ReferencedFileID
            parts = [parts] if isinstance(parts, str) else list(parts)
            out.append(dicomdir.parent.joinpath(*parts))
    return out


@pytest.fixture
def media(tmp_path: Path) -> Path:
    """A copy of pydicom's DICOMDIR test media."""
    root = tmp_path / "media"
    shutil.copytree(DICOMDIR_TESTS, root)
    return root


@pytest.mark.parametrize(
    "name",
    [
        "DICOMDIR",
        "DICOMDIR-implicit",
        "DICOMDIR-bigEnd",
        "DICOMDIR-reordered",
        "TINY_ALPHA/DICOMDIR",
    ],
)
def test_references_match_pydicom(name: str) -> None:
    path = DICOMDIR_TESTS / name
    expected = _expected(path)
    assert expected, "the oracle found no references"
    assert dicomdir_references(path) == expected
    assert all(p.is_file() for p in expected)


def test_empty_dicomdir() -> None:
    assert dicomdir_references(DICOMDIR_TESTS / "DICOMDIR-empty.dcm") == []


def test_names_matched_case_insensitively(media: Path) -> None:
    # Media written in upper case, mounted where the names came out in lower case.
    for folder in sorted(media.rglob("*"), key=lambda p: -len(p.parts)):
        if folder.name != folder.name.lower() and folder.parent != media.parent:
            folder.rename(folder.with_name(folder.name.lower()))
    refs = dicomdir_references(media / "tiny_alpha" / "dicomdir")
    assert len(refs) == 50
    assert all(p.is_file() and str(p) == str(p).lower() for p in refs)


def test_missing_files_are_left_out(media: Path) -> None:
    shutil.rmtree(media / "77654033" / "CT2")
    refs = dicomdir_references(media / "DICOMDIR")
    assert len(refs) == len(_expected(media / "DICOMDIR")) - 4
    assert all("CT2" not in p.parts for p in refs)


def _rewrite_first_reference(dicomdir: Path, parts: list[str]) -> None:
    ds = pydicom.dcmread(dicomdir)
    with deliberately_invalid():  # ".." is no valid CS: that is the point
        for record in ds.DirectoryRecordSequence:
            if "ReferencedFileID" in record:
                record.ReferencedFileID = parts
                break
        ds.save_as(dicomdir)


def test_references_escaping_the_folder_are_skipped(media: Path, tmp_path: Path) -> None:
    secret = tmp_path / "SECRET"
    secret.write_bytes(b"not for import")
    before = dicomdir_references(media / "DICOMDIR")
    _rewrite_first_reference(media / "DICOMDIR", ["..", "SECRET"])
    after = dicomdir_references(media / "DICOMDIR")
    assert secret not in after and len(after) == len(before) - 1


def test_symlink_out_of_the_folder_is_skipped(media: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "IMG").write_bytes(b"x")
    (media / "LINK").symlink_to(outside)
    _rewrite_first_reference(media / "DICOMDIR", ["LINK", "IMG"])
    refs = dicomdir_references(media / "DICOMDIR")
    assert all("LINK" not in p.parts for p in refs)


def test_is_dicomdir(tmp_path: Path) -> None:
    assert is_dicomdir(DICOMDIR_TESTS / "DICOMDIR")
    assert not is_dicomdir(bundled_file("CT_small.dcm"))
    assert not is_dicomdir(DICOMDIR_TESTS / "README.txt")
    assert not is_dicomdir(tmp_path / "absent")
    assert dicomdir_references(bundled_file("CT_small.dcm")) == []


def test_truncated_dicomdir(tmp_path: Path) -> None:
    data = (DICOMDIR_TESTS / "DICOMDIR").read_bytes()
    cut = tmp_path / "DICOMDIR"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CannotParse):
        dicomdir_references(cut)
