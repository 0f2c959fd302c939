"""Query/Retrieve keys per level, transcribed once from the standard.

Source: DICOM PS3.4 (2024), Annex C.6.1.1 (Patient Root Query/Retrieve Information Model:
Tables C.6-1 Patient Level, C.6-2 Study Level, C.6-3 Series Level, C.6-4 Composite Object
Instance Level, and C.6.1.1.5.1 alternate instance-level keys) and C.6.2.1 (Study Root:
Table C.6-5, the Study Level there also holding the Patient Level keys of C.6-1). The
"key" column is the table's Matching Key Type: U unique, R required, O optional.

The "column" column is ours: where the index keeps the attribute (``table.column``), or
``None`` when it is answered from the stored DICOM JSON of an instance. Attributes not in
this table are optional keys too ("additional keys"): answered from the metadata.
Derived attributes (Number of … Related …, Modalities/SOP Classes in Study) are kept as
columns by ingest, except Number of Patient Related Series/Instances, which are sums of
the study columns (``sum:``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Final

from dicomvault.model.query import InformationModel, Level


@dataclass(frozen=True)
class Attribute:
    """One key of the spec tables."""

    keyword: str
    tag: int
    vr: str
    level: Level  # in the Patient Root model (Study Root moves PATIENT keys to STUDY)
    key: str  # "U" | "R" | "O"
    column: str | None  # "table.column", "sum:studies.column", or None (metadata)
    multi: bool = False  # the column holds backslash-joined values


P, S, E, IM = Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE

# fmt: off
#: keyword, tag, VR, level, key type, column, multi-valued column
_TABLE: Final[tuple[tuple[str, int, str, Level, str, str | None, bool], ...]] = (
    # PS3.4 Table C.6-1 Patient Level (C.6.2.1: Study Level in the Study Root model)
    ("PatientName", 0x00100010, "PN", P, "R", "patients.patient_name", False),
    ("PatientID", 0x00100020, "LO", P, "U", "patients.patient_id", False),
    ("IssuerOfPatientID", 0x00100021, "LO", P, "O", "patients.issuer_of_patient_id", False),
    ("PatientBirthDate", 0x00100030, "DA", P, "O", "patients.patient_birth_date", False),
    ("PatientBirthTime", 0x00100032, "TM", P, "O", "patients.patient_birth_time", False),
    ("PatientSex", 0x00100040, "CS", P, "O", "patients.patient_sex", False),
    ("OtherPatientIDs", 0x00101000, "LO", P, "O", "patients.other_patient_ids", True),
    ("EthnicGroup", 0x00102160, "SH", P, "O", "patients.ethnic_group", False),
    ("PatientComments", 0x00104000, "LT", P, "O", "patients.patient_comments", False),
    ("NumberOfPatientRelatedStudies", 0x00201200, "IS", P, "O",
     "patients.number_of_studies", False),
    ("NumberOfPatientRelatedSeries", 0x00201202, "IS", P, "O",
     "sum:studies.number_of_series", False),
    ("NumberOfPatientRelatedInstances", 0x00201204, "IS", P, "O",
     "sum:studies.number_of_instances", False),
    # PS3.4 Table C.6-2 Study Level
    ("StudyDate", 0x00080020, "DA", S, "R", "studies.study_date", False),
    ("StudyTime", 0x00080030, "TM", S, "R", "studies.study_time", False),
    ("AccessionNumber", 0x00080050, "SH", S, "R", "studies.accession_number", False),
    ("StudyID", 0x00200010, "SH", S, "R", "studies.study_id", False),
    ("StudyInstanceUID", 0x0020000D, "UI", S, "U", "studies.study_instance_uid", False),
    ("ReferringPhysicianName", 0x00080090, "PN", S, "O",
     "studies.referring_physician_name", False),
    ("StudyDescription", 0x00081030, "LO", S, "O", "studies.study_description", False),
    ("TimezoneOffsetFromUTC", 0x00080201, "SH", S, "O",
     "studies.timezone_offset_from_utc", False),
    ("PatientAge", 0x00101010, "AS", S, "O", "studies.patient_age", False),
    ("PatientSize", 0x00101020, "DS", S, "O", "studies.patient_size", False),
    ("PatientWeight", 0x00101030, "DS", S, "O", "studies.patient_weight", False),
    ("ModalitiesInStudy", 0x00080061, "CS", S, "O", "studies.modalities_in_study", True),
    ("SOPClassesInStudy", 0x00080062, "UI", S, "O", "studies.sop_classes_in_study", True),
    ("NumberOfStudyRelatedSeries", 0x00201206, "IS", S, "O",
     "studies.number_of_series", False),
    ("NumberOfStudyRelatedInstances", 0x00201208, "IS", S, "O",
     "studies.number_of_instances", False),
    # PS3.4 Table C.6-3 Series Level
    ("Modality", 0x00080060, "CS", E, "R", "series.modality", False),
    ("SeriesNumber", 0x00200011, "IS", E, "R", "series.series_number", False),
    ("SeriesInstanceUID", 0x0020000E, "UI", E, "U", "series.series_instance_uid", False),
    ("NumberOfSeriesRelatedInstances", 0x00201209, "IS", E, "O",
     "series.number_of_instances", False),
    ("SeriesDescription", 0x0008103E, "LO", E, "O", "series.series_description", False),
    ("SeriesDate", 0x00080021, "DA", E, "O", "series.series_date", False),
    ("SeriesTime", 0x00080031, "TM", E, "O", "series.series_time", False),
    ("BodyPartExamined", 0x00180015, "CS", E, "O", "series.body_part_examined", False),
    ("InstitutionName", 0x00080080, "LO", E, "O", "series.institution_name", False),
    ("StationName", 0x00081010, "SH", E, "O", "series.station_name", False),
    ("PerformedProcedureStepStartDate", 0x00400244, "DA", E, "O",
     "series.performed_procedure_step_start_date", False),
    ("PerformedProcedureStepStartTime", 0x00400245, "TM", E, "O",
     "series.performed_procedure_step_start_time", False),
    # PS3.4 Table C.6-4 Composite Object Instance Level (+ C.6.1.1.5.1)
    ("InstanceNumber", 0x00200013, "IS", IM, "R", "instances.instance_number", False),
    ("SOPInstanceUID", 0x00080018, "UI", IM, "U", "instances.sop_instance_uid", False),
    ("SOPClassUID", 0x00080016, "UI", IM, "O", "instances.sop_class_uid", False),
    ("ContentDate", 0x00080023, "DA", IM, "O", "instances.content_date", False),
    ("ContentTime", 0x00080033, "TM", IM, "O", "instances.content_time", False),
    ("AcquisitionDateTime", 0x0008002A, "DT", IM, "O",
     "instances.acquisition_date_time", False),
    ("Rows", 0x00280010, "US", IM, "O", "instances.rows", False),
    ("Columns", 0x00280011, "US", IM, "O", "instances.columns", False),
    ("BitsAllocated", 0x00280100, "US", IM, "O", "instances.bits_allocated", False),
    ("NumberOfFrames", 0x00280008, "IS", IM, "O", "instances.number_of_frames", False),
    ("ImageType", 0x00080008, "CS", IM, "O", "instances.image_type", True),
    ("CompletionFlag", 0x0040A491, "CS", IM, "O", "instances.completion_flag", False),
    ("VerificationFlag", 0x0040A493, "CS", IM, "O", "instances.verification_flag", False),
    ("ContentLabel", 0x00700080, "CS", IM, "O", "instances.content_label", False),
)
# fmt: on

ATTRIBUTES: Final[dict[int, Attribute]] = {
    row[1]: Attribute(row[0], row[1], row[2], row[3], row[4], row[5], row[6]) for row in _TABLE
}
BY_KEYWORD: Final[dict[str, Attribute]] = {a.keyword: a for a in ATTRIBUTES.values()}

#: PS3.4 C.2.2.2.5 / C.4.1.2.1: date and time keys that combined date-time matching
#: (Extended Negotiation "Date-time matching", PS3.4 Table C.5-2 byte 2) pairs up.
DATE_TIME_PAIRS: Final[tuple[tuple[int, int], ...]] = (
    (0x00100030, 0x00100032),  # Patient's Birth Date / Time
    (0x00080020, 0x00080030),  # Study Date / Time
    (0x00080021, 0x00080031),  # Series Date / Time
    (0x00080023, 0x00080033),  # Content Date / Time
    (0x00400244, 0x00400245),  # Performed Procedure Step Start Date / Time
    (0x00080022, 0x00080032),  # Acquisition Date / Time (metadata)
)


def level_of(attribute: Attribute, model: InformationModel) -> Level:
    """The level an attribute belongs to in *model* (PS3.4 C.6.2.1: the Study Root
    model has no Patient level; its patient keys are Study level keys)."""
    if model is InformationModel.STUDY_ROOT and attribute.level is Level.PATIENT:
        return Level.STUDY
    return attribute.level


@functools.cache
def unique_keys(model: InformationModel, down_to: Level) -> tuple[Attribute, ...]:
    """The unique key of each level of *model* from the top down to *down_to*.

    PS3.4 C.6.1.1.1 / C.6.2.1.1: PatientID, StudyInstanceUID, SeriesInstanceUID,
    SOPInstanceUID.
    """
    keys = (
        BY_KEYWORD["PatientID"],
        BY_KEYWORD["StudyInstanceUID"],
        BY_KEYWORD["SeriesInstanceUID"],
        BY_KEYWORD["SOPInstanceUID"],
    )
    return tuple(
        key for key in keys if key.level in model.levels and key.level.depth <= down_to.depth
    )
