"""Read an instance's header and build its index record (ingest step 2, DESIGN.md).

The file is read once, forwards, header only: pixel data and every other bulk value is
skipped, never loaded (:mod:`dicomvault.dicom.reader`). The checks an archive must make
before it accepts an instance are made here and raise the typed errors of
:mod:`dicomvault.model.errors` with a one-line message that names the problem.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dicomvault.dicom.charset import DEFAULT_CHARSET
from dicomvault.dicom.dicomjson import dataset_json, item_charset
from dicomvault.dicom.extract import (
    Fields,
    instance_record,
    patient_record,
    series_record,
    study_record,
)
from dicomvault.dicom.part10 import (
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    HEAD_SIZE,
    IMPLICIT_VR_LITTLE_ENDIAN,
    KNOWN_VRS,
    MEDIA_STORAGE_DIRECTORY,
    FileMeta,
    read_file_meta,
    transfer_syntax_encoding,
)
from dicomvault.dicom.reader import DataSet, Reader, Source
from dicomvault.model.errors import (
    CannotParse,
    InvalidInstance,
    InvalidUID,
    MissingAttribute,
    UIDMismatch,
)
from dicomvault.model.records import IndexRecord
from dicomvault.model.uid import uid_problem

SOP_CLASS_UID = 0x00080016
SOP_INSTANCE_UID = 0x00080018
STUDY_INSTANCE_UID = 0x0020000D
SERIES_INSTANCE_UID = 0x0020000E
DIRECTORY_RECORD_SEQUENCE = 0x00041220
#: At most this many warnings are kept per instance; the rest are counted.
MAX_WARNINGS = 20

_REQUIRED = (
    (SOP_INSTANCE_UID, "SOP Instance UID (0008,0018)"),
    (SOP_CLASS_UID, "SOP Class UID (0008,0016)"),
    (STUDY_INSTANCE_UID, "Study Instance UID (0020,000D)"),
    (SERIES_INSTANCE_UID, "Series Instance UID (0020,000E)"),
)


MetaMismatch = Literal["error", "warn"]


@dataclass(frozen=True, slots=True)
class ParsedInstance:
    """An instance's header, read and checked."""

    layout: Literal["part10", "no-preamble", "no-meta"]
    #: Byte offset in the source where the data set (after the file meta) begins.
    dataset_offset: int
    #: From the file meta, or detected for a "no-meta" file (implicit/explicit VR,
    #: little/big endian, as pydicom guesses).
    transfer_syntax_uid: str
    record: IndexRecord


def _sniff(head: bytes, offset: int) -> tuple[bool, bool] | None:
    """Guess ``(implicit_vr, little_endian)`` from the first data element.

    PS3.5 7.1: in explicit VR, bytes 4-5 of an element are its VR; big endian shows as a
    group number of 0x0400 or more when read little endian (pydicom's rule).
    """
    first = head[offset : offset + 8]
    if len(first) < 8:
        return None
    if first[4:6] in KNOWN_VRS:
        return False, (first[0] | first[1] << 8) < 0x0400
    return True, True


def _encoding(meta: FileMeta, head: bytes, warnings: list[str]) -> tuple[str, bool, bool, bool]:
    """Transfer syntax UID and ``(implicit, little, deflated)`` of the data set."""
    guess = _sniff(head, meta.dataset_offset)
    ts = meta.transfer_syntax_uid
    if ts:
        problem = uid_problem(ts)
        if problem is not None:
            raise InvalidUID(f"Transfer Syntax UID (0002,0010) {problem}: {ts[:80]!r}")
        implicit, little, deflated = transfer_syntax_encoding(ts)
        if guess is not None and not deflated and guess[0] != implicit:
            # Writers that label implicit data explicit (or the reverse) exist; read
            # what is there, as pydicom and DCMTK do, and say so.
            found = "implicit" if guess[0] else "explicit"
            warnings.append(f"Transfer Syntax UID {ts} but the data set is {found} VR")
            implicit = guess[0]
        return ts, implicit, little, deflated
    implicit, little = guess if guess is not None else (True, True)
    if implicit:
        ts = IMPLICIT_VR_LITTLE_ENDIAN
    else:
        ts = EXPLICIT_VR_LITTLE_ENDIAN if little else EXPLICIT_VR_BIG_ENDIAN
    if meta.layout != "no-meta":
        warnings.append(f"file meta has no Transfer Syntax UID (0002,0010); read as {ts}")
    return ts, implicit, little, False


