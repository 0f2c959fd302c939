"""Frames of a stored image (PS3.18 10.4.1.1.6 Retrieve Frames; PS3.5 8.2, A.4).

Native (uncompressed) Pixel Data: frame *n* is the byte range ``[(n-1)·F, n·F)`` of the
value, ``F = Rows · Columns · Samples per Pixel · Bits Allocated / 8`` (PS3.5 8.1.1; the
frames of a 1-bit image are bit-packed back to back, so a frame that does not start on a
byte boundary is extracted bit by bit).

Encapsulated Pixel Data (PS3.5 A.4): a Basic Offset Table item, then fragments. A frame's
fragments are found, in this order of trust:

1. the Extended Offset Table (7FE0,0001) with its lengths (7FE0,0002) (PS3.3 C.7.6.3.1.8);
2. the Basic Offset Table, when not empty (PS3.5 A.4, Table A.4-1);
3. one fragment per frame, when there are as many fragments as frames (always so for
   RLE, PS3.5 A.4.2);
4. all fragments, when there is one frame;
5. scanning: a JPEG, JPEG-LS or JPEG 2000 frame ends with its EOI/EOC marker ``FFD9``
   (possibly followed by one padding byte), so a fragment ending so closes a frame.

Only item headers (8 bytes each) are read to find them; a frame's bytes are read when it
is sent. Decompression (when the client cannot take the stored syntax) uses pydicom's
pixel decoders, one frame at a time.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

from dicomvault.dicom.bulkdata import BulkValue, Header, locate, read_value, swap_bytes
from dicomvault.dicom.reader import ITEM, SEQUENCE_DELIMITATION, UNDEFINED_LENGTH, Element
from dicomvault.model.errors import CannotParse

PIXEL_DATA = 0x7FE00010
FLOAT_PIXEL_DATA = 0x7FE00008
DOUBLE_FLOAT_PIXEL_DATA = 0x7FE00009
EXTENDED_OFFSET_TABLE = 0x7FE00001
EXTENDED_OFFSET_TABLE_LENGTHS = 0x7FE00002
ROWS = 0x00280010
COLUMNS = 0x00280011
SAMPLES_PER_PIXEL = 0x00280002
BITS_ALLOCATED = 0x00280100
NUMBER_OF_FRAMES = 0x00280008
#: Most fragments an encapsulated Pixel Data may have before we call it damaged.
MAX_FRAGMENTS = 1_000_000
_ITEM_HEADER = struct.Struct("<HHL")


class NoPixelData(ValueError):
    """The instance has no Pixel Data (or Float/Double Float Pixel Data)."""


class FrameOutOfRange(ValueError):
    """A frame number below 1 or above Number of Frames."""

    def __init__(self, number: int, frames: int) -> None:
        super().__init__(f"frame {number} does not exist: the instance has {frames} frame(s)")
        self.number = number
        self.frames = frames


@dataclass(frozen=True, slots=True)
class Fragment:
    """One fragment's value, ``[offset, offset + length)`` in the file."""

    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class PixelLayout:
    """Where the frames of one instance lie."""

    transfer_syntax_uid: str
    frames: int
    encapsulated: bool
    #: Native: the value's offset in the data set stream and the bits per frame.
    offset: int
    length: int
    frame_bits: int
    #: Encapsulated: each frame's fragments.
    frame_fragments: tuple[tuple[Fragment, ...], ...]
    #: The header the layout came from (for reading native values).
    header: Header


def _int(ds: dict[int, Element], tag: int, little: bool, default: int) -> int:
    element = ds.get(tag)
    if element is None or not isinstance(element.value, bytes) or not element.value:
        return default
    raw = element.value
    if element.vr in ("IS", "DS", "LO", "SH", "UN") and tag == NUMBER_OF_FRAMES:
        text = raw.decode("ascii", errors="replace").strip(" \0")
        try:
            return int(float(text)) if text else default
        except ValueError:
            return default
    if len(raw) >= 2:
        return int(struct.unpack("<H" if little else ">H", raw[:2])[0])
    return default


