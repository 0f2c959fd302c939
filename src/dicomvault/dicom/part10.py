"""The DICOM File Format's header: preamble, ``DICM`` prefix and File Meta Information.

PS3.10 7.1: a 128-byte preamble, the four bytes ``DICM``, then the group 0002 elements,
always Explicit VR Little Endian, starting with (0002,0000) File Meta Information Group
Length. Old modalities write no header at all (a bare data set, PS3.10 7.1 note) and
some writers drop the preamble; both are recognised here.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from typing import Literal

import dicomvault
from dicomvault.model.errors import CannotParse, InvalidUID, NotDicom
from dicomvault.model.uid import uid_problem

Layout = Literal["part10", "no-preamble", "no-meta"]

#: PS3.5 Table A-1 transfer syntaxes that change how the data set is encoded.
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
JPIP_REFERENCED_DEFLATE = "1.2.840.10008.1.2.4.95"
#: Media Storage Directory Storage (PS3.4 Annex B): a DICOMDIR.
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"

#: How much of a file :func:`read_preamble_layout` wants to see.
HEAD_SIZE = 64 * 1024

#: Length of the File Preamble (PS3.10 7.1). We always write it as zeros.
PREAMBLE = 128

#: VRs whose explicit-VR header has 2 reserved bytes and a 4-byte length (PS3.5 7.1.2).
LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
#: Every VR of PS3.5 Table 6.2-1.
KNOWN_VRS = LONG_VRS | frozenset(
    {
        b"AE",
        b"AS",
        b"AT",
        b"CS",
        b"DA",
        b"DS",
        b"DT",
        b"FL",
        b"FD",
        b"IS",
        b"LO",
        b"LT",
        b"PN",
        b"SH",
        b"SL",
        b"SS",
        b"ST",
        b"TM",
        b"UI",
        b"UL",
        b"US",
    }
)

_TAG_VR_SHORT = struct.Struct("<HH2sH")
_TAG_LONG = struct.Struct("<HHL")
_UINT32 = struct.Struct("<L")


@dataclass(frozen=True, slots=True)
class FileMeta:
    """What the File Meta Information says, as far as ingest needs it (PS3.10 7.1)."""

    layout: Layout
    dataset_offset: int
    transfer_syntax_uid: str | None = None  # (0002,0010)
    media_storage_sop_class_uid: str | None = None  # (0002,0002)
    media_storage_sop_instance_uid: str | None = None  # (0002,0003)


def transfer_syntax_encoding(uid: str) -> tuple[bool, bool, bool]:
    """Return ``(implicit_vr, little_endian, deflated)`` for a transfer syntax.

    PS3.5 10.1 / A.4: every transfer syntax other than the three native ones and the
    deflated ones (A.5) encodes the data set in Explicit VR Little Endian.
    """
    if uid == IMPLICIT_VR_LITTLE_ENDIAN:
        return True, True, False
    if uid == EXPLICIT_VR_BIG_ENDIAN:
        return False, False, False
    if uid in (DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, JPIP_REFERENCED_DEFLATE):
        return False, True, True
    return False, True, False


def _uid_bytes(name: str, value: str) -> bytes:
    problem = uid_problem(value)
    if problem is not None:
        raise InvalidUID(f"{name} {problem}: {value[:80]!r}")
    raw = value.encode("ascii")
    # PS3.5 9.1: a UID of odd length is padded with a single NULL.
    return raw + b"\0" if len(raw) % 2 else raw


def _text_bytes(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b" " if len(raw) % 2 else raw


def _short(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    return _TAG_VR_SHORT.pack(group, element, vr, len(value)) + value


def encode_file_meta(
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    *,
    source_ae: str | None = None,
) -> bytes:
    """Encode a preamble, ``DICM`` and the File Meta Information (PS3.10 7.1).

    Parameters
    ----------
    sop_class_uid, sop_instance_uid : str
        Written as (0002,0002) Media Storage SOP Class UID and (0002,0003) Media Storage
        SOP Instance UID.
    transfer_syntax_uid : str
        (0002,0010) Transfer Syntax UID of the data set that follows.
    source_ae : str, optional
        (0002,0016) Source Application Entity Title (PS3.10 7.1: the AE that sent it).

    Returns
    -------
    bytes
        128 zero bytes, ``DICM``, then the group 0002 elements in Explicit VR Little
        Endian with (0002,0000) first. The same arguments always give the same bytes.

    Raises
    ------
    InvalidUID
        A UID breaks PS3.5 9.1.
    ValueError
        ``source_ae`` is not a valid AE title (PS3.5 Table 6.2-1: at most 16 characters,
        no backslash or control characters, not all spaces).
    """
    # A C-STORE makes one per instance; all but the instance UID repeat, so the encoded
    # elements are cached (an invalid value raises every time: errors are not cached).
    elements = b"".join(
        (
            _FILE_META_VERSION,
            _uid_element(0x0002, "Media Storage SOP Class UID", sop_class_uid),
            _short(
                2, 0x0003, b"UI", _uid_bytes("Media Storage SOP Instance UID", sop_instance_uid)
            ),
            _uid_element(0x0010, "Transfer Syntax UID", transfer_syntax_uid),
            _implementation_elements(),
            b"" if source_ae is None else _source_ae_element(source_ae),
        )
    )
    group_length = _short(2, 0x0000, b"UL", _UINT32.pack(len(elements)))
    return _PREAMBLE_AND_PREFIX + group_length + elements


def encode_file_meta_for(
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    *,
    source_ae: str | None = None,
) -> tuple[bytes, FileMeta]:
    """:func:`encode_file_meta`, and the :class:`FileMeta` that :func:`read_file_meta`
    reads back from those bytes — known here, so a received data set is parsed without
    reading back the meta just written for it."""
    encoded = encode_file_meta(
        sop_class_uid, sop_instance_uid, transfer_syntax_uid, source_ae=source_ae
    )
    return encoded, FileMeta(
        "part10", len(encoded), transfer_syntax_uid, sop_class_uid, sop_instance_uid
    )


#: (0002,0001) File Meta Information Version: OB, 2-byte value 00 01.
_FILE_META_VERSION = b"\x02\x00\x01\x00OB\x00\x00\x02\x00\x00\x00\x00\x01"
_PREAMBLE_AND_PREFIX = bytes(PREAMBLE) + b"DICM"


@functools.lru_cache(maxsize=256)
def _uid_element(element: int, name: str, value: str) -> bytes:
    return _short(2, element, b"UI", _uid_bytes(name, value))


@functools.cache
def _implementation_elements() -> bytes:
    uid = _uid_bytes("Implementation Class UID", dicomvault.IMPLEMENTATION_CLASS_UID)
    version = _text_bytes(dicomvault.IMPLEMENTATION_VERSION_NAME)
    return _short(2, 0x0012, b"UI", uid) + _short(2, 0x0013, b"SH", version)


@functools.lru_cache(maxsize=256)
def _source_ae_element(source_ae: str) -> bytes:
    ae = source_ae.strip(" ")
    if not ae or len(ae) > 16 or not ae.isascii() or "\\" in ae or not ae.isprintable():
        raise ValueError(f"invalid Source AE Title {source_ae!r}")
    return _short(2, 0x0016, b"AE", _text_bytes(ae))


def _plausible_dataset_start(head: bytes) -> bool:
    """Whether ``head`` could begin a bare data set (no preamble, no meta).

    The first element of a stored data set is in a low, even group (0008 in practice,
    a higher one after de-identification). Its encoding (implicit or explicit VR, little
    or big endian) is unknown, so each is tried.
    """
    if len(head) < 8:
        return False
    group_le, group_be = head[0] | head[1] << 8, head[0] << 8 | head[1]
    vr = head[4:6]
    if vr in KNOWN_VRS:
        return any(g % 2 == 0 and 0x0002 <= g <= 0x7FE0 for g in (group_le, group_be))
    (length,) = _UINT32.unpack_from(head, 4)
    return (
        group_le % 2 == 0
        and 0x0004 <= group_le <= 0x7FE0
        and (length < 1 << 24 or length == 0xFFFFFFFF)
    )


def _uid_value(raw: bytes) -> str:
    return raw.decode("ascii", errors="replace").rstrip("\0 ").lstrip(" ")


def read_file_meta(head: bytes) -> FileMeta:
    """Find the layout and read the File Meta Information from a file's first bytes.

    Parameters
    ----------
    head : bytes
        The first :data:`HEAD_SIZE` bytes of the file (or all of it, when shorter).

    Returns
    -------
    FileMeta

    Raises
    ------
    NotDicom
        Neither ``DICM`` nor a plausible first data element.
    CannotParse
        The meta is truncated, malformed or longer than ``head``.
    """
    if len(head) >= 132 and head[128:132] == b"DICM":
        layout: Layout = "part10"
        pos = 132
    elif head[:4] == b"DICM":
        layout, pos = "no-preamble", 4
    elif len(head) >= 8 and head[0:2] == b"\x02\x00" and head[4:6] in KNOWN_VRS:
        # Group 0002 written without preamble and prefix: not a Part 10 header, so the
        # layout is "no-meta" (a new meta is needed); the data set starts after it.
        layout, pos = "no-meta", 0
    elif _plausible_dataset_start(head):
        return FileMeta("no-meta", 0)
    else:
        raise NotDicom("not DICOM: no 'DICM' prefix and no plausible data element at start")

    values: dict[int, bytes] = {}
    start = pos
    while True:
        if pos + 8 > len(head):
            if values and pos == len(head) and len(head) < HEAD_SIZE:
                group_length = values.get(0x0000, b"")
                if len(group_length) == 4 and pos < start + 12 + _UINT32.unpack(group_length)[0]:
                    raise CannotParse(
                        "truncated: File Meta Information ends before its group length"
                    )
                break  # a file of file meta only; the data set check reports it
            raise CannotParse(f"truncated or over-long File Meta Information at byte {pos}")
        group, element, vr, short_length = _TAG_VR_SHORT.unpack_from(head, pos)
        if group != 0x0002:
            break
        if vr in LONG_VRS:
            if pos + 12 > len(head):
                raise CannotParse(f"truncated File Meta Information at byte {pos}")
            (length,) = _UINT32.unpack_from(head, pos + 8)
            pos += 12
        elif vr in KNOWN_VRS:
            length = short_length
            pos += 8
        else:
            # Some writers put the meta in implicit VR (pydicom issue 503).
            (length,) = _UINT32.unpack_from(head, pos + 4)
            pos += 8
        if length == 0xFFFFFFFF or pos + length > len(head):
            raise CannotParse(
                f"File Meta Information element (0002,{element:04X}) declares {length} "
                "bytes beyond the header"
            )
        values[element] = head[pos : pos + length]
        pos += length

    def uid(element: int) -> str | None:
        raw = values.get(element)
        return _uid_value(raw) if raw is not None else None

    return FileMeta(
        layout,
        pos,
        transfer_syntax_uid=uid(0x0010),
        media_storage_sop_class_uid=uid(0x0002),
        media_storage_sop_instance_uid=uid(0x0003),
    )


def read_preamble_layout(head: bytes) -> tuple[Layout, int]:
    """Return the file's layout and the byte offset where its data set starts.

    Parameters
    ----------
    head : bytes
        The file's first bytes: at least the whole File Meta Information; pass the first
        :data:`HEAD_SIZE` (64 KiB) bytes, or the whole file when it is shorter.

    Returns
    -------
    tuple
        ``("part10", n)`` for preamble + ``DICM`` + meta (PS3.10 7.1),
        ``("no-preamble", n)`` for ``DICM`` + meta at offset 0, ``("no-meta", 0)`` for
        a bare data set. ``n`` is the offset of the first byte after group 0002. A few
        writers put group 0002 elements at offset 0 with no ``DICM``: that is no Part 10
        header either, so it is ``("no-meta", n)`` with ``n`` past those elements. In
        every case ``head[:n]`` is the whole header and ``head[n:]`` starts the data set.

    Raises
    ------
    NotDicom
        The bytes do not start like DICOM.
    CannotParse
        The File Meta Information is truncated, malformed or longer than ``head``.
    """
    meta = read_file_meta(head)
    return meta.layout, meta.dataset_offset
