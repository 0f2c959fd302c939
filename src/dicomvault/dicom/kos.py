"""IOCM rejection notes: a Key Object Selection Document (PS3.3 A.35.4) whose title is
one of the rejection reasons of PS3.16 CID 7011, read from its DICOM JSON metadata.

IHE RAD TF-1 / TF-2 "Imaging Object Change Management" (IOCM): the archive that stores
such a note hides the instances it lists — Current Requested Procedure Evidence
Sequence (0040,A375) > Referenced Series Sequence (0008,1115) > Referenced SOP Sequence
(0008,1199) — from queries and retrievals, and refuses later copies of them.

The note is read from the index record's metadata (PS3.18 F.2 DICOM JSON, already built
while the header was parsed): nothing is read twice, and every other SOP class costs
one string comparison (:func:`rejection_note` returns at once).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from dicomvault.model.records import IndexRecord
from dicomvault.model.uid import uid_problem

#: PS3.4 B.5 Key Object Selection Document Storage.
KEY_OBJECT_SELECTION_DOCUMENT: Final = "1.2.840.10008.5.1.4.1.1.88.59"

#: PS3.16 CID 7011 "Rejected for Quality Reasons" and the other rejection titles of
#: IOCM, by (Code Value, Coding Scheme Designator).
REJECTION_TITLES: Final[dict[tuple[str, str], str]] = {
    ("113001", "DCM"): "Rejected for Quality Reasons",
    ("113037", "DCM"): "Rejected for Patient Safety Reasons",
    ("113038", "DCM"): "Incorrect Modality Worklist Entry",
    ("113039", "DCM"): "Data Retention Policy Expired",
}

# DICOM JSON keys (PS3.18 F.2.1: eight upper-case hex digits).
_CONCEPT_NAME_CODE_SEQUENCE = "0040A043"
_CODE_VALUE = "00080100"
_CODING_SCHEME_DESIGNATOR = "00080102"
_EVIDENCE_SEQUENCE = "0040A375"  # Current Requested Procedure Evidence Sequence
_STUDY_INSTANCE_UID = "0020000D"
_REFERENCED_SERIES_SEQUENCE = "00081115"
_SERIES_INSTANCE_UID = "0020000E"
_REFERENCED_SOP_SEQUENCE = "00081199"
_REFERENCED_SOP_CLASS_UID = "00081150"
_REFERENCED_SOP_INSTANCE_UID = "00081155"


@dataclass(frozen=True, slots=True)
class RejectedReference:
    """One instance a rejection note lists."""

    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True, slots=True)
class RejectionNote:
    """A stored KOS with a CID 7011 rejection title."""

    sop_instance_uid: str  # the note's own
    code_value: str  # 113001, 113037, 113038, 113039
    code_meaning: str
    references: tuple[RejectedReference, ...]


def _items(element: Any) -> list[dict[str, Any]]:
    if not isinstance(element, dict):
        return []
    value = element.get("Value")
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _text(item: dict[str, Any], key: str) -> str:
    element = item.get(key)
    if not isinstance(element, dict):
        return ""
    value = element.get("Value")
    if isinstance(value, list) and value and isinstance(value[0], str):
        return value[0].strip()
    return ""


def _uid(item: dict[str, Any], key: str) -> str | None:
    value = _text(item, key)
    return value if value and uid_problem(value) is None else None


def _references(data: dict[str, Any]) -> Iterator[RejectedReference]:
    for study in _items(data.get(_EVIDENCE_SEQUENCE)):
        study_uid = _uid(study, _STUDY_INSTANCE_UID)
        for series in _items(study.get(_REFERENCED_SERIES_SEQUENCE)):
            series_uid = _uid(series, _SERIES_INSTANCE_UID)
            for sop in _items(series.get(_REFERENCED_SOP_SEQUENCE)):
                sop_uid = _uid(sop, _REFERENCED_SOP_INSTANCE_UID)
                # A reference without its UIDs cannot name an instance: skipped.
                if study_uid and series_uid and sop_uid:
                    yield RejectedReference(
                        study_uid,
                        series_uid,
                        _text(sop, _REFERENCED_SOP_CLASS_UID),
                        sop_uid,
                    )


def rejection_note(record: IndexRecord) -> RejectionNote | None:
    """The rejection note ``record`` is, or ``None`` (any other instance, or a KOS whose
    Concept Name Code Sequence is not a CID 7011 rejection title).

    Parameters
    ----------
    record : IndexRecord
        The index record of an instance being stored (its ``metadata_json`` holds the
        sequences: UIDs are far below any bulk data threshold).
    """
    if record.instance.sop_class_uid != KEY_OBJECT_SELECTION_DOCUMENT:
        return None
    try:
        data = json.loads(record.metadata_json)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    titles = _items(data.get(_CONCEPT_NAME_CODE_SEQUENCE))
    if not titles:
        return None
    code = (_text(titles[0], _CODE_VALUE), _text(titles[0], _CODING_SCHEME_DESIGNATOR))
    meaning = REJECTION_TITLES.get(code)
    if meaning is None:
        return None
    # The same instance listed twice counts once.
    unique = {ref.sop_instance_uid: ref for ref in _references(data)}
    return RejectionNote(record.instance.sop_instance_uid, code[0], meaning, tuple(unique.values()))
