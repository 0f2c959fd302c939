"""Modality Performed Procedure Step data sets (PS3.4 F.7.2, PS3.3 C.4.13-C.4.16): the
N-CREATE Attribute List and the N-SET Modification List, checked against the
requirements of PS3.4 Table F.7.2-1, kept as DICOM JSON (PS3.18 F.2), with pydicom."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from pydicom.dataset import Dataset

from dicomvault.dicom.dataset_codec import decode_data_set
from dicomvault.model.errors import CannotParse, DicomVaultError

IN_PROGRESS: Final = "IN PROGRESS"
COMPLETED: Final = "COMPLETED"
DISCONTINUED: Final = "DISCONTINUED"
#: Performed Procedure Step Status (0040,0252) enumerated values (PS3.3 C.4.14).
STATUSES: Final = (IN_PROGRESS, COMPLETED, DISCONTINUED)

#: Type 1 at N-CREATE (PS3.4 Table F.7.2-1, "N-CREATE" column, 1).
CREATE_REQUIRED: Final = (
    "ScheduledStepAttributesSequence",
    "PerformedProcedureStepID",
    "PerformedStationAETitle",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "PerformedProcedureStepStatus",
    "Modality",
)
#: Required with a value when the step ends (PS3.4 Table F.7.2-1, "Final State" column):
#: both end states need the end date and time; COMPLETED also the performed series.
FINAL_REQUIRED: Final = ("PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime")

#: N-CREATE / N-SET statuses (PS3.7 10.1.5.1.6, 10.1.3.1.9; PS3.4 F.7.2.1.2, F.7.2.2.2).
PROCESSING_FAILURE: Final = 0x0110
INVALID_ATTRIBUTE_VALUE: Final = 0x0106
MISSING_ATTRIBUTE: Final = 0x0120
DUPLICATE_SOP_INSTANCE: Final = 0x0111
NO_SUCH_SOP_INSTANCE: Final = 0x0112
#: Error ID (0000,0903) with 0x0110: "Performed Procedure Step Object may no longer be
#: updated" (PS3.4 F.7.2.2.2).
NO_LONGER_UPDATABLE: Final = 0xA710


class MppsError(DicomVaultError):
    """An MPPS request the SCP refuses: ``status`` (and ``error_id``) to answer."""

    def __init__(self, message: str, status: int, error_id: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_id = error_id


@dataclass(frozen=True, slots=True)
class StepSummary:
    """What the archive indexes of a step, and how it finds the worklist item."""

    status: str
    patient_id: str | None
    modality: str | None
    #: (Study Instance UID, Accession Number, Scheduled Procedure Step ID) per
    #: Scheduled Step Attributes Sequence item.
    scheduled: tuple[tuple[str | None, str | None, str | None], ...]
    performed_series: tuple[str, ...]

    @property
    def study_instance_uid(self) -> str | None:
        return next((s[0] for s in self.scheduled if s[0]), None)

    @property
    def accession_number(self) -> str | None:
        return next((s[1] for s in self.scheduled if s[1]), None)


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return str(value).strip() or None


def _decode(data: bytes | None, transfer_syntax_uid: str, what: str) -> Dataset:
    if data is None:
        raise MppsError(f"{what} without a data set", MISSING_ATTRIBUTE)
    try:
        return decode_data_set(data, transfer_syntax_uid)
    except CannotParse as exc:
        raise MppsError(str(exc), PROCESSING_FAILURE) from exc


def _check_status(value: str | None) -> str:
    if value not in STATUSES:
        raise MppsError(
            f"Performed Procedure Step Status {value!r} is not one of {', '.join(STATUSES)}",
            INVALID_ATTRIBUTE_VALUE,
        )
    return value


def summary(ds: Dataset) -> StepSummary:
    scheduled = tuple(
        (
            _text(item, "StudyInstanceUID"),
            _text(item, "AccessionNumber"),
            _text(item, "ScheduledProcedureStepID"),
        )
        for item in ds.get("ScheduledStepAttributesSequence") or []
    )
    series = tuple(
        uid
        for item in ds.get("PerformedSeriesSequence") or []
        if (uid := _text(item, "SeriesInstanceUID"))
    )
    return StepSummary(
        _text(ds, "PerformedProcedureStepStatus") or "",
        _text(ds, "PatientID"),
        _text(ds, "Modality"),
        scheduled,
        series,
    )


def parse_create(data: bytes | None, transfer_syntax_uid: str) -> Dataset:
    """The N-CREATE Attribute List, checked (PS3.4 F.7.2.1.1): the Type 1 attributes
    present, the status IN PROGRESS.

    Raises
    ------
    MppsError
        0x0120 Missing attribute, 0x0106 Invalid attribute value, 0x0110 unparsable.
    """
    ds = _decode(data, transfer_syntax_uid, "N-CREATE")
    missing = [k for k in CREATE_REQUIRED if k not in ds or ds[k].is_empty]
    if missing:
        raise MppsError(f"missing {', '.join(missing)}", MISSING_ATTRIBUTE)
    if _check_status(_text(ds, "PerformedProcedureStepStatus")) != IN_PROGRESS:
        raise MppsError("an MPPS is created IN PROGRESS (PS3.4 F.7.2.1)", INVALID_ATTRIBUTE_VALUE)
    return ds


def apply_set(stored: Dataset, data: bytes | None, transfer_syntax_uid: str) -> Dataset:
    """``stored`` with an N-SET Modification List applied (PS3.4 F.7.2.2.1): each
    attribute given replaces the stored one. The result is checked: the status is one of
    the three, and an end state has what PS3.4 Table F.7.2-1 requires at the end.

    Raises
    ------
    MppsError
        0x0110 + Error ID A710 when the stored step has ended already; 0x0106 for a
        bad status; 0x0120 when an end state lacks a required attribute.
    """
    current = _text(stored, "PerformedProcedureStepStatus")
    if current != IN_PROGRESS:
        raise MppsError(
            f"step is {current}: may no longer be updated",
            PROCESSING_FAILURE,
            NO_LONGER_UPDATABLE,
        )
    changes = _decode(data, transfer_syntax_uid, "N-SET")
    merged = Dataset()
    merged.update(stored)
    for element in changes:
        merged[element.tag] = element
    status = _check_status(_text(merged, "PerformedProcedureStepStatus"))
    if status != IN_PROGRESS:
        missing = [k for k in FINAL_REQUIRED if k not in merged or merged[k].is_empty]
        if status == COMPLETED and not summary(merged).performed_series:
            missing.append("PerformedSeriesSequence > SeriesInstanceUID")
        if missing:
            raise MppsError(f"{status} needs {', '.join(missing)}", MISSING_ATTRIBUTE)
    return merged


def to_json(ds: Dataset) -> str:
    """The step as DICOM JSON (PS3.18 F.2)."""
    return json.dumps(ds.to_json_dict(), separators=(",", ":"))


def from_json(text: str) -> Dataset:
    data: dict[str, Any] = json.loads(text)
    return Dataset.from_json(data)


#: A step's data set as the archive layer handles it (opaque there: only this module
#: looks inside).
StepData = Dataset


def performed_series(text: str) -> list[tuple[str, str, int]]:
    """(Series Instance UID, Series Description, number of referenced instances) of each
    Performed Series Sequence item of a stored step (PS3.3 C.4.16)."""
    out = []
    for item in from_json(text).get("PerformedSeriesSequence") or []:
        uid = _text(item, "SeriesInstanceUID")
        if uid:
            referenced = len(item.get("ReferencedImageSequence") or []) + len(
                item.get("ReferencedNonImageCompositeSOPInstanceSequence") or []
            )
            out.append((uid, _text(item, "SeriesDescription") or "", referenced))
    return out
