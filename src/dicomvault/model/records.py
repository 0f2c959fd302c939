"""Index records: what ``dicom/`` extracts from a header and ``index/`` stores.

The attributes are those PS3.4 C.6.1.1 / C.6.2.1 list as unique, required or optional keys
at each query level of the patient-root and study-root information models, and those
PS3.18 Table 10.6.1-5/-6/-7 require in QIDO-RS responses. Values are already decoded
(Specific Character Set applied) to Unicode ``str``; absent values are ``None``.
Dates stay DICOM strings (``YYYYMMDD``, ``HHMMSS.FFFFFF``) so range matching (PS3.4
C.2.2.2.5) works on them as text, exactly as the standard defines it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class PatientRecord:
    patient_id: str  # (0010,0020); "" when the instance carries none
    issuer_of_patient_id: str | None = None  # (0010,0021)
    patient_name: str | None = None  # (0010,0010), PN as "Family^Given=Ideographic=Phonetic"
    patient_birth_date: str | None = None  # (0010,0030)
    patient_birth_time: str | None = None  # (0010,0032)
    patient_sex: str | None = None  # (0010,0040)
    other_patient_ids: str | None = None  # (0010,1000) legacy; backslash-joined
    ethnic_group: str | None = None  # (0010,2160)
    patient_comments: str | None = None  # (0010,4000)


@dataclass(frozen=True, slots=True)
class StudyRecord:
    study_instance_uid: str  # (0020,000D)
    study_date: str | None = None  # (0008,0020)
    study_time: str | None = None  # (0008,0030)
    accession_number: str | None = None  # (0008,0050)
    study_id: str | None = None  # (0020,0010)
    study_description: str | None = None  # (0008,1030)
    referring_physician_name: str | None = None  # (0008,0090)
    timezone_offset_from_utc: str | None = None  # (0008,0201)
    patient_age: str | None = None  # (0010,1010)
    patient_size: str | None = None  # (0010,1020)
    patient_weight: str | None = None  # (0010,1030)
    specific_character_set: str | None = None  # (0008,0005), backslash-joined


@dataclass(frozen=True, slots=True)
class SeriesRecord:
    series_instance_uid: str  # (0020,000E)
    modality: str | None = None  # (0008,0060)
    series_number: int | None = None  # (0020,0011)
    series_description: str | None = None  # (0008,103E)
    series_date: str | None = None  # (0008,0021)
    series_time: str | None = None  # (0008,0031)
    body_part_examined: str | None = None  # (0018,0015)
    institution_name: str | None = None  # (0008,0080)
    station_name: str | None = None  # (0008,1010)
    performed_procedure_step_start_date: str | None = None  # (0040,0244)
    performed_procedure_step_start_time: str | None = None  # (0040,0245)
    # (0040,0275) Request Attributes Sequence items: ScheduledProcedureStepID and
    # RequestedProcedureID, backslash-joined (QIDO-RS Table 10.6.1-6 query keys).
    scheduled_procedure_step_id: str | None = None  # (0040,0009)
    requested_procedure_id: str | None = None  # (0040,1001)


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    sop_instance_uid: str  # (0008,0018)
    sop_class_uid: str  # (0008,0016)
    transfer_syntax_uid: str  # (0002,0010) as stored
    instance_number: int | None = None  # (0020,0013)
    content_date: str | None = None  # (0008,0023)
    content_time: str | None = None  # (0008,0033)
    acquisition_date_time: str | None = None  # (0008,002A)
    rows: int | None = None  # (0028,0010)
    columns: int | None = None  # (0028,0011)
    bits_allocated: int | None = None  # (0028,0100)
    number_of_frames: int | None = None  # (0028,0008)
    image_type: str | None = None  # (0008,0008), backslash-joined
    # PS3.4 C.6.1.1.5 optional instance-level keys for SR / presentation states
    completion_flag: str | None = None  # (0040,A491)
    verification_flag: str | None = None  # (0040,A493)
    content_label: str | None = None  # (0070,0080)


@dataclass(frozen=True, slots=True)
class IndexRecord:
    """Everything the index keeps for one instance, at all four levels."""

    patient: PatientRecord
    study: StudyRecord
    series: SeriesRecord
    instance: InstanceRecord
    #: The instance's data set as DICOM JSON (PS3.18 F.2), without bulk data: values
    #: larger than the threshold and all pixel data become ``BulkDataURI`` entries whose
    #: URI is relative: ``bulkdata/<tag>`` (the web layer makes it absolute).
    metadata_json: str = "{}"
    #: Warnings met while reading (e.g. an unknown Specific Character Set); stored anyway.
    warnings: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """Where and what the stored bytes are."""

    name: str  # chosen by the archive, never from the data set
    size: int
    sha256: str  # hex digest of the stored bytes (the whole Part 10 file)
    dataset_sha256: str  # hex digest of the data set bytes after the file meta


class StoreStatus(enum.Enum):
    """Outcome of one ingest (maps onto DIMSE C-STORE statuses in ``dimse/``)."""

    STORED = "stored"  # new instance
    DUPLICATE = "duplicate"  # same SOP Instance UID, identical data set: nothing written
    OVERWRITTEN = "overwritten"  # same UID, different bytes, policy overwrite
    KEPT_FIRST = "kept-first"  # same UID, different bytes, policy keep-first


@dataclass(frozen=True, slots=True)
class StoreResult:
    status: StoreStatus
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    size: int
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StoredInstance:
    """An instance as the index knows it (for retrieve, verify, delete)."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    blob_name: str
    size: int
    sha256: str
    dataset_sha256: str


@dataclass(frozen=True, slots=True)
class Stats:
    patients: int
    studies: int
    series: int
    instances: int
    bytes: int
