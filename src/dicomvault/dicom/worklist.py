"""Modality Worklist items and C-FIND Identifiers on the pydicom side (PS3.4 K).

- :func:`normalize_item` turns a worklist item sent as the DICOM JSON Model (PS3.18 F.2)
  or in keyword form (``{"PatientName": "Doe^John", …}``) into the DICOM JSON Model the
  archive stores, checks every value against its VR (PS3.5 6.2, with pydicom's
  validators) and the attributes a worklist needs (PS3.4 K.6.1.2.2, Table K.6-1), and
  generates the identifiers that may be left out.
- :func:`decode_worklist_identifier` reads a Modality Worklist C-FIND Identifier into
  :class:`~dicomvault.model.query.QueryKey` values, decoded with its Specific Character
  Set as Query/Retrieve Identifiers are (:mod:`dicomvault.dicom.identifier`).
- :func:`encode_worklist_response` writes one C-FIND-RSP Identifier from the DICOM JSON
  of a match, in the negotiated transfer syntax.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Mapping
from typing import Any, Final

from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import generate_uid
from pydicom.valuerep import validate_value

from dicomvault.dicom.dicomjson import VALID_VRS
from dicomvault.dicom.identifier import _charset, _deflate, _encoding, _keys, read_identifier
from dicomvault.dicom.values import SINGLE_VALUED, decimal_string, integer_string
from dicomvault.model.errors import DicomVaultError
from dicomvault.model.query import (
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
    InvalidQuery,
    QueryKey,
)

# Tags (as DICOM JSON keys) of the attributes a worklist item is built around.
SPECIFIC_CHARACTER_SET: Final = "00080005"
ACCESSION_NUMBER: Final = "00080050"
MODALITY: Final = "00080060"
PATIENT_NAME: Final = "00100010"
PATIENT_ID: Final = "00100020"
ISSUER_OF_PATIENT_ID: Final = "00100021"
STUDY_INSTANCE_UID: Final = "0020000D"
SCHEDULED_STATION_AE_TITLE: Final = "00400001"
SPS_START_DATE: Final = "00400002"
SPS_START_TIME: Final = "00400003"
SPS_ID: Final = "00400009"
SPS_STATUS: Final = "00400020"
SPS_SEQUENCE: Final = "00400100"
REQUESTED_PROCEDURE_ID: Final = "00401001"

#: VRs whose values are bulk data: never part of a worklist item.
BULK_VRS: Final = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_NUMBER_VRS: Final = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "SV", "UV"})
_TAG_KEY = re.compile(r"^[0-9A-Fa-f]{8}$")
_PN_GROUPS: Final = ("Alphabetic", "Ideographic", "Phonetic")
#: SH values (PS3.5 6.2) generated for Requested Procedure ID and SPS ID when absent.
_GENERATED_ID_LENGTH: Final = 16


class InvalidItem(DicomVaultError):
    """A worklist item that cannot be stored; the message names the attribute."""


def new_uid() -> str:
    """A new UID under the UUID-derived root ``2.25`` (PS3.5 B.2): no registered root
    needed, unique without coordination between archive nodes."""
    return str(generate_uid(prefix=None))


def new_id() -> str:
    """A new 16-character SH identifier (Requested Procedure ID, SPS ID)."""
    return new_uid()[-_GENERATED_ID_LENGTH:]


# -- normalising an item -------------------------------------------------------------


def _name(tag: int) -> str:
    keyword = keyword_for_tag(tag)
    return keyword or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _dictionary_vr(tag: int) -> str | None:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return None


def _check(vr: str, value: str, where: str) -> None:
    try:
        validate_value(vr, value, pydicom_config.RAISE)
    except ValueError as exc:
        # pydicom's messages end with a link to PS3.5 Table 6.2-1; one line is enough.
        message = str(exc).split(" Please see ")[0]
        raise InvalidItem(f"{where}: {message}") from None


def _person_name(value: Any, where: str) -> dict[str, str]:
    if isinstance(value, str):
        groups = value.split("=")
        if len(groups) > 3:
            raise InvalidItem(f"{where}: more than 3 component groups in {value!r}")
        name = {key: group for key, group in zip(_PN_GROUPS, groups, strict=False) if group}
    elif isinstance(value, Mapping):
        unknown = set(value) - set(_PN_GROUPS)
        if unknown:
            raise InvalidItem(f"{where}: unknown person name members {sorted(unknown)}")
        name = {}
        for key in _PN_GROUPS:
            group = value.get(key)
            if group is None or group == "":
                continue
            if not isinstance(group, str):
                raise InvalidItem(f"{where}: {key} is not a string")
            name[key] = group
    else:
        raise InvalidItem(f"{where}: a person name is a string or an object, not {value!r}")
    for group in name.values():
        _check("PN", group, where)
    return name


def _value(vr: str, value: Any, where: str) -> Any:
    """One JSON ``Value`` member of a non-sequence element, checked (PS3.18 F.2.3)."""
    if value is None:
        raise InvalidItem(f"{where}: null inside a value (leave the value out instead)")
    if vr == "PN":
        return _person_name(value, where)
    if vr in ("IS", "DS"):
        if isinstance(value, bool):
            raise InvalidItem(f"{where}: {value!r} is not a number")
        if isinstance(value, str):
            number = integer_string(value) if vr == "IS" else decimal_string(value)
            if number is None:
                raise InvalidItem(f"{where}: {value!r} is not a valid {vr} number")
            value = number
        if not isinstance(value, int | float) or (vr == "IS" and not isinstance(value, int)):
            raise InvalidItem(f"{where}: {value!r} is not a valid {vr} number")
        _check(vr, str(value), where)
        return value
    if vr in _NUMBER_VRS:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidItem(f"{where}: {value!r} is not a number")
        return value
    if vr == "AT":
        if not isinstance(value, str) or not _TAG_KEY.match(value):
            raise InvalidItem(f"{where}: {value!r} is not a tag (8 hex digits)")
        return value.upper()
    if not isinstance(value, str):
        raise InvalidItem(f"{where}: {value!r} is not a string")
    if vr in ("AE", "CS", "DA", "DT", "TM", "UI", "AS", "SH", "LO"):
        value = value.strip(" ")
    _check(vr, value, where)
    if vr == "DA":
        _calendar_date(value, where)
    return value


def _calendar_date(value: str, where: str) -> None:
    # pydicom's DA check is a pattern: 20250230 passes it.
    try:
        datetime.date(int(value[:4]), int(value[4:6]), int(value[6:8]))
    except ValueError:
        raise InvalidItem(f"{where}: {value!r} is not a calendar date") from None


def _element(tag: int, vr: str, raw: Any, where: str, keyword_form: bool) -> dict[str, Any]:
    """A checked DICOM JSON element of VR ``vr`` from the value(s) ``raw``."""
    if vr in BULK_VRS:
        raise InvalidItem(f"{where}: bulk data (VR {vr}) is not accepted in a worklist item")
    if vr not in VALID_VRS:
        raise InvalidItem(f"{where}: {vr!r} is not a VR")
    if vr == "SQ":
        if raw is None:
            return {"vr": "SQ"}
        items = [raw] if keyword_form and isinstance(raw, Mapping) else raw
        if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
            raise InvalidItem(f"{where}: a sequence is a list of objects")
        converted = [_dataset(item, f"{where}[{n}].", keyword_form) for n, item in enumerate(items)]
        return {"vr": "SQ", "Value": converted} if converted else {"vr": "SQ"}
    if raw is None or raw == "" or raw == []:
        return {"vr": vr}
    if keyword_form:
        values = raw if isinstance(raw, list) else [raw]
        if len(values) == 1 and isinstance(values[0], str) and vr not in SINGLE_VALUED:
            values = values[0].split("\\")  # "AA32\\AA33": several values, PS3.5 6.4
    else:
        if not isinstance(raw, list):
            raise InvalidItem(f"{where}: Value must be an array (PS3.18 F.2.4)")
        values = raw
    return {"vr": vr, "Value": [_value(vr, value, where) for value in values]}


def _dataset(item: Mapping[str, Any], prefix: str, keyword_form: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, raw in item.items():
        if not isinstance(key, str):
            raise InvalidItem(f"{prefix}{key!r}: attribute names are strings")
        if keyword_form:
            if _TAG_KEY.match(key):
                raise InvalidItem(
                    f"{prefix}{key}: DICOM JSON tags and keywords are mixed; use one form"
                )
            tag = tag_for_keyword(key)
            if tag is None:
                raise InvalidItem(f"{prefix}{key}: not a DICOM attribute keyword")
            vr = _dictionary_vr(tag)
            if vr is None or " or " in vr:
                raise InvalidItem(f"{prefix}{key}: VR {vr} is ambiguous; use the DICOM JSON form")
            element_raw = raw
        else:
            if not _TAG_KEY.match(key):
                raise InvalidItem(
                    f"{prefix}{key}: not a tag of 8 hex digits (DICOM JSON, PS3.18 F.2.1.1); "
                    "keywords and tags cannot be mixed"
                )
            tag = int(key, 16)
            if not isinstance(raw, Mapping) or not isinstance(raw.get("vr"), str):
                raise InvalidItem(f"{prefix}{_name(tag)}: an element is an object with a vr")
            unknown = set(raw) - {"vr", "Value"}
            if unknown & {"BulkDataURI", "InlineBinary"}:
                raise InvalidItem(
                    f"{prefix}{_name(tag)}: bulk data is not accepted in a worklist item"
                )
            if unknown:
                raise InvalidItem(f"{prefix}{_name(tag)}: unknown members {sorted(unknown)}")
            vr = raw["vr"]
            known = _dictionary_vr(tag)
            if known is not None and vr != known and vr not in known.split(" or "):
                raise InvalidItem(f"{prefix}{_name(tag)}: VR {vr}, but PS3.6 gives {known}")
            element_raw = raw.get("Value")
        if tag >> 16 in (0x0000, 0x0002) or tag & 0xFFFF == 0:
            continue  # command, file meta and group lengths are not data set attributes
        if f"{tag:08X}" == SPECIFIC_CHARACTER_SET:
            continue  # JSON is Unicode; responses get their own (0008,0005)
        where = f"{prefix}{_name(tag)}"
        out[f"{tag:08X}"] = _element(tag, vr, element_raw, where, keyword_form)
    return dict(sorted(out.items()))


def to_dicom_json(item: Mapping[str, Any]) -> dict[str, Any]:
    """``item`` in the DICOM JSON Model, every value checked against its VR.

    ``item`` is either the DICOM JSON Model (keys of 8 hex digits, PS3.18 F.2) or the
    keyword form: DICOM keywords as keys, strings (several values as a list or joined by
    ``\\``), numbers, person names as ``"Family^Given"``, sequences as lists of objects.

    Raises
    ------
    InvalidItem
        Naming the attribute: unknown keyword, wrong VR, invalid value, bulk data.
    """
    if not isinstance(item, Mapping) or not item:
        raise InvalidItem("a worklist item is a non-empty JSON object of attributes")
    keyword_form = not all(isinstance(k, str) and _TAG_KEY.match(k) for k in item)
    return _dataset(item, "", keyword_form)


def _first(dataset: Mapping[str, Any], key: str) -> Any:
    element = dataset.get(key)
    values = element.get("Value") if isinstance(element, Mapping) else None
    return values[0] if values else None


def _single(dataset: dict[str, Any], key: str, where: str) -> None:
    element = dataset.get(key)
    if element is not None and len(element.get("Value") or ()) > 1:
        raise InvalidItem(f"{where}: one value only")


def normalize_item(
    item: Mapping[str, Any],
    *,
    previous: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The worklist item to store: :func:`to_dicom_json` of ``item``, checked for what a
    Modality Worklist entry needs (PS3.4 K.6.1.2.2, Table K.6-1), identifiers completed.

    Required: Patient ID (0010,0020) and a Scheduled Procedure Step Sequence
    (0040,0100) of at least one item, each with Modality (0008,0060), Scheduled
    Procedure Step Start Date (0040,0002) and Start Time (0040,0003). Generated when
    absent: Study Instance UID (0020,000D), Requested Procedure ID (0040,1001) and each
    Scheduled Procedure Step ID (0040,0009); with ``previous`` (the stored item being
    replaced) its values are kept instead. Accession Number may be absent or empty.
    Scheduled Procedure Step Status (0040,0020) is set by the archive, not taken from
    ``item``: the caller sets it.

    Raises
    ------
    InvalidItem
    """
    dataset = to_dicom_json(item)
    previous = previous or {}
    if not _first(dataset, PATIENT_ID):
        raise InvalidItem("PatientID (0010,0020) is required")
    _single(dataset, PATIENT_ID, "PatientID")
    steps = (dataset.get(SPS_SEQUENCE) or {}).get("Value") or []
    if not steps:
        raise InvalidItem(
            "ScheduledProcedureStepSequence (0040,0100) with at least one item is required"
        )
    old_steps = (previous.get(SPS_SEQUENCE) or {}).get("Value") or []
    seen: set[str] = set()
    for n, step in enumerate(steps):
        where = f"ScheduledProcedureStepSequence[{n}]."
        for key, keyword in (
            (MODALITY, "Modality"),
            (SPS_START_DATE, "ScheduledProcedureStepStartDate"),
            (SPS_START_TIME, "ScheduledProcedureStepStartTime"),
        ):
            if not _first(step, key):
                raise InvalidItem(f"{where}{keyword} is required")
            _single(step, key, where + keyword)
        if not _first(step, SPS_ID):
            old = _first(old_steps[n], SPS_ID) if n < len(old_steps) else None
            step[SPS_ID] = {"vr": "SH", "Value": [old or new_id()]}
        sps_id = str(_first(step, SPS_ID))
        if sps_id in seen:
            raise InvalidItem(f"{where}ScheduledProcedureStepID {sps_id!r} appears twice")
        seen.add(sps_id)
        steps[n] = dict(sorted(step.items()))
    for key, vr, make in (
        (STUDY_INSTANCE_UID, "UI", new_uid),
        (REQUESTED_PROCEDURE_ID, "SH", new_id),
    ):
        if not _first(dataset, key):
            dataset[key] = {"vr": vr, "Value": [_first(previous, key) or make()]}
    return dict(sorted(dataset.items()))


