"""The rendering pipeline of ``dicom/render.py`` (PS3.4 N.2 grayscale and color steps,
PS3.18 8.3.5.1 viewport and window) on pydicom's files and on small data sets built
here for what those files lack (VOI LUT, enhanced multi-frame functional groups)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicomvault.dicom.render import (
    JPEG,
    PNG,
    CannotDecode,
    FrameOutOfRange,
    NoPixelData,
    RegionOutsideImage,
    StoredImage,
    Viewport,
    Window,
    apply_viewport,
    display_pixels,
    encode,
    render,
    to_8bit,
    windowing_range,
)


def bundled(name: str) -> Path:
    found = get_testdata_file(name)
    assert found is not None, name
    return Path(found)


def open_image(path: Path) -> StoredImage:
    return StoredImage(io.BytesIO(path.read_bytes()))


def image_file(tmp_path: Path, ds: Dataset) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    path = tmp_path / "image.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def gray_dataset(frames: int, pixels: np.ndarray) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"  # Enhanced MR Image Storage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    return ds


def test_to_8bit_rounds_and_clips() -> None:
    values = np.array([-10.0, 0.0, 0.5, 1.0, 2.0, 3.0, 99.0])
    assert to_8bit(values, 0, 2).tolist() == [0, 0, 64, 128, 255, 255, 255]
    assert to_8bit(np.array([5, 5]), 5, 5).tolist() == [0, 0]


def test_windowing_range_follows_rescale() -> None:
    attrs = Dataset()
    attrs.BitsStored = 12
    attrs.PixelRepresentation = 0
    assert windowing_range(attrs) == (0, 4095)
    attrs.RescaleSlope, attrs.RescaleIntercept = 2, -1024
    assert windowing_range(attrs) == (-1024, 4095 * 2 - 1024)
    attrs.PixelRepresentation = 1
    assert windowing_range(attrs) == (-2048 * 2 - 1024, 2047 * 2 - 1024)


def test_viewport_crops_flips_and_fits() -> None:
    image = np.arange(12 * 8, dtype=np.uint8).reshape(8, 12)
    assert apply_viewport(image, None) is image
    crop = apply_viewport(image, Viewport(4, 2, 2, 1, 4, 2))
    assert np.array_equal(crop, image[1:3, 2:6])
    flipped = apply_viewport(image, Viewport(4, 2, 6, 3, -4, -2))
    assert np.array_equal(flipped, image[1:3, 2:6][::-1, ::-1])
    assert apply_viewport(image, Viewport(6, 6)).shape == (4, 6)
    assert apply_viewport(image, Viewport(24, 100)).shape == (16, 24)
    assert apply_viewport(image, Viewport(24, 100), upscale=False).shape == (8, 12)
    for bad in (Viewport(4, 4, 10, 0, 4, 4), Viewport(4, 4, 0, 0, -1, 4), Viewport(4, 4, 12)):
        with pytest.raises(RegionOutsideImage, match="viewport"):
            apply_viewport(image, bad)


def test_encodings() -> None:
    image = np.zeros((10, 20, 3), dtype=np.uint8)
    image[:, :10] = (255, 0, 0)
    png = Image.open(io.BytesIO(encode(image, PNG)))
    assert png.format == "PNG"
    assert np.array_equal(np.asarray(png), image)
    jpeg = Image.open(io.BytesIO(encode(image, JPEG, 50)))
    assert jpeg.format == "JPEG"
    assert "progressive" not in jpeg.info  # baseline process, PS3.18 8.7.4
    with pytest.raises(ValueError, match="image/gif"):
        encode(image, "image/gif")


def test_frames_are_checked() -> None:
    image = open_image(bundled("rtdose.dcm"))
    assert image.number_of_frames == 15
    for frame in (0, 16):
        with pytest.raises(FrameOutOfRange, match=f"frame {frame} "):
            image.display(frame)
    assert image.display(15).shape == (10, 10)


def test_not_an_image_and_not_decodable() -> None:
    with pytest.raises(NoPixelData):
        open_image(bundled("rtplan.dcm"))
    with pytest.raises(CannotDecode, match=r"1\.2\.840\.10008\.1\.2\.4\.51"):
        open_image(bundled("JPGExtended.dcm")).display(1)
    with pytest.raises(NoPixelData):  # whatever the bytes are, they hold no image
        StoredImage(io.BytesIO(b"\x00" * 10))


def test_deflated_file_renders() -> None:
    image = open_image(bundled("image_dfl.dcm"))
    ds = pydicom.dcmread(bundled("image_dfl.dcm"))
    values = ds.pixel_array
    expected = to_8bit(values, float(values.min()), float(values.max()))
    assert np.array_equal(image.display(1), expected)


def test_voi_lut_sequence_is_used(tmp_path: Path) -> None:
    pixels = np.arange(16, dtype=np.uint16).reshape(4, 4) * 16
    ds = gray_dataset(1, pixels)
    del ds.NumberOfFrames
    item = Dataset()
    item.LUTDescriptor = [256, 0, 8]
    item.add_new(0x00283006, "US", [255 - i for i in range(256)])  # LUT Data
    ds.VOILUTSequence = Sequence([item])
    ds.WindowCenter, ds.WindowWidth = 100, 10  # the LUT wins (PS3.4 N.2.1.1)
    got = open_image(image_file(tmp_path, ds)).display(1)
    assert np.array_equal(got, 255 - pixels)


def test_enhanced_frames_use_their_functional_groups(tmp_path: Path) -> None:
    pixels = np.tile(np.arange(0, 4000, 250, dtype=np.uint16).reshape(4, 4), (2, 1, 1))
    ds = gray_dataset(2, pixels)
    shared = Dataset()
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 1, -1000, "US"
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for center, width in ((0, 1000), (2000, 4000)):
        group = Dataset()
        voi = Dataset()
        voi.WindowCenter, voi.WindowWidth = center, width
        group.FrameVOILUTSequence = Sequence([voi])
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    image = open_image(image_file(tmp_path, ds))
    first, second = image.display(1), image.display(2)
    assert not np.array_equal(first, second)
    lo, hi = -1000.0, 4095.0 - 1000.0
    for got, (center, width) in ((first, (0, 1000)), (second, (2000, 4000))):
        values = pixels[0].astype(np.float64) - 1000
        c, w = center - 0.5, width - 1
        linear = ((values - c) / w + 0.5) * (hi - lo) + lo
        expected = np.where(values <= c - w / 2, lo, np.where(values > c + w / 2, hi, linear))
        assert np.array_equal(got, to_8bit(expected, lo, hi))


def test_window_overrides_and_monochrome1_inverts() -> None:
    attrs = Dataset()
    attrs.PhotometricInterpretation = "MONOCHROME1"
    attrs.BitsStored = 8
    attrs.PixelRepresentation = 0
    pixels = np.array([[0, 100, 200, 255]], dtype=np.uint8)
    got = display_pixels(pixels, attrs, Window(100, 101, "LINEAR_EXACT"))
    assert got.tolist() == [[255, 127, 0, 0]]  # 255 - rint(127.5)
    attrs.PhotometricInterpretation = "MONOCHROME2"
    assert display_pixels(pixels, attrs).tolist() == [[0, 100, 200, 255]]  # min–max


def test_unsupported_photometric_interpretation() -> None:
    attrs = Dataset()
    attrs.PhotometricInterpretation = "YBR_PARTIAL_420"
    with pytest.raises(CannotDecode, match="YBR_PARTIAL_420"):
        display_pixels(np.zeros((2, 2, 3), dtype=np.uint8), attrs)


def test_render_whole_pipeline_on_ybr_multiframe() -> None:
    image = open_image(bundled("examples_ybr_color.dcm"))
    assert image.number_of_frames == 30
    body = render(image, 30, JPEG, viewport=Viewport(160, 160), quality=80)
    picture = Image.open(io.BytesIO(body))
    assert (picture.format, picture.size, picture.mode) == ("JPEG", (160, 120), "RGB")
