"""Part 10 files from the DICOM JSON Model plus bulk data: the second form of the STOW-RS
request payload (PS3.18 10.5.1.2.2, "JSON metadata and bulk data").

Each data set of the metadata part (PS3.18 F.2) refers to its bulk data by BulkDataURI
(F.2.6); the bulk data arrive as further parts whose Content-Location is that URI. The
data set is written as a Part 10 file (PS3.10 7.1) in Explicit VR Little Endian, or, when
the Pixel Data part names a compressed (encapsulated) transfer syntax in its media type
(``transfer-syntax=`` parameter, PS3.18 8.7.3.5), in that syntax with the part as one
encapsulated frame (PS3.5 A.4).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from pydicom import Dataset, dcmwrite
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID

import dicomvault
from dicomvault.dicom.part10 import EXPLICIT_VR_LITTLE_ENDIAN
from dicomvault.model.errors import CannotParse, MissingAttribute

PIXEL_DATA_KEY = "7FE00010"


@dataclass(frozen=True, slots=True)
class BulkData:
    """One bulk data part: how to read its bytes and the transfer syntax its media type
    names (``None`` for uncompressed bytes, ``application/octet-stream``)."""

    read: Callable[[], bytes]
    transfer_syntax_uid: str | None = None


def load_metadata(payload: bytes) -> list[dict[str, Any]]:
    """The data sets of a DICOM JSON metadata part: an array of objects (PS3.18 F.2.1),
    or one object.

    Raises
    ------
    CannotParse
        Not JSON, or not objects.
    """
    try:
        value = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CannotParse(f"the DICOM JSON part is not JSON: {exc}") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise CannotParse("the DICOM JSON part is not an array of data set objects")
    return value


def uids_of(dataset_json: dict[str, Any]) -> tuple[str | None, str | None]:
    """``(SOP Class UID, SOP Instance UID)`` as the JSON gives them, for reporting a
    data set that cannot be converted."""

    def first(key: str) -> str | None:
        element = dataset_json.get(key)
        if isinstance(element, dict):
            values = element.get("Value")
            if isinstance(values, list) and values and isinstance(values[0], str):
                return values[0]
        return None

    return first("00080016"), first("00080018")


def write_part10(dataset_json: dict[str, Any], bulk: dict[str, BulkData], out: BinaryIO) -> None:
    """Write the data set ``dataset_json`` as a Part 10 file to ``out``.

    Parameters
    ----------
    dataset_json : dict
        One data set of the DICOM JSON Model.
    bulk : dict
        Bulk data parts by Content-Location.
    out : BinaryIO

    Raises
    ------
    CannotParse
        The JSON is not a valid DICOM JSON data set, or a BulkDataURI has no part.
    MissingAttribute
        SOP Class UID or SOP Instance UID is absent.
    """
    syntax: list[str] = []

    def handler(tag: str, _vr: str, uri: str) -> bytes:
        part = bulk.get(uri)
        if part is None:
            raise CannotParse(f"BulkDataURI {uri!r} of ({tag[:4]},{tag[4:]}) has no part")
        data = part.read()
        if tag.upper() == PIXEL_DATA_KEY and part.transfer_syntax_uid:
            uid = UID(part.transfer_syntax_uid)
            if uid.is_encapsulated:
                syntax.append(uid)
                return encapsulate([data])
        return data

    try:
        ds = Dataset.from_json(dataset_json, bulk_data_uri_handler=handler)
    except CannotParse:
        raise
    except Exception as exc:  # pydicom raises several types for malformed JSON
        raise CannotParse(f"not a valid DICOM JSON data set: {exc}") from None
    sop_class = ds.get("SOPClassUID")
    sop_instance = ds.get("SOPInstanceUID")
    if not sop_class or not sop_instance:
        raise MissingAttribute("missing SOP Class UID (0008,0016) or SOP Instance UID (0008,0018)")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = UID(syntax[0] if syntax else EXPLICIT_VR_LITTLE_ENDIAN)
    meta.ImplementationClassUID = UID(dicomvault.IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = dicomvault.IMPLEMENTATION_VERSION_NAME
    ds.file_meta = meta
    try:
        dcmwrite(out, ds, enforce_file_format=True)
    except Exception as exc:  # values pydicom cannot encode (wrong VR for a value …)
        raise CannotParse(f"the DICOM JSON data set cannot be encoded: {exc}") from None