# -- C-FIND Identifiers ----------------------------------------------------------------


def decode_worklist_identifier(data: bytes, transfer_syntax_uid: str) -> tuple[QueryKey, ...]:
    """The keys of a Modality Worklist C-FIND Identifier (PS3.4 K.6.1.2.2).

    Values are decoded with the Identifier's Specific Character Set; sequence keys carry
    the keys of their item. Query/Retrieve Level (0008,0052), if a requestor sends one,
    is not a key of this model and is ignored.

    Raises
    ------
    InvalidQuery
        0xC000 when the data set cannot be read; 0xA900 when the Scheduled Procedure
        Step Sequence has more than one item (Table K.6-1: a single item).
    """
    ds, little = read_identifier(data, transfer_syntax_uid)
    sequence = ds.get(int(SPS_SEQUENCE, 16))
    if sequence is not None and isinstance(sequence.value, list) and len(sequence.value) > 1:
        raise InvalidQuery(
            # at most 64 characters: it becomes the Error Comment
            "ScheduledProcedureStepSequence: one item only (Table K.6-1)",
            status=IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
            keyword="ScheduledProcedureStepSequence",
        )
    return _keys(ds, _charset(ds), little)


def encode_worklist_response(dataset: Mapping[str, Any], transfer_syntax_uid: str) -> bytes:
    """A C-FIND-RSP Identifier (PS3.4 K.6.1.2.2) from the DICOM JSON of one match.

    Specific Character Set (0008,0005): absent when every value is ASCII, else
    ``ISO_IR 192`` (UTF-8), which encodes whatever the stored Unicode text holds.
    """
    implicit, little, deflated = _encoding(transfer_syntax_uid)
    ds = Dataset.from_json(dict(dataset))
    if not json.dumps(dataset, ensure_ascii=False).isascii():
        ds.SpecificCharacterSet = "ISO_IR 192"
    fp = DicomBytesIO()
    fp.is_little_endian = little
    fp.is_implicit_VR = implicit
    write_dataset(fp, ds)
    data = fp.getvalue()
    return _deflate(data) if deflated else bytes(data)
