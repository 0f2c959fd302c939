"""A 1 GB multi-frame instance parses with flat memory: pixel data is never read.

The files are sparse (the pixel data is a hole), so they cost no disk and no time to
write; parse_instance must still check that every byte it skips is there.
"""

from __future__ import annotations

import json
import struct
import tracemalloc
import zlib
from pathlib import Path

import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, JPEG2000Lossless

from dicomvault.dicom import encode_file_meta, parse_instance
from dicomvault.model.errors import CannotParse
from tests.dicom.files import CT_IMAGE_STORAGE, INSTANCE, encode_dataset, minimal_dataset

GIB = 1 << 30
FRAMES = 1024
LIMIT = 50 * 1024 * 1024
TRAILER = struct.pack("<HH2sHL", 0xFFFC, 0xFFFC, b"OB", 0, 4) + b"\0\0\0\0"


def _header(ts: str) -> bytes:
    ds = minimal_dataset(Rows=512, Columns=1024, BitsAllocated=16, NumberOfFrames=str(FRAMES))
    return encode_file_meta(CT_IMAGE_STORAGE, INSTANCE, ts) + encode_dataset(ds)


def _native(path: Path) -> Path:
    with open(path, "wb") as fp:
        fp.write(_header(ExplicitVRLittleEndian))
        fp.write(struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, GIB))
        fp.seek(GIB, 1)  # the frames: a hole
        fp.write(TRAILER)
    return path


def _encapsulated(path: Path) -> Path:
    fragment = GIB // FRAMES
    with open(path, "wb") as fp:
        fp.write(_header(JPEG2000Lossless))
        fp.write(struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF))
        fp.write(struct.pack("<HHL", 0xFFFE, 0xE000, 0))  # empty Basic Offset Table
        for _ in range(FRAMES):
            fp.write(struct.pack("<HHL", 0xFFFE, 0xE000, fragment))
            fp.seek(fragment, 1)
        fp.write(struct.pack("<HHL", 0xFFFE, 0xE0DD, 0))
        fp.write(TRAILER)
    return path


def _peak_while_parsing(path: Path, frames: int = FRAMES) -> int:
    tracemalloc.start()
    try:
        parsed = parse_instance(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    model = json.loads(parsed.record.metadata_json)
    assert "7FE00010" in model and "BulkDataURI" in model["7FE00010"]
    assert "FFFCFFFC" in model  # read past the pixel data, without reading it
    assert parsed.record.instance.number_of_frames == frames
    return peak


@pytest.mark.parametrize("make", [_native, _encapsulated])
def test_one_gigabyte_parses_with_flat_memory(tmp_path: Path, make: object) -> None:
    path = make(tmp_path / "big.dcm")  # type: ignore[operator]
    assert path.stat().st_size > GIB
    assert _peak_while_parsing(path) < LIMIT


@pytest.mark.parametrize("make", [_native, _encapsulated])
def test_one_gigabyte_cut_short_is_truncated(tmp_path: Path, make: object) -> None:
    path = make(tmp_path / "big.dcm")  # type: ignore[operator]
    with open(path, "r+b") as fp:
        fp.truncate(GIB // 2)
    with pytest.raises(CannotParse, match=r"truncated: Pixel Data \(7FE0,0010\)"):
        parse_instance(path)


def test_deflated_pixel_data_is_inflated_and_dropped_in_chunks(tmp_path: Path) -> None:
    """PS3.5 A.5: the whole data set is deflated, so skipping pixel data means inflating
    it; that must happen a chunk at a time, not in one buffer as pydicom does."""
    size = 200 * 1024 * 1024
    ds = minimal_dataset(Rows=1024, Columns=1024, BitsAllocated=16, NumberOfFrames="100")
    meta = encode_file_meta(CT_IMAGE_STORAGE, INSTANCE, DeflatedExplicitVRLittleEndian)
    path = tmp_path / "deflated.dcm"
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    with open(path, "wb") as fp:
        fp.write(meta)
        fp.write(deflater.compress(encode_dataset(ds)))
        fp.write(deflater.compress(struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, size)))
        for _ in range(size // len(zeros)):
            fp.write(deflater.compress(zeros))
        fp.write(deflater.compress(TRAILER))
        fp.write(deflater.flush())
    assert path.stat().st_size < 1024 * 1024
    assert _peak_while_parsing(path, frames=100) < LIMIT