def pixel_layout(fp: BinaryIO, header: Header) -> PixelLayout:
    """Locate every frame of the stored instance whose header is ``header``.

    Raises
    ------
    NoPixelData
        No (7FE0,0010), (7FE0,0008) or (7FE0,0009).
    CannotParse
        Fragments that do not add up to the frames.
    """
    ds = header.dataset
    element = ds.get(PIXEL_DATA) or ds.get(FLOAT_PIXEL_DATA) or ds.get(DOUBLE_FLOAT_PIXEL_DATA)
    if element is None:
        raise NoPixelData("the instance has no pixel data")
    frames = max(_int(ds, NUMBER_OF_FRAMES, header.little, 1), 1)
    syntax = header.transfer_syntax_uid
    if element.length != UNDEFINED_LENGTH:
        rows = _int(ds, ROWS, header.little, 0)
        columns = _int(ds, COLUMNS, header.little, 0)
        samples = _int(ds, SAMPLES_PER_PIXEL, header.little, 1)
        bits = _int(ds, BITS_ALLOCATED, header.little, 8)
        if element is not ds.get(PIXEL_DATA):
            bits = 32 if element is ds.get(FLOAT_PIXEL_DATA) else 64
        frame_bits = rows * columns * samples * bits
        if frame_bits == 0 or frame_bits * frames > element.length * 8:
            raise CannotParse(
                f"Pixel Data holds {element.length} bytes, too few for {frames} frame(s) of "
                f"{rows}x{columns}x{samples} at {bits} bits"
            )
        return PixelLayout(
            syntax, frames, False, element.offset, element.length, frame_bits, (), header
        )
    fragments, offsets = _fragments(fp, element.offset)
    grouped = _group(fp, header, fragments, offsets, frames)
    return PixelLayout(syntax, len(grouped), True, element.offset, 0, 0, grouped, header)


def _fragments(fp: BinaryIO, start: int) -> tuple[list[Fragment], list[int]]:
    """The fragments after the Basic Offset Table at ``start`` and the table's offsets."""
    fp.seek(start)
    head = fp.read(8)
    if len(head) < 8:
        raise CannotParse("truncated: encapsulated Pixel Data has no Basic Offset Table")
    group, elem, length = _ITEM_HEADER.unpack(head)
    if group << 16 | elem != ITEM:
        raise CannotParse("malformed: encapsulated Pixel Data does not start with an item")
    table = fp.read(length)
    offsets = list(struct.unpack(f"<{length // 4}L", table[: length - length % 4]))
    fragments: list[Fragment] = []
    pos = start + 8 + length
    while len(fragments) < MAX_FRAGMENTS:
        fp.seek(pos)
        head = fp.read(8)
        if len(head) < 8:
            raise CannotParse("truncated: encapsulated Pixel Data has no sequence delimiter")
        group, elem, length = _ITEM_HEADER.unpack(head)
        tag = group << 16 | elem
        if tag == SEQUENCE_DELIMITATION:
            return fragments, offsets
        if tag != ITEM or length == UNDEFINED_LENGTH:
            raise CannotParse(f"malformed: Pixel Data fragment has tag ({group:04X},{elem:04X})")
        fragments.append(Fragment(pos + 8, length))
        pos += 8 + length
    raise CannotParse(f"malformed: Pixel Data has more than {MAX_FRAGMENTS} fragments")


def _extended_offsets(fp: BinaryIO, header: Header) -> tuple[list[int], list[int]] | None:
    ds = header.dataset
    table = ds.get(EXTENDED_OFFSET_TABLE)
    lengths = ds.get(EXTENDED_OFFSET_TABLE_LENGTHS)
    if table is None or lengths is None or not table.length or not lengths.length:
        return None
    raw_offsets = read_value(fp, header, locate(header, f"{EXTENDED_OFFSET_TABLE:08X}"))
    raw_lengths = read_value(fp, header, locate(header, f"{EXTENDED_OFFSET_TABLE_LENGTHS:08X}"))
    n = len(raw_offsets) // 8
    if n == 0 or len(raw_lengths) // 8 != n:
        return None
    return list(struct.unpack(f"<{n}Q", raw_offsets[: n * 8])), list(
        struct.unpack(f"<{n}Q", raw_lengths[: n * 8])
    )


def _ends_frame(fp: BinaryIO, fragment: Fragment) -> bool:
    """Whether the fragment ends with the JPEG EOI / JPEG 2000 EOC marker ``FFD9``."""
    if fragment.length < 2:
        return False
    tail = min(fragment.length, 3)
    fp.seek(fragment.offset + fragment.length - tail)
    end = fp.read(tail)
    return end.endswith(b"\xff\xd9") or (end[-3:-1] == b"\xff\xd9" and end[-1] == 0)