def _read(
    path: Path, bulk_data_threshold: int, warnings: list[str]
) -> tuple[FileMeta, str, bool, DataSet]:
    with open(path, "rb", buffering=0) as fp:
        size = os.fstat(fp.fileno()).st_size
        return _read_from(fp, size, path.name, bulk_data_threshold, warnings)


def _read_from(
    fp: Source,
    size: int,
    name: str,
    bulk_data_threshold: int,
    warnings: list[str],
    meta: FileMeta | None = None,
) -> tuple[FileMeta, str, bool, DataSet]:
    """Read the file meta (unless ``meta`` says what it is) and the header data set from
    ``fp`` (``size`` bytes long)."""
    head = fp.read(HEAD_SIZE)
    if meta is None:
        meta = read_file_meta(head)
    if meta.media_storage_sop_class_uid == MEDIA_STORAGE_DIRECTORY:
        raise InvalidInstance(f"{name} is a DICOMDIR (media index), not an instance")
    ts, implicit, little, deflated = _encoding(meta, head, warnings)
    offset = meta.dataset_offset
    reader = Reader(
        fp,
        offset,
        size,
        initial=b"" if deflated else head[offset:],
        deflated=deflated,
        bulk_threshold=bulk_data_threshold,
    )
    try:
        ds, _ = reader.read_dataset(offset, None, implicit, little)
        reader.check_complete()
    except RecursionError:
        raise CannotParse("malformed: sequences nested too deeply") from None
    except zlib.error as exc:
        raise CannotParse(f"malformed deflated data set: {exc}") from None
    except struct.error as exc:  # pragma: no cover - the reader checks lengths first
        raise CannotParse(f"malformed data element: {exc}") from None
    warnings.extend(reader.warnings)
    return meta, ts, little, ds


def _checked_uids(
    f: Fields, meta: FileMeta, meta_mismatch: MetaMismatch, warnings: list[str]
) -> dict[int, str]:
    """The four identifying UIDs, present and valid (PS3.5 9.1), agreeing with the meta
    (PS3.10 7.1) — or, with ``meta_mismatch="warn"``, a warning when they do not."""
    values = {tag: f.raw_text(tag) for tag, _ in _REQUIRED}
    missing = [name for tag, name in _REQUIRED if not values[tag]]
    if missing:
        raise MissingAttribute(f"missing {', '.join(missing)}")
    uids = {tag: value for tag, value in values.items() if value}
    for tag, name in _REQUIRED:
        problem = uid_problem(uids[tag])
        if problem is not None:
            raise InvalidUID(f"{name} {problem}: {uids[tag][:80]!r}")
    for meta_value, tag, meta_name in (
        (
            meta.media_storage_sop_instance_uid,
            SOP_INSTANCE_UID,
            "Media Storage SOP Instance UID (0002,0003)",
        ),
        (
            meta.media_storage_sop_class_uid,
            SOP_CLASS_UID,
            "Media Storage SOP Class UID (0002,0002)",
        ),
    ):
        if meta_value and meta_value != uids[tag]:
            name = dict(_REQUIRED)[tag]
            message = (
                f"file meta {meta_name} {meta_value[:80]!r} differs from {name} {uids[tag][:80]!r}"
            )
            if meta_mismatch == "error":
                raise UIDMismatch(message)
            warnings.append(message + "; the data set's UID is used")
    return uids


def _kept(warnings: list[str]) -> tuple[str, ...]:
    unique = list(dict.fromkeys(warnings))
    if len(unique) > MAX_WARNINGS:
        more = len(unique) - MAX_WARNINGS + 1
        unique = [*unique[: MAX_WARNINGS - 1], f"... and {more} more warnings"]
    return tuple(unique)


def parse_instance(
    path: Path, *, bulk_data_threshold: int = 1024, meta_mismatch: MetaMismatch = "error"
) -> ParsedInstance:
    """Read the header of the instance stored at ``path`` and build its index record.

    Parameters
    ----------
    path : Path
        A Part 10 file (PS3.10 7.1), one without preamble, or a bare data set.
    bulk_data_threshold : int
        Values longer than this many bytes become BulkDataURIs in the DICOM JSON
        (PS3.18 F.2.6) and are never read into memory.
    meta_mismatch : {"error", "warn"}
        What a file meta that names other UIDs than the data set is: an error (the meta
        came from a C-STORE command, so the sender contradicts itself), or a warning
        (files from disk, whose meta anonymisers often leave stale; the data set is
        authoritative and the bytes are kept as they are).

    Returns
    -------
    ParsedInstance

    Raises
    ------
    NotDicom
        The file does not start like DICOM.
    CannotParse
        Truncated (anywhere, including inside Pixel Data) or malformed.
    MissingAttribute
        SOP Instance UID, SOP Class UID, Study Instance UID or Series Instance UID absent.
    InvalidUID
        One of those, or the Transfer Syntax UID, breaks PS3.5 9.1.
    UIDMismatch
        (0002,0002) / (0002,0003) disagree with (0008,0016) / (0008,0018) and
        ``meta_mismatch`` is ``"error"``.
    InvalidInstance
        The file is a DICOMDIR (PS3.10 8), not an instance.
    OSError
        The file cannot be opened or read.
    """
    warnings: list[str] = []
    meta, ts, little, ds = _read(path, bulk_data_threshold, warnings)
    return _parsed(path.name, meta, ts, little, ds, meta_mismatch, warnings)


