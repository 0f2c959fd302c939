"""Small real DICOM files for the tests, made with pydicom or taken from pydicom.data."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"


def bundled(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None, name
    return Path(path)


@contextmanager
def deliberately_invalid() -> Iterator[None]:
    """pydicom warns on values that break their VR; bad-input tests make them on purpose."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def make_dataset(
    *,
    sop_instance_uid: str | None = None,
    study: str = "1.2.826.0.1.3680043.8.498.1",
    series: str = "1.2.826.0.1.3680043.8.498.1.1",
    name: str = "Test^Patient",
    charset: str | None = None,
) -> Dataset:
    with deliberately_invalid():
        return _make_dataset(sop_instance_uid, study, series, name, charset)


def _make_dataset(
    sop_instance_uid: str | None, study: str, series: str, name: str, charset: str | None
) -> Dataset:
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = CT_SOP_CLASS
    ds.SOPInstanceUID = sop_instance_uid or generate_uid()
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.PatientName = name
    ds.PatientID = "PID1"
    ds.Modality = "CT"
    ds.StudyDate = "20260102"
    ds.InstanceNumber = 1
    ds.Rows = 4
    ds.Columns = 4
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(range(32))
    return ds


def write_part10(ds: Dataset, path: Path, *, syntax: str = ExplicitVRLittleEndian) -> Path:
    with deliberately_invalid():
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = syntax
        ds.file_meta = meta
        ds.save_as(path, enforce_file_format=True)
    return path


def write_bare(ds: Dataset, path: Path, *, implicit: bool = True) -> Path:
    """A data set with no preamble and no file meta, as old modalities write."""
    buf = io.BytesIO()
    with deliberately_invalid():
        ds.save_as(buf, implicit_vr=implicit, little_endian=True)
    path.write_bytes(buf.getvalue())
    return path


def dataset_bytes(path: Path) -> bytes:
    """The bytes after the file meta of a Part 10 file."""
    raw = path.read_bytes()
    ds = dcmread(path, stop_before_pixels=True)
    meta_len = ds.file_meta.FileMetaInformationGroupLength
    return raw[128 + 4 + 12 + meta_len :]


__all__ = [
    "ImplicitVRLittleEndian",
    "bundled",
    "dataset_bytes",
    "make_dataset",
    "write_bare",
    "write_part10",
]
