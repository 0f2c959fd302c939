"""Where a bulk data value lies in a stored file (PS3.18 8.4.1.4 / 10.4: WADO-RS Retrieve
Bulkdata), so it can be sent straight from the file without decoding the data set.

A bulk data element is named by the path of :mod:`dicomvault.dicom.dicomjson`'s
BulkDataURIs: ``7FE00010`` at the top level, ``00540016/0/00181072`` for (0018,1072) in
item 0 of (0054,0016) — each enclosing sequence adds ``<TAG>/<item index>``. The file is
walked once with :class:`~dicomvault.dicom.reader.Reader`, header only: the value
itself is never read here.

Uncompressed Bulkdata is little endian (PS3.18 8.7.3.3.1): the value of a binary VR in
an Explicit VR Big Endian file is byte-swapped when it is read (:func:`read_value`).
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO

from dicomvault.dicom.part10 import HEAD_SIZE, KNOWN_VRS, read_file_meta, transfer_syntax_encoding
from dicomvault.dicom.reader import UNDEFINED_LENGTH, DataSet, Element, Reader
from dicomvault.model.digits import ascii_digits
from dicomvault.model.errors import CannotParse, NotFound

#: Bytes per number of the VRs whose values are numbers in the byte order of the
#: transfer syntax (PS3.5 7.3); OB, UN and strings are byte streams.
SWAP_SIZE = {
    "OW": 2,
    "US": 2,
    "SS": 2,
    "AT": 2,
    "OL": 4,
    "OF": 4,
    "UL": 4,
    "SL": 4,
    "FL": 4,
    "OD": 8,
    "OV": 8,
    "FD": 8,
    "SV": 8,
    "UV": 8,
}


class BadBulkDataPath(ValueError):
    """The path is not of the form ``TAG(/INDEX/TAG)*`` with 8-hex-digit tags."""


@dataclass(frozen=True, slots=True)
class Header:
    """A stored file's data set, walked header only, with where each value lies."""

    transfer_syntax_uid: str
    implicit: bool
    little: bool
    deflated: bool
    dataset: DataSet
    #: Offset of the data set in the file (the inflated stream starts there too).
    dataset_offset: int
    size: int


@dataclass(frozen=True, slots=True)
class BulkValue:
    """One element's value: ``[offset, offset + length)`` of the data set stream (the
    file, or the inflated stream when ``deflated``)."""

    vr: str
    offset: int
    length: int
    #: Undefined length: encapsulated pixel data (PS3.5 A.4), a sequence of fragments.
    encapsulated: bool
    deflated: bool
    #: Bytes per number to swap to little endian (0: none).
    swap: int


def read_header(fp: BinaryIO) -> Header:
    """Walk the data set of the Part 10 file ``fp`` (PS3.10 7.1), header only.

    Raises
    ------
    CannotParse, NotDicom
        The stored file is damaged.
    """
    size = os.fstat(fp.fileno()).st_size
    fp.seek(0)
    head = fp.read(HEAD_SIZE)
    meta = read_file_meta(head)
    offset = meta.dataset_offset
    syntax = meta.transfer_syntax_uid or "1.2.840.10008.1.2"
    implicit, little, deflated = transfer_syntax_encoding(syntax)
    first = head[offset : offset + 8]
    if not deflated and len(first) == 8:
        # Writers that label implicit data explicit (or the reverse): read what is there,
        # as ingest did (dicom/parse.py).
        implicit = first[4:6] not in KNOWN_VRS
    reader = Reader(
        fp,
        offset,
        size,
        initial=b"" if deflated else head[offset:],
        deflated=deflated,
        bulk_threshold=1024,
    )
    try:
        ds, _ = reader.read_dataset(offset, None, implicit, little)
    except (RecursionError, zlib.error, struct.error) as exc:
        raise CannotParse(f"stored file cannot be walked: {exc}") from None
    return Header(syntax, implicit, little, deflated, ds, offset, size)


def parse_path(path: str) -> list[int | str]:
    """``"00540016/0/00181072"`` → ``[0x00540016, 0, 0x00181072]`` (tags as int, item
    indices as int in odd positions).

    Raises
    ------
    BadBulkDataPath
    """
    pieces = path.strip("/").split("/")
    if len(pieces) % 2 != 1:
        raise BadBulkDataPath(f"bulk data path {path!r} does not end with a tag")
    out: list[int | str] = []
    for position, piece in enumerate(pieces):
        if position % 2 == 0:
            if len(piece) != 8 or any(c not in "0123456789abcdefABCDEF" for c in piece):
                raise BadBulkDataPath(f"bulk data path {path!r}: {piece!r} is not a tag")
            out.append(int(piece, 16))
        else:
            if not ascii_digits(piece) or len(piece) > 9:
                raise BadBulkDataPath(f"bulk data path {path!r}: {piece!r} is not an item index")
            out.append(int(piece))
    return out


def find_element(header: Header, path: str) -> Element:
    """The element at ``path``.

    Raises
    ------
    BadBulkDataPath
        Malformed path.
    NotFound
        No such element or item in this instance.
    """
    steps = parse_path(path)
    ds = header.dataset
    element: Element | None = None
    for position in range(0, len(steps), 2):
        tag = steps[position]
        assert isinstance(tag, int)
        element = ds.get(tag)
        if element is None:
            raise NotFound(f"bulk data {path}: no element {tag:08X} in this instance")
        if position + 1 < len(steps):
            index = steps[position + 1]
            assert isinstance(index, int)
            if element.vr != "SQ" or not isinstance(element.value, list):
                raise NotFound(f"bulk data {path}: {tag:08X} is not a sequence")
            if index >= len(element.value):
                raise NotFound(f"bulk data {path}: {tag:08X} has no item {index}")
            ds = element.value[index]
    assert element is not None
    if element.vr == "SQ":
        raise NotFound(f"bulk data {path}: {steps[-1]:08X} is a sequence, not a value")
    return element


def locate(header: Header, path: str) -> BulkValue:
    """Where the value of the element at ``path`` lies; see :class:`BulkValue`."""
    element = find_element(header, path)
    encapsulated = element.length == UNDEFINED_LENGTH
    swap = 0 if header.little or encapsulated else SWAP_SIZE.get(element.vr, 0)
    return BulkValue(
        element.vr,
        element.offset,
        0 if encapsulated else element.length,
        encapsulated,
        header.deflated,
        swap,
    )


def read_value(fp: BinaryIO, header: Header, value: BulkValue) -> bytes:
    """The value's bytes, little endian (PS3.18 8.7.3.3.1). For a deflated file the
    stream is inflated up to the value (memory stays at the value's size)."""
    if value.deflated:
        reader = Reader(fp, header.dataset_offset, header.size, deflated=True)
        data = reader.get(value.offset, value.length, "bulk data value")
    else:
        fp.seek(value.offset)
        data = fp.read(value.length)
        if len(data) != value.length:
            raise CannotParse("truncated: the stored file ends inside the bulk data value")
    if value.swap > 1:
        data = swap_bytes(data, value.swap)
    return data


def swap_bytes(data: bytes, width: int) -> bytes:
    """Reverse the byte order of each ``width``-byte number in ``data``."""
    usable = len(data) - len(data) % width
    out = bytearray(data)
    for k in range(width):
        out[k:usable:width] = data[width - 1 - k : usable : width]
    return bytes(out)
