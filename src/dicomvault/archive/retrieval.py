"""WADO-RS retrieval in the archive (PS3.18 10.4): which instances a study / series /
instance URL names (with the hierarchy checked), their stored metadata, and access to
their bytes — whole files, bulk data values, frames — for the web layer.

Every function takes the :class:`~dicomvault.archive.Archive` first and blocks (SQL, file
I/O): the web layer runs them in its thread pool.
"""

from __future__ import annotations

from typing import BinaryIO

from dicomvault.archive.archive import Archive
from dicomvault.dicom.bulkdata import BulkValue, Header, locate, read_header, read_value
from dicomvault.dicom.frames import PixelLayout, decode_frame, pixel_layout, read_frame
from dicomvault.dicom.transcode import transcode_file
from dicomvault.index.retrieval import select_instances, series_study, study_exists
from dicomvault.model.errors import NotFound
from dicomvault.model.records import StoredInstance

__all__ = [
    "BulkValue",
    "Header",
    "PixelLayout",
    "bulk_value",
    "frames_of",
    "instances_of",
    "open_blob",
    "read_bulk",
    "read_decoded_frame",
    "read_stored_frame",
    "transcoded_file",
]


def instances_of(
    archive: Archive,
    study: str,
    series: str | None = None,
    instance: str | None = None,
    *,
    with_metadata: bool = False,
) -> list[tuple[StoredInstance, str | None]]:
    """The instances of a study, a series of it, or one instance of that series (PS3.18
    10.4.1: the target resource), ordered by Series Number then Instance Number.

    Raises
    ------
    NotFound
        Naming what is unknown: the study, a series that is not in it (or not at all), an
        instance that is not in that series.
    """
    found = select_instances(archive.index, study, series, instance, with_metadata=with_metadata)
    if found:
        return found
    index = archive.index
    if not study_exists(index, study):
        raise NotFound(f"no study with Study Instance UID {study}")
    if series is not None:
        parent = series_study(index, series)
        if parent is None:
            raise NotFound(f"no series with Series Instance UID {series}")
        if parent != study:
            raise NotFound(f"series {series} is not in study {study}")
    if instance is not None:
        stored = index.lookup_instance(instance)
        if stored is None:
            raise NotFound(f"no instance with SOP Instance UID {instance}")
        raise NotFound(f"instance {instance} is not in series {series} of study {study}")
    raise NotFound(f"no instance in study {study}")  # pragma: no cover - emptied meanwhile


def open_blob(archive: Archive, instance: StoredInstance) -> BinaryIO:
    """The stored Part 10 file, as received."""
    return archive.store.open(instance.blob_name)


def transcoded_file(archive: Archive, instance: StoredInstance, target: str) -> bytes:
    """The instance as a Part 10 file in transfer syntax ``target`` (PS3.18 8.7.3.5.2).

    Raises
    ------
    TranscodeError
        No codec for the stored syntax, or ``target`` cannot be produced.
    """
    with open_blob(archive, instance) as fp:
        data = fp.read()
    inst = instance
    return transcode_file(
        data, inst.sop_class_uid, inst.sop_instance_uid, inst.transfer_syntax_uid, target
    )


def bulk_value(archive: Archive, instance: StoredInstance, path: str) -> tuple[Header, BulkValue]:
    """Where the bulk data ``path`` (``7FE00010``, ``00540016/0/00181072``) of the
    instance lies.

    Raises
    ------
    BadBulkDataPath, NotFound
    """
    with open_blob(archive, instance) as fp:
        header = read_header(fp)
        return header, locate(header, path)


def read_bulk(
    archive: Archive, instance: StoredInstance, header: Header, value: BulkValue
) -> bytes:
    """The value's bytes, little endian (PS3.18 8.7.3.3.1)."""
    with open_blob(archive, instance) as fp:
        return read_value(fp, header, value)


def frames_of(archive: Archive, instance: StoredInstance) -> PixelLayout:
    """Where each frame of the instance lies (PS3.5 8.2, A.4).

    Raises
    ------
    NoPixelData, CannotParse
    """
    with open_blob(archive, instance) as fp:
        return pixel_layout(fp, read_header(fp))


def read_stored_frame(
    archive: Archive, instance: StoredInstance, layout: PixelLayout, number: int
) -> bytes:
    """Frame ``number`` (1-based) as stored (fragments joined; native little endian)."""
    with open_blob(archive, instance) as fp:
        return read_frame(fp, layout, number)


def read_decoded_frame(archive: Archive, instance: StoredInstance, number: int) -> bytes:
    """Frame ``number`` (1-based) decompressed to native little endian bytes."""
    with open_blob(archive, instance) as fp:
        return decode_frame(fp, number)