def parse_instance_bytes(
    data: bytes | bytearray,
    *,
    name: str,
    bulk_data_threshold: int = 1024,
    meta_mismatch: MetaMismatch = "error",
) -> ParsedInstance:
    """:func:`parse_instance` of a Part 10 file held in memory (a small C-STORE, whole
    in one buffer: no file is opened and read back). ``name`` is for messages only."""
    warnings: list[str] = []
    meta, ts, little, ds = _read_from(
        io.BytesIO(data), len(data), name, bulk_data_threshold, warnings
    )
    return _parsed(name, meta, ts, little, ds, meta_mismatch, warnings)


def parse_received(
    encoded_meta: bytes,
    meta: FileMeta,
    dataset: bytes | bytearray,
    *,
    name: str,
    bulk_data_threshold: int = 1024,
    meta_mismatch: MetaMismatch = "error",
) -> ParsedInstance:
    """:func:`parse_instance_bytes` of ``encoded_meta + dataset`` — a received data set
    behind the file meta made for it (:func:`~dicomvault.dicom.part10.encode_file_meta_for`,
    which also gives ``meta``) — without joining the two (a copy of a whole CT data set)
    or reading back the meta."""
    warnings: list[str] = []
    meta, ts, little, ds = _read_from(
        _Joined(encoded_meta, dataset),
        len(encoded_meta) + len(dataset),
        name,
        bulk_data_threshold,
        warnings,
        meta,
    )
    return _parsed(name, meta, ts, little, ds, meta_mismatch, warnings)


class _Joined:
    """``head + tail`` as a read-only file for :class:`Reader`, without joining them:
    only what is read is copied (a header, not the pixel data)."""

    __slots__ = ("_head", "_pos", "_tail")

    def __init__(self, head: bytes, tail: bytes | bytearray) -> None:
        self._head = head
        self._tail = memoryview(tail)
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        pos, split = self._pos, len(self._head)
        end = split + len(self._tail) if n < 0 else pos + n
        if pos >= split:
            out = bytes(self._tail[pos - split : end - split])
        else:
            out = self._head[pos:end] + bytes(self._tail[: max(end - split, 0)])
        self._pos = pos + len(out)
        return out

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence != 0:
            raise ValueError("only absolute positions")
        self._pos = pos
        return pos


def _parsed(
    name: str,
    meta: FileMeta,
    ts: str,
    little: bool,
    ds: DataSet,
    meta_mismatch: MetaMismatch,
    warnings: list[str],
) -> ParsedInstance:
    """The index record of a read header (:func:`parse_instance`'s second half)."""
    if DIRECTORY_RECORD_SEQUENCE in ds:
        raise InvalidInstance(f"{name} is a DICOMDIR (media index), not an instance")
    charset = item_charset(ds, DEFAULT_CHARSET, [])
    f = Fields(ds, charset, little)
    uids = _checked_uids(f, meta, meta_mismatch, warnings)
    if uids[SOP_CLASS_UID] == MEDIA_STORAGE_DIRECTORY:
        raise InvalidInstance(f"{name} is a DICOMDIR (media index), not an instance")
    try:
        metadata_json = dataset_json(ds, DEFAULT_CHARSET, little, warnings)
    except RecursionError:  # pragma: no cover - the reader limits the depth first
        raise CannotParse("malformed: sequences nested too deeply") from None
    record = IndexRecord(
        patient=patient_record(f),
        study=study_record(f, uids[STUDY_INSTANCE_UID]),
        series=series_record(f, uids[SERIES_INSTANCE_UID]),
        instance=instance_record(f, uids[SOP_INSTANCE_UID], uids[SOP_CLASS_UID], ts),
        metadata_json=metadata_json,
        warnings=_kept(warnings),
    )
    return ParsedInstance(meta.layout, meta.dataset_offset, ts, record)
