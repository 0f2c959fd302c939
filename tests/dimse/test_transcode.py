"""dicom/transcode.py: decompression of every codec family we must handle, and lossless
compression for receivers that take only a compressed syntax (PS3.5 A.4)."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from peers import PYDICOM_TEST_FILES
from pydicom import dcmread
from pydicom.filereader import read_dataset

from dicomvault.dicom.transcode import TranscodeError, transcode
from dicomvault.net.fileio import read_file_info

EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"


def _data_set(path: Path) -> tuple[bytes, str]:
    info = read_file_info(path)
    return path.read_bytes()[info.data_offset :], info.transfer_syntax_uid


@pytest.mark.parametrize(
    "name",
    [
        "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline
        "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless SV1
        "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
        "JPEGLSNearLossless_16.dcm",  # JPEG-LS near-lossless
        "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
        "JPEG2000.dcm",  # JPEG 2000
        "MR_small_RLE.dcm",  # RLE
        "SC_rgb_rle_2frame.dcm",
    ],
)
@pytest.mark.parametrize("target", [EXPLICIT, IMPLICIT])
def test_decompress(name: str, target: str) -> None:
    path = PYDICOM_TEST_FILES / name
    data, syntax = _data_set(path)
    chosen, out = transcode(data, syntax, [target])
    assert chosen == target
    ds = read_dataset(BytesIO(out), target == IMPLICIT, True)
    ds.file_meta = dcmread(path, stop_before_pixels=True).file_meta
    ds.file_meta.TransferSyntaxUID = target
    expected = dcmread(path).pixel_array
    assert np.array_equal(ds.pixel_array, expected)
    assert ds.SOPInstanceUID == dcmread(path).SOPInstanceUID


@pytest.mark.parametrize(
    "target", ["1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90"]
)
def test_lossless_compression(target: str) -> None:
    path = PYDICOM_TEST_FILES / "CT_small.dcm"
    data, syntax = _data_set(path)
    chosen, out = transcode(data, syntax, [target])
    assert chosen == target
    ds = read_dataset(BytesIO(out), False, True)
    ds.file_meta = dcmread(path, stop_before_pixels=True).file_meta
    ds.file_meta.TransferSyntaxUID = target
    assert np.array_equal(ds.pixel_array, dcmread(path).pixel_array)


def test_native_preferred_and_refusals() -> None:
    data, syntax = _data_set(PYDICOM_TEST_FILES / "MR_small_RLE.dcm")
    chosen, _ = transcode(data, syntax, ["1.2.840.10008.1.2.4.90", EXPLICIT])
    assert chosen == EXPLICIT
    with pytest.raises(TranscodeError):
        transcode(data, syntax, ["1.2.840.10008.1.2.4.50"])  # lossy: never produced


@pytest.mark.parametrize(
    "syntax",
    ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"],
)
def test_failed_uid_list_in_every_syntax(syntax: str) -> None:
    import zlib

    from dicomvault.dimse.retrieve import failed_uid_list

    raw = failed_uid_list(["1.2.3", "1.2.44"], syntax)
    if syntax.endswith(".99"):
        raw = zlib.decompress(raw, -zlib.MAX_WBITS)
    ds = read_dataset(BytesIO(raw), syntax == IMPLICIT, not syntax.endswith("1.2.2"))
    assert list(ds.FailedSOPInstanceUIDList) == ["1.2.3", "1.2.44"]
