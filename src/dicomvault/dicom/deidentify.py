"""De-identification: the Basic Application Level Confidentiality Profile and its options
(PS3.15 E.1, E.2, E.3), applied to one instance.

What each attribute undergoes is Table E.1-1 (:mod:`dicomvault.dicom.deid_table`,
generated); this module decides between the table's alternatives and applies them.

Choices the standard leaves to the implementation (docs/deidentification.md):

- **Options override the Basic Profile** (E.3): an active option's K wins over its C,
  which wins over the basic action (two options on one row: K if either keeps).
- **Combined actions** (Table E.1-1a: X/Z, X/D, Z/D, X/Z/D, X/Z/U*) depend on the type of
  the attribute in the IOD, which is not known here. They resolve to the least disclosure
  that keeps a *present* attribute conformant: X/Z → Z, X/D → D, Z/D → D, X/Z/D → D;
  X/Z/U* (Referenced Image Sequence, Source Image Sequence) keeps the sequence, whose
  UIDs are remapped by their own U rows. An attribute absent from the source stays
  absent: Z and D are applied only to attributes present.
- **Z** is a zero-length value (an empty sequence for SQ); **D** a dummy of the VR
  (:mod:`dicomvault.dicom.deid_values`); D on a UI is a new UID, on a SQ its items are
  de-identified in turn; **X** removes; **K** keeps (items still de-identified).
- **U**: ``2.25.`` + the first 128 bits of HMAC-SHA256(secret, UID)
  (:mod:`dicomvault.dicom.deid_keys`): one study keeps one new Study Instance UID across
  instances and runs, references inside sequences follow. UIDs of the standard's own root
  (1.2.840.10008.) are kept.
- **Patient ID and Patient's Name** (Z/D and Z) become one pseudonym, ``ANON-`` + 10
  base32 characters of the keyed hash of the Patient ID, so one patient's studies stay
  linked.
- **C** (clean): under the Modified Dates option dates move back by a per-patient number
  of whole days (times kept; a partial date gets the dummy) and binary timestamps are
  removed; free text (descriptors, and the C of the Retain Patient Characteristics and
  Device Identity options) is kept only when it contains none of the instance's
  identifying values (person name components, IDs, accession number, birth date…),
  otherwise it gets the dummy; a cleaned sequence keeps its de-identified items.
- Attributes the table does not name are kept (the profile is a list of what must
  change), sequences among them de-identified item by item (E.1.1: the profile applies
  inside sequences), except: private attributes are removed (E.3.10: with the Retain Safe
  Private Option, those of Table E.3.10-1 are kept with their Private Creator); curves
  (50xx) are removed; overlays (60xx) lose Overlay Data and Overlay Comments, and a group
  whose Overlay Data goes is removed whole (an Overlay Plane without its data is not
  conformant).
- Burned In Annotation (0028,0301) YES refuses the instance (Clean Pixel Data is not
  provided) unless ``allow_burned_in``; the output then still says YES.
- Added (E.1.1): Patient Identity Removed YES, De-identification Method, De-identification
  Method Code Sequence (CID 7050), Longitudinal Temporal Information Modified; a new file
  meta (our implementation UID, no Source AE) with the new SOP Instance UID, a zero
  preamble (CVE-2019-11687: no PE/DICOM polyglot). The transfer syntax, the pixel data
  and every value not named above are written as read.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

import dicomvault
from dicomvault.dicom.dataset_codec import encode_data_set
from dicomvault.dicom.deid_keys import DeidKeys
from dicomvault.dicom.deid_profile import Options, resolve
from dicomvault.dicom.deid_table import (
    ATTRIBUTES,
    PRIVATE_ATTRIBUTES,
    REPEATING_GROUPS,
    SAFE_PRIVATE,
    Row,
)
from dicomvault.dicom.deid_values import (
    DUMMY_BY_VR,
    TEMPORAL_VRS,
    TEXT_VRS,
    dummy,
    identifying_terms,
    mentions,
    shift_date,
    shift_datetime,
)
from dicomvault.dicom.parse import parse_instance
from dicomvault.dicom.part10 import (
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    HEAD_SIZE,
    IMPLICIT_VR_LITTLE_ENDIAN,
    encode_file_meta,
    read_file_meta,
)
from dicomvault.model.digits import ascii_digits
from dicomvault.model.errors import (
    CannotParse,
    DeidentificationRefused,
    MissingAttribute,
    NotDicom,
)

__all__ = ["Deidentified", "Options", "deidentify", "resolve"]

PATIENT_NAME = 0x00100010
PATIENT_ID = 0x00100020
BURNED_IN_ANNOTATION = 0x00280301
OVERLAY_DATA = 0x3000

#: Attributes whose values name people (clean action: matched as words).
_NAME_KEYWORDS = (
    "PatientName", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName",
    "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName",
    "PhysiciansOfRecord", "NameOfPhysiciansReadingStudy", "RequestingPhysician",
    "ScheduledPerformingPhysicianName", "ResponsiblePerson",
)  # fmt: skip
#: Attributes whose values identify (clean action: matched anywhere in the text).
_ID_KEYWORDS = (
    "PatientID", "OtherPatientIDs", "IssuerOfPatientID", "PatientBirthDate",
    "AccessionNumber", "StudyID", "PatientAddress", "PatientTelephoneNumbers",
    "MedicalRecordLocator", "MilitaryRank", "BranchOfService", "RequestedProcedureID",
    "InstitutionName", "InstitutionAddress", "StationName", "DeviceSerialNumber",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Deidentified:
    """One de-identified instance: ``data`` is the whole Part 10 file."""

    data: bytes
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    original_sop_instance_uid: str
    original_study_instance_uid: str


@dataclass
class _Context:
    keys: DeidKeys
    active: frozenset[str]
    terms: tuple[re.Pattern[str] | None, tuple[str, ...]]
    patient: str
    shift_days: int
    safe_private: frozenset[tuple[int, int, str]] = field(default_factory=frozenset)


_SAFE = frozenset((group, element, creator) for group, element, creator, _ in SAFE_PRIVATE)


def deidentify(
    source: BinaryIO | Path,
    keys: DeidKeys,
    options: Options,
    *,
    allow_burned_in: bool = False,
    name: str = "",
) -> Deidentified:
    """De-identify one instance (PS3.15 E.1.1 with the options of E.3).

    Parameters
    ----------
    source
        A DICOM file (Part 10, or a bare data set) as a path or a seekable binary stream.
    keys
        The archive's secret (:class:`~dicomvault.dicom.deid_keys.DeidKeys`).
    options
        Which options of the profile apply.
    allow_burned_in
        De-identify an instance with Burned In Annotation YES anyway (its pixels keep
        whatever text is burned in; the output says so).
    name
        How messages name the instance (a file path); the SOP Instance UID otherwise.

    Returns
    -------
    Deidentified

    Raises
    ------
    NotDicom, CannotParse, InvalidInstance
        The source is not a DICOM instance that parses (a DICOMDIR is no instance), or
        a value of it cannot be encoded again.
    MissingAttribute
        No SOP Instance UID, SOP Class UID or Study Instance UID.
    DeidentificationRefused
        Burned In Annotation is YES and ``allow_burned_in`` is false.
    """
    ds, syntax = _read(source)
    uids = {}
    for keyword in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID"):
        value = str(ds.get(keyword, "") or "").strip()
        if not value:
            raise MissingAttribute(f"{name or 'instance'}: no {keyword}")
        uids[keyword] = value
    what = name or f"SOP Instance UID {uids['SOPInstanceUID']}"
    burned = str(ds.get(BURNED_IN_ANNOTATION).value if BURNED_IN_ANNOTATION in ds else "")
    if burned.strip().upper() == "YES" and not allow_burned_in:
        raise DeidentificationRefused(
            f"{what}: Burned In Annotation is YES (text in the pixels may identify the "
            "patient, and Clean Pixel Data is not provided): refused"
        )
    # The key of the pseudonym and the date shift: the Patient ID, else the name, else
    # (nothing identifies the patient) the study.
    patient_id = str(ds.get("PatientID", "") or "").strip()
    patient_name = str(ds.get("PatientName", "") or "").strip()
    patient = patient_id or (
        f"name:{patient_name}" if patient_name else f"study:{uids['StudyInstanceUID']}"
    )
    context = _Context(
        keys=keys,
        active=options.active(),
        terms=_terms(ds),
        patient=patient,
        shift_days=keys.date_shift_days(patient),
        safe_private=_SAFE if options.retain_safe_private else frozenset(),
    )
    with warnings.catch_warnings():
        # Values that break their VR are the source's; they are kept or replaced, never
        # a reason to fail (pydicom warns when converting them).
        warnings.simplefilter("ignore")
        try:
            _apply(ds, context, top=True)
            _mark(ds, options)
            new_sop = str(ds.SOPInstanceUID)
            meta = encode_file_meta(uids["SOPClassUID"], new_sop, syntax)
            data = meta + encode_data_set(ds, syntax)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            # A value pydicom cannot convert or encode: this instance fails, named.
            raise CannotParse(f"{what}: cannot be de-identified: {exc}") from exc
    return Deidentified(
        data=data,
        sop_class_uid=uids["SOPClassUID"],
        sop_instance_uid=new_sop,
        study_instance_uid=str(ds.StudyInstanceUID),
        series_instance_uid=str(ds.get("SeriesInstanceUID", "") or ""),
        transfer_syntax_uid=syntax,
        original_sop_instance_uid=uids["SOPInstanceUID"],
        original_study_instance_uid=uids["StudyInstanceUID"],
    )


def _read(source: BinaryIO | Path) -> tuple[Dataset, str]:
    """The data set and its transfer syntax; NotDicom / CannotParse otherwise.

    A file is first checked as the archive checks what it ingests
    (:func:`~dicomvault.dicom.parse.parse_instance`: truncation anywhere, pixel data
    included, malformed elements, UIDs); pydicom alone reads a truncated file without a
    word. A stream is a stored blob, which passed that check when it was received.
    """
    syntax: str | None = None
    if isinstance(source, Path):
        syntax = parse_instance(source, meta_mismatch="warn").transfer_syntax_uid
    stream: BinaryIO = open(source, "rb") if isinstance(source, Path) else source  # noqa: SIM115
    try:
        start = stream.tell()
        meta = read_file_meta(stream.read(HEAD_SIZE))  # NotDicom / CannotParse
        stream.seek(start)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(stream, force=True)
            implicit, little = ds.original_encoding
            if not implicit and any(ds.get_item(t).VR is None for t in _tags(ds)):
                # Labelled explicit but written implicit (pydicom reads what is there):
                # say so, so that writing converts every element to the label's syntax.
                ds.set_original_encoding(True, little, ds.original_character_set)
            # Every sequence parsed now: a malformed one fails here, before anything is
            # written (the other values stay raw: pixel data is not decoded).
            for _ in _walk(ds):
                pass
    except (NotDicom, CannotParse):
        raise
    except (OSError, RecursionError) as exc:
        raise CannotParse(f"cannot read: {exc}") from exc
    except Exception as exc:  # pydicom raises many types on malformed input
        raise CannotParse(f"does not parse: {exc}") from exc
    finally:
        if isinstance(source, Path):
            stream.close()
    syntax = syntax or meta.transfer_syntax_uid
    if not syntax:
        implicit, little = ds.original_encoding
        syntax = (
            IMPLICIT_VR_LITTLE_ENDIAN
            if implicit
            else (EXPLICIT_VR_LITTLE_ENDIAN if little else EXPLICIT_VR_BIG_ENDIAN)
        )
    return ds, syntax


def _walk(ds: Dataset) -> Iterator[None]:
    """Parse every sequence (not the other values: pixel data stays raw)."""
    for tag in _tags(ds):
        if _vr(ds, tag) == "SQ":
            for item in ds[tag].value:
                yield from _walk(item)
        yield None


def _tags(ds: Dataset) -> list[int]:
    """The data set's tags, as a list (it changes while we walk it). Iterating a Dataset
    itself would convert every raw element, pixel data included."""
    return [int(tag) for tag in ds.keys()]  # noqa: SIM118


def _vr(ds: Dataset, tag: int) -> str:
    """The element's VR: as encoded, else (implicit VR, UN) the dictionary's."""
    vr = ds.get_item(tag).VR
    if vr is None or vr == "UN":
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            return vr or "UN"
    return str(vr).split(" or ")[0]


def _terms(ds: Dataset) -> tuple[re.Pattern[str] | None, tuple[str, ...]]:
    """The identifying values the clean action looks for (top level of the source)."""

    def values(keyword: str) -> list[str]:
        value = ds.get(keyword)
        if value is None or isinstance(value, Sequence):
            return []
        items = value if isinstance(value, MultiValue | list) else [value]
        return [str(item) for item in items if str(item).strip()]

    names = [v for k in _NAME_KEYWORDS for v in values(k)]
    ids = [v for k in _ID_KEYWORDS for v in values(k)]
    birth = "".join(values("PatientBirthDate"))
    # the birth date as people write it too
    if len(birth) == 8 and ascii_digits(birth):
        ids += [f"{birth[:4]}-{birth[4:6]}-{birth[6:]}", f"{birth[6:]}.{birth[4:6]}.{birth[:4]}"]
    return identifying_terms(names, ids)


def _apply(ds: Dataset, context: _Context, *, top: bool = False) -> None:
    """Apply the profile to every attribute of ``ds`` and, recursively, of its items."""
    _private(ds, context)
    overlays_removed: set[int] = set()
    for tag in _tags(ds):
        group, element = tag >> 16, tag & 0xFFFF
        if group % 2 or tag not in ds:
            continue
        if group in overlays_removed:
            del ds[tag]
            continue
        row = ATTRIBUTES.get(tag) or _repeating(group, element)
        if top and tag in (PATIENT_ID, PATIENT_NAME):
            # One pseudonym for both, from the keyed Patient ID (module docstring).
            pseudonym = context.keys.pseudonym(context.patient)
            ds[tag] = DataElement(tag, "LO" if tag == PATIENT_ID else "PN", pseudonym)
            continue
        if row is None:
            if _vr(ds, tag) == "SQ":
                _items(ds, tag, context)
            continue
        action = resolve(row, context.active)
        if group & 0xFF00 == 0x6000 and element == OVERLAY_DATA and action == "X":
            overlays_removed.add(group)
            for other in [t for t in _tags(ds) if t >> 16 == group]:
                del ds[other]
            continue
        _act(ds, tag, action, context)


def _repeating(group: int, element: int) -> Row | None:
    base = group & 0xFF00
    if base not in (0x5000, 0x6000):
        return None
    return REPEATING_GROUPS.get((base, element)) or REPEATING_GROUPS.get((base, None))


def _items(ds: Dataset, tag: int, context: _Context) -> None:
    for item in ds[tag].value:
        _apply(item, context)


def _act(ds: Dataset, tag: int, action: str, context: _Context) -> None:
    vr = _vr(ds, tag)
    if action == "X":
        del ds[tag]
    elif action in ("K", "U*") or (action in ("D", "C") and vr == "SQ"):
        if vr == "SQ":
            _items(ds, tag, context)
        elif action == "U*":
            _act(ds, tag, "U", context)
    elif action == "Z":
        ds[tag] = DataElement(tag, vr, Sequence() if vr == "SQ" else _empty(vr))
    elif action == "U" or (action == "D" and vr == "UI"):
        values = _values(ds[tag].value)
        new = [context.keys.uid(str(v)) for v in values]
        ds[tag] = DataElement(tag, "UI", new[0] if len(new) == 1 else new)
    elif action == "D":
        ds[tag] = DataElement(tag, vr, dummy(vr) if vr in DUMMY_BY_VR else _empty(vr))
    elif action == "C":
        _clean(ds, tag, vr, context)
    else:  # pragma: no cover - the generator admits only the codes above
        raise ValueError(f"unknown action {action!r}")


def _empty(vr: str) -> str | bytes | None:
    if vr in TEXT_VRS or vr in TEMPORAL_VRS or vr in ("AS", "DS", "IS", "UI"):
        return ""
    if vr.startswith("O") or vr == "UN":
        return b""
    return None


def _values(value: object) -> list[object]:
    if value is None or value == "":
        return []
    if isinstance(value, MultiValue | list | tuple):
        return list(value)
    return [value]


def _clean(ds: Dataset, tag: int, vr: str, context: _Context) -> None:
    """Action C (module docstring): shift dates, keep clean text, dummy the rest."""
    if "retain_modified_dates" in context.active and (tag in _TEMPORAL_TAGS):
        if vr == "DA" or vr == "DT":
            shift = shift_date if vr == "DA" else shift_datetime
            moved = [shift(str(v), context.shift_days) for v in _values(ds[tag].value)]
            if any(m is None for m in moved):
                ds[tag] = DataElement(tag, vr, dummy(vr))
            else:
                ds[tag] = DataElement(tag, vr, moved[0] if len(moved) == 1 else moved)
        elif vr not in TEXT_VRS and vr != "TM":
            del ds[tag]  # a binary timestamp cannot be moved
        return  # times and the UTC offset are kept
    if vr in TEXT_VRS:
        text = [str(v) for v in _values(ds[tag].value)]
        if any(mentions(t, context.terms) for t in text):
            ds[tag] = DataElement(tag, vr, dummy(vr))
    elif vr.startswith("O") or vr == "UN":
        del ds[tag]  # binary: nothing to check
    # numbers, dates outside the date options: nothing identifying to clean


#: The rows whose C is the Modified Dates option's (the temporal attributes).
_TEMPORAL_TAGS = frozenset(
    tag for tag, (_, _, options) in ATTRIBUTES.items() if "retain_modified_dates" in options
)


def _private(ds: Dataset, context: _Context) -> None:
    """PS3.15 E.3.10: remove private attributes, except (Retain Safe Private) those of
    Table E.3.10-1, identified by group, element byte and Private Creator (PS3.5 7.8.1),
    and the Private Creator elements they need."""
    private = [t for t in _tags(ds) if (t >> 16) % 2]
    if not private:
        return
    action = resolve(PRIVATE_ATTRIBUTES, context.active)
    kept_blocks: set[tuple[int, int]] = set()
    creators: dict[tuple[int, int], str] = {}
    if action == "C":
        for tag in private:
            group, element = tag >> 16, tag & 0xFFFF
            if 0x0010 <= element <= 0x00FF:
                creators[(group, element)] = str(ds[tag].value or "").strip()
    for tag in private:
        group, element = tag >> 16, tag & 0xFFFF
        if element <= 0x00FF:
            continue  # creators: decided below
        creator = creators.get((group, element >> 8))
        if creator is not None and (group, element & 0xFF, creator) in context.safe_private:
            kept_blocks.add((group, element >> 8))
            # Converted: pydicom's private dictionary knows the VR of an implicit-VR one.
            if ds[tag].VR == "SQ":
                _items(ds, tag, context)
        else:
            del ds[tag]
    for tag in private:
        group, element = tag >> 16, tag & 0xFFFF
        if element <= 0x00FF and (group, element) not in kept_blocks:
            del ds[tag]


def _mark(ds: Dataset, options: Options) -> None:
    """The attributes E.1.1 asks a de-identifier to add (PS3.3 C.7.1.1, C.12.1)."""
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = [f"dicomvault {dicomvault.__version__}"] + [
        meaning for _, meaning in options.codes()
    ]
    items = Sequence()
    for value, meaning in options.codes():
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = items
    ds.LongitudinalTemporalInformationModified = {
        "none": "REMOVED",
        "full": "UNMODIFIED",
        "modified": "MODIFIED",
    }[options.retain_dates]
