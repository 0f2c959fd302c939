"""Real DICOM files for the ``dicom/`` tests: pydicom's bundled ones, and small ones
written with pydicom into ``tmp_path``."""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
STUDY = "1.2.826.0.1.3680043.8.498.10"
SERIES = "1.2.826.0.1.3680043.8.498.10.1"
INSTANCE = "1.2.826.0.1.3680043.8.498.10.1.1"

ENCODINGS: dict[str, tuple[bool, bool]] = {
    ImplicitVRLittleEndian: (True, True),
    ExplicitVRLittleEndian: (False, True),
    ExplicitVRBigEndian: (False, False),
    DeflatedExplicitVRLittleEndian: (False, True),
}


def bundled_file(name: str) -> Path:
    """A file bundled with pydicom (test files or character set files)."""
    found = get_testdata_file(name)
    if found is None:
        charset = get_charset_files(name)
        assert charset, name
        return Path(charset[0])
    return Path(found)


def minimal_dataset(**attributes: object) -> Dataset:
    """A CT-like data set with the four identifying UIDs; ``attributes`` override."""
    with deliberately_invalid():
        return _minimal_dataset(attributes)


def _minimal_dataset(attributes: dict[str, object]) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = INSTANCE
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = SERIES
    ds.PatientID = "PID-1"
    ds.PatientName = "Doe^Jane"
    ds.Modality = "CT"
    for keyword, value in attributes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def encode_dataset(ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    """The data set alone (no preamble, no meta) in ``transfer_syntax``."""
    implicit, little = ENCODINGS[transfer_syntax]
    buffer = io.BytesIO()
    with deliberately_invalid():
        pydicom.dcmwrite(buffer, ds, implicit_vr=implicit, little_endian=little)
    return buffer.getvalue()


def write_part10(path: Path, ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> Path:
    """Write ``ds`` as a Part 10 file (preamble, DICM, file meta) with pydicom."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", CT_IMAGE_STORAGE)
    meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", INSTANCE)
    meta.TransferSyntaxUID = pydicom.uid.UID(transfer_syntax)
    ds.file_meta = meta
    with deliberately_invalid():
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def patch_bytes(path: Path, old: bytes, new: bytes, *, count: int = 1) -> Path:
    """Replace the first ``count`` occurrences of ``old`` (same length as ``new``)."""
    assert len(old) == len(new)
    data = path.read_bytes()
    assert data.count(old) >= count, old
    path.write_bytes(data.replace(old, new, count))
    return path


@contextmanager
def deliberately_invalid() -> Iterator[None]:
    """pydicom warns when a test builds an invalid value on purpose; silence only that."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def nested_sequences(depth: int) -> bytes:
    """Explicit VR LE bytes of (0040,A730) Content Sequences nested ``depth`` deep,
    all of undefined length (PS3.5 7.5.2)."""
    open_sq = struct.pack("<HH2sHL", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF)
    open_item = struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
    close_item = struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
    close_sq = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    return (open_sq + open_item) * depth + (close_item + close_sq) * depth


def with_request_attributes(ds: Dataset, pairs: list[tuple[str, str]]) -> Dataset:
    items = []
    for step, procedure in pairs:
        item = Dataset()
        item.ScheduledProcedureStepID = step
        item.RequestedProcedureID = procedure
        items.append(item)
    ds.RequestAttributesSequence = Sequence(items)
    return ds
