"""Locating frames (PS3.5 8.2, A.4) and bulk data values in stored files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames
from pydicom.uid import RLELossless

from dicomvault.dicom.bulkdata import BadBulkDataPath, locate, parse_path, read_header, read_value
from dicomvault.dicom.frames import (
    FrameOutOfRange,
    NoPixelData,
    decode_frame,
    pixel_layout,
    read_frame,
)
from dicomvault.model.errors import NotFound
from tests.core.dicomfiles import bundled

pytestmark = [
    pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning"),
]


def little(array: np.ndarray) -> bytes:
    return bytes(array.astype(array.dtype.newbyteorder("<")).tobytes())


@pytest.mark.parametrize(
    "name",
    [
        "rtdose.dcm",  # implicit VR, 15 frames
        "rtdose_expb.dcm",  # big endian, 15 frames
        "MR_small_bigendian.dcm",
        "SC_rgb_small_odd_big_endian.dcm",  # 8-bit samples in an OW value, odd length
        "image_dfl.dcm",  # deflated
        "CT_small.dcm",
    ],
)
def test_native_frames_equal_pixel_array(name: str) -> None:
    path = bundled(name)
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    with open(path, "rb") as fp:
        layout = pixel_layout(fp, read_header(fp))
        assert not layout.encapsulated
        frames = int(ds.get("NumberOfFrames", 1))
        assert layout.frames == frames
        for number in range(1, frames + 1):
            expected = pixels if frames == 1 else pixels[number - 1]
            assert read_frame(fp, layout, number) == little(expected)


def test_one_bit_frames_are_bit_packed() -> None:
    path = bundled("liver_1frame.dcm")
    ds = pydicom.dcmread(path)
    with open(path, "rb") as fp:
        layout = pixel_layout(fp, read_header(fp))
        assert read_frame(fp, layout, 1) == ds.PixelData[: 512 * 512 // 8]


@pytest.mark.parametrize("name", ["SC_rgb_rle_2frame.dcm", "rtdose_rle.dcm"])
def test_rle_frames_one_fragment_each(name: str) -> None:
    path = bundled(name)
    ds = pydicom.dcmread(path)
    expected = list(generate_frames(ds.PixelData, number_of_frames=ds.NumberOfFrames))
    with open(path, "rb") as fp:
        layout = pixel_layout(fp, read_header(fp))
        assert layout.encapsulated and layout.frames == len(expected)
        for number, frame in enumerate(expected, 1):
            assert read_frame(fp, layout, number) == frame
        assert decode_frame(fp, 2) == little(ds.pixel_array[1])


def _rle_variant(tmp_path: Path, how: str) -> tuple[Path, list[bytes]]:
    ds = pydicom.dcmread(bundled("SC_rgb_rle_2frame.dcm"))
    frames = list(generate_frames(ds.PixelData, number_of_frames=2))
    if how == "bot":
        ds.PixelData = encapsulate(frames, fragments_per_frame=3, has_bot=True)
    elif how == "extended":
        data, offsets, lengths = encapsulate_extended(frames)
        ds.PixelData = data
        ds.ExtendedOffsetTable = offsets
        ds.ExtendedOffsetTableLengths = lengths
    path = tmp_path / f"{how}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, frames


@pytest.mark.parametrize("how", ["bot", "extended"])
def test_offset_tables_group_fragments(tmp_path: Path, how: str) -> None:
    path, frames = _rle_variant(tmp_path, how)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == RLELossless
    with open(path, "rb") as fp:
        layout = pixel_layout(fp, read_header(fp))
        if how == "bot":
            assert [len(f) for f in layout.frame_fragments] == [3, 3]
        assert [read_frame(fp, layout, n) for n in (1, 2)] == frames


def test_jpeg_fragments_found_by_scanning_for_eoi(tmp_path: Path) -> None:
    ds = pydicom.dcmread(bundled("SC_rgb_jpeg_gdcm.dcm"))
    (frame,) = generate_frames(ds.PixelData, number_of_frames=1)
    # Two frames of three fragments each and no offset table: only FFD9 tells them apart.
    ds.PixelData = encapsulate([frame, frame], fragments_per_frame=3, has_bot=False)
    ds.NumberOfFrames = 2
    path = tmp_path / "scan.dcm"
    ds.save_as(path, enforce_file_format=True)
    with open(path, "rb") as fp:
        layout = pixel_layout(fp, read_header(fp))
        assert [len(f) for f in layout.frame_fragments] == [3, 3]
        assert read_frame(fp, layout, 2).rstrip(b"\0") == frame.rstrip(b"\0")
        assert decode_frame(fp, 2) == little(pydicom.dcmread(path).pixel_array[1])


def test_frame_numbers_and_missing_pixels() -> None:
    with open(bundled("rtdose.dcm"), "rb") as fp:
        layout = pixel_layout(fp, read_header(fp))
        with pytest.raises(FrameOutOfRange) as caught:
            read_frame(fp, layout, 16)
        assert caught.value.frames == 15
        with pytest.raises(FrameOutOfRange):
            read_frame(fp, layout, 0)
    with open(bundled("test-SR.dcm"), "rb") as fp, pytest.raises(NoPixelData):
        pixel_layout(fp, read_header(fp))


def test_bulk_paths() -> None:
    assert parse_path("7FE00010") == [0x7FE00010]
    assert parse_path("00540016/0/00181072") == [0x00540016, 0, 0x00181072]
    for bad in ("7FE0001", "00540016/0", "00540016/x/00181072", "zzzzzzzz"):
        with pytest.raises(BadBulkDataPath):
            parse_path(bad)


def test_bulk_values_top_level_nested_and_swapped() -> None:
    path = bundled("MR_small_bigendian.dcm")
    ds = pydicom.dcmread(path)
    with open(path, "rb") as fp:
        header = read_header(fp)
        value = locate(header, "7FE00010")
        assert value.swap == 2
        assert read_value(fp, header, value) == little(ds.pixel_array)
        with pytest.raises(NotFound):
            locate(header, "7FE00008")
    path = bundled("rtplan.dcm")
    ds = pydicom.dcmread(path)
    with open(path, "rb") as fp:
        header = read_header(fp)
        # (300A,0010) Dose Reference Sequence item 0, (300A,0012) Dose Reference Number.
        value = locate(header, "300A0010/0/300A0012")
        assert (
            read_value(fp, header, value).strip()
            == str(ds.DoseReferenceSequence[0].DoseReferenceNumber).encode()
        )
        with pytest.raises(NotFound):
            locate(header, "300A0010/99/300A0012")
