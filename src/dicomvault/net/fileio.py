"""Where a DICOM file's data set starts and how it is encoded (PS3.10 7.1), header only.

:func:`read_file_info` reads the 128-byte preamble, ``DICM`` and the File Meta
Information group (0002, always explicit VR little endian) by hand, so sending a file
never loads more than its first few kilobytes. Files without a meta header fall back to
pydicom, reading only the elements that are needed.
"""

from __future__ import annotations

import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

from dicomvault.net.uids import IMPLICIT_VR_LITTLE_ENDIAN

_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_TAG_VR = struct.Struct("<HH2s")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_HEAD_READ = 1 << 16


class NotDicomFile(ValueError):
    """The file is not DICOM, or its meta information is unusable."""


@dataclass(frozen=True, slots=True)
class FileInfo:
    """What is needed to send a file's data set as it is (PS3.10 7.1)."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    #: Byte offset of the data set (after the File Meta Information).
    data_offset: int
    #: Total file size; the data set is ``size - data_offset`` bytes.
    size: int

    @property
    def data_length(self) -> int:
        """Length of the data set in bytes."""
        return self.size - self.data_offset


def _text(value: bytes) -> str:
    return value.rstrip(b"\x00 ").decode("latin-1").strip()


def parse_file_meta(head: bytes) -> tuple[dict[int, str], int]:
    """Parse the File Meta Information in ``head`` (which starts with the preamble).

    Returns
    -------
    (elements, data_offset)
        Text values of group 0002 keyed by element number, and where the data set begins.

    Raises
    ------
    NotDicomFile
        No ``DICM`` prefix, or the group runs past ``head``.
    """
    if len(head) < 132 or head[128:132] != b"DICM":
        raise NotDicomFile("no DICM prefix at offset 128")
    pos = 132
    out: dict[int, str] = {}
    while pos + 8 <= len(head):
        group, element, vr = _TAG_VR.unpack_from(head, pos)
        if group != 0x0002:
            break
        if vr in _LONG_VRS:
            if pos + 12 > len(head):
                raise NotDicomFile("file meta information is truncated")
            (length,) = _U32.unpack_from(head, pos + 8)
            value_at = pos + 12
        else:
            (length,) = _U16.unpack_from(head, pos + 6)
            value_at = pos + 8
        if length == 0xFFFFFFFF or value_at + length > len(head):
            raise NotDicomFile("file meta element runs past the header")
        if vr in (b"UI", b"AE", b"SH", b"CS", b"LO"):
            out[element] = _text(head[value_at : value_at + length])
        pos = value_at + length
    else:
        if pos < len(head):
            raise NotDicomFile("file meta information is truncated")
    return out, pos


def _fallback(path: Path, size: int) -> FileInfo:
    """A data set without meta information: let pydicom read the two UIDs and guess."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom guesses aloud about headerless data
            ds = pydicom.dcmread(
                path,
                force=True,
                stop_before_pixels=True,
                specific_tags=["SOPClassUID", "SOPInstanceUID"],
            )
        sop_class = str(ds.get("SOPClassUID", ""))
        sop_instance = str(ds.get("SOPInstanceUID", ""))
        meta = getattr(ds, "file_meta", None)
        syntax = str(getattr(meta, "TransferSyntaxUID", "") or IMPLICIT_VR_LITTLE_ENDIAN)
    except (InvalidDicomError, OSError, ValueError, KeyError, EOFError) as exc:
        raise NotDicomFile(f"not a DICOM file: {exc}") from None
    if not sop_class or not sop_instance:
        raise NotDicomFile("no SOP Class UID or SOP Instance UID")
    return FileInfo(path, sop_class, sop_instance, syntax, 0, size)


def read_file_info(path: str | os.PathLike[str]) -> FileInfo:
    """Read a file's header: SOP class and instance, transfer syntax, data set offset.

    Raises
    ------
    NotDicomFile
        The file is not DICOM or lacks the UIDs needed to send it.
    OSError
        The file cannot be read.
    """
    path = Path(path)
    with path.open("rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        head = fh.read(_HEAD_READ)
        if head[128:132] != b"DICM":
            # A bare data set starts with a group 0002 or 0008 element (PS3.5 7.1).
            if head[:2] not in (b"\x02\x00", b"\x08\x00"):
                raise NotDicomFile("no DICM prefix and no data set at offset 0")
            return _fallback(path, size)
        try:
            meta, offset = parse_file_meta(head)
        except NotDicomFile:
            if len(head) < size:  # an unusually large meta group: read it whole
                fh.seek(0)
                meta, offset = parse_file_meta(fh.read(min(size, 1 << 24)))
            else:
                raise
    sop_class = meta.get(0x0002, "")
    sop_instance = meta.get(0x0003, "")
    syntax = meta.get(0x0010, "")
    if not sop_class or not sop_instance or not syntax:
        fallback = _fallback(path, size)
        return FileInfo(
            path,
            sop_class or fallback.sop_class_uid,
            sop_instance or fallback.sop_instance_uid,
            syntax or fallback.transfer_syntax_uid,
            offset,
            size,
        )
    return FileInfo(path, sop_class, sop_instance, syntax, offset, size)