def _group(
    fp: BinaryIO,
    header: Header,
    fragments: list[Fragment],
    offsets: list[int],
    frames: int,
) -> tuple[tuple[Fragment, ...], ...]:
    """Each frame's fragments; see the module docstring for the order of the rules."""
    if not fragments:
        raise CannotParse("malformed: encapsulated Pixel Data has no fragments")
    first = fragments[0].offset - 8  # offsets count from the first fragment's item tag
    extended = _extended_offsets(fp, header)
    if extended is not None and len(extended[0]) == frames:
        # PS3.3 C.7.6.3.1.8: each frame is one fragment; offsets point at its item tag.
        return tuple(
            (Fragment(first + start + 8, length),) for start, length in zip(*extended, strict=True)
        )
    if offsets and len(offsets) == frames:
        starts = [first + o for o in offsets] + [fragments[-1].offset + fragments[-1].length]
        grouped = [
            tuple(f for f in fragments if begin <= f.offset - 8 < end)
            for begin, end in itertools.pairwise(starts)
        ]
        if all(grouped) and sum(len(g) for g in grouped) == len(fragments):
            return tuple(grouped)
    if len(fragments) == frames:
        return tuple((f,) for f in fragments)
    if frames == 1:
        return (tuple(fragments),)
    grouped_scan: list[tuple[Fragment, ...]] = []
    current: list[Fragment] = []
    for fragment in fragments:
        current.append(fragment)
        if _ends_frame(fp, fragment):
            grouped_scan.append(tuple(current))
            current = []
    if current:
        grouped_scan.append(tuple(current))
    if len(grouped_scan) != frames:
        raise CannotParse(
            f"cannot tell the {frames} frames apart: {len(fragments)} fragments, no offset table"
        )
    return tuple(grouped_scan)


def check_numbers(layout: PixelLayout, numbers: Sequence[int]) -> None:
    """Raise :class:`FrameOutOfRange` for the first number outside 1..frames."""
    for number in numbers:
        if not 1 <= number <= layout.frames:
            raise FrameOutOfRange(number, layout.frames)


def read_frame(fp: BinaryIO, layout: PixelLayout, number: int) -> bytes:
    """Frame ``number`` (1-based) as stored: encapsulated fragments joined (PS3.18
    8.7.3.3.2: the compressed stream without item delimiters), or native bytes, little
    endian (PS3.18 8.7.3.3.1)."""
    check_numbers(layout, [number])
    if layout.encapsulated:
        parts = []
        for fragment in layout.frame_fragments[number - 1]:
            fp.seek(fragment.offset)
            data = fp.read(fragment.length)
            if len(data) != fragment.length:
                raise CannotParse("truncated: the stored file ends inside a frame")
            parts.append(data)
        return b"".join(parts)
    header = layout.header
    start_bit = (number - 1) * layout.frame_bits
    first, last = start_bit // 8, (start_bit + layout.frame_bits + 7) // 8
    # Big endian values are swapped in units counted from the value's start, so read
    # whole units around the frame (8-bit pixels in OW: a frame may start mid-word).
    width = 1 if header.little else _swap_width(layout)
    lead = first % width
    end = min(-(-last // width) * width, layout.length)
    if header.deflated:
        value = BulkValue("OB", layout.offset + first - lead, end - first + lead, False, True, 0)
        data = read_value(fp, header, value)
    else:
        fp.seek(layout.offset + first - lead)
        data = fp.read(end - first + lead)
        if len(data) != end - first + lead:
            raise CannotParse("truncated: the stored file ends inside a frame")
    if width > 1:
        data = swap_bytes(data, width)
    data = data[lead : lead + last - first]
    if start_bit % 8 or layout.frame_bits % 8:
        data = _bit_slice(data, start_bit % 8, layout.frame_bits)
    return data


def _swap_width(layout: PixelLayout) -> int:
    """Bytes per swapped unit of big endian native pixel data (PS3.5 7.3, 8.1.1): the
    pixel size, except that 8-bit pixels in an OW value were written as 16-bit words."""
    ds = layout.header.dataset
    element = ds.get(PIXEL_DATA)
    if element is None:
        return 4 if FLOAT_PIXEL_DATA in ds else 8
    bits = _int(ds, BITS_ALLOCATED, layout.header.little, 8)
    if bits > 8:
        return bits // 8
    return 2 if element.vr == "OW" else 1


def _bit_slice(data: bytes, skip: int, count: int) -> bytes:
    """``count`` bits of ``data`` starting ``skip`` bits in (PS3.5 D.2: the first pixel
    is the least significant bit), repacked from bit 0."""
    value = int.from_bytes(data, "little") >> skip
    value &= (1 << count) - 1
    return value.to_bytes((count + 7) // 8, "little")


def decode_frame(fp: BinaryIO, number: int) -> bytes:
    """Frame ``number`` (1-based) decompressed to native little endian bytes (PS3.18
    8.7.3.3.1), by pydicom's decoders. Colour frames come out as pydicom gives them:
    YCbCr JPEG converted to RGB, samples interleaved (Planar Configuration 0).

    Raises
    ------
    ValueError, RuntimeError, NotImplementedError
        No decoder available for the stored transfer syntax, or the data is damaged.
    """
    from pydicom.pixels.utils import pixel_array

    fp.seek(0)
    array = pixel_array(fp, index=number - 1)
    return bytes(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())


#: PS3.18 Table 8.7.3-5: the media type of compressed frames in each transfer syntax
#: (first: the standard's; then aliases that viewers use, e.g. OHIF's image/x-dicom-rle).
COMPRESSED_MEDIA_TYPES: dict[str, tuple[str, ...]] = {
    "1.2.840.10008.1.2.4.50": ("image/jpeg",),
    "1.2.840.10008.1.2.4.51": ("image/jpeg",),
    "1.2.840.10008.1.2.4.57": ("image/jpeg",),
    "1.2.840.10008.1.2.4.70": ("image/jpeg",),
    "1.2.840.10008.1.2.5": ("image/dicom-rle", "image/x-dicom-rle"),
    "1.2.840.10008.1.2.4.80": ("image/jls", "image/x-jls"),
    "1.2.840.10008.1.2.4.81": ("image/jls", "image/x-jls"),
    "1.2.840.10008.1.2.4.90": ("image/jp2",),
    "1.2.840.10008.1.2.4.91": ("image/jp2",),
    "1.2.840.10008.1.2.4.92": ("image/jpx",),
    "1.2.840.10008.1.2.4.93": ("image/jpx",),
    "1.2.840.10008.1.2.4.201": ("image/jphc",),
    "1.2.840.10008.1.2.4.202": ("image/jphc",),
    "1.2.840.10008.1.2.4.203": ("image/jphc",),
    "1.2.840.10008.1.2.4.100": ("video/mpeg",),
    "1.2.840.10008.1.2.4.101": ("video/mpeg",),
    "1.2.840.10008.1.2.4.102": ("video/mp4",),
    "1.2.840.10008.1.2.4.103": ("video/mp4",),
    "1.2.840.10008.1.2.4.104": ("video/mp4",),
    "1.2.840.10008.1.2.4.105": ("video/mp4",),
    "1.2.840.10008.1.2.4.106": ("video/mp4",),
}


def can_decode(transfer_syntax_uid: str) -> bool:
    """Whether a pydicom pixel decoder for the syntax is installed."""
    from pydicom.pixels.decoders.base import get_decoder

    try:
        return bool(get_decoder(transfer_syntax_uid).is_available)
    except NotImplementedError:
        return False


def can_transcode(source: str, target: str) -> bool:
    """Whether :func:`dicomvault.dicom.transcode.transcode` can turn an instance stored in
    ``source`` into ``target``: a native target needs a decoder for a compressed source;
    a lossless compressed target (RLE, JPEG-LS, JPEG 2000 lossless) also an encoder."""
    from pydicom.pixels.encoders.base import get_encoder
    from pydicom.uid import UID

    from dicomvault.dicom.transcode import LOSSLESS_ENCODINGS, NATIVE

    if source == target:
        return True
    if target not in NATIVE and target not in LOSSLESS_ENCODINGS:
        return False
    if UID(source).is_compressed and not can_decode(source):
        return False
    if target in LOSSLESS_ENCODINGS:
        try:
            return bool(get_encoder(target).is_available)
        except NotImplementedError:
            return False
    return True
