"""Index records from a data set: the attributes PS3.4 C.6.1.1 / C.6.2.1 and PS3.18
Tables 10.6.1-5/-6/-7 use as keys at each query level."""

from __future__ import annotations

from dicomvault.dicom.charset import ESC, Charset
from dicomvault.dicom.reader import DataSet
from dicomvault.dicom.values import (
    BINARY_NUMBER_FORMATS,
    SINGLE_VALUED,
    STRING_VRS,
    STRIP_LEADING,
    binary_numbers,
    integer_string,
    strings,
    text,
)
from dicomvault.model.records import (
    InstanceRecord,
    PatientRecord,
    SeriesRecord,
    StudyRecord,
)

REQUEST_ATTRIBUTES_SEQUENCE = 0x00400275
SCHEDULED_PROCEDURE_STEP_ID = 0x00400009
REQUESTED_PROCEDURE_ID = 0x00401001


class Fields:
    """Typed access to a data set's top-level values, decoded with its character set."""

    def __init__(self, ds: DataSet, charset: Charset, little: bool) -> None:
        self._ds = ds
        self._charset = charset
        self._little = little
        #: Decoding problems are reported by the JSON encoder, which sees every value.
        self._ignored: list[str] = []

    def text(self, tag: int) -> str | None:
        """The value as text, multiple values joined with ``\\``; ``None`` if empty."""
        element = self._ds.get(tag)
        if element is None or not isinstance(element.value, bytes) or not element.value:
            return None
        vr = element.vr
        if vr not in STRING_VRS:
            return None
        raw = element.value
        if raw.isascii() and ESC not in raw:
            # What strings() gives for ASCII without escape sequences (decode_text
            # decodes it as ASCII in every character set), without its calls: this
            # runs ~36 times per received instance.
            text = raw.decode("ascii").rstrip(" \0")
            if vr in SINGLE_VALUED or "\\" not in text:
                values = [text.lstrip(" \0") if vr in STRIP_LEADING else text]
            elif vr in STRIP_LEADING:
                values = [p.strip(" \0") for p in text.split("\\")]
            else:
                values = [p.rstrip(" \0") for p in text.split("\\")]
        else:
            values = strings(raw, vr, self._charset, self._ignored)
        if vr == "PN":
            # PS3.5 6.2.1.2: trailing empty component groups may be left out.
            values = [v.rstrip("=") for v in values]
        value = "\\".join(values)
        return value if value.strip("\\ ") else None

    def raw_text(self, tag: int) -> str | None:
        """Like :meth:`text` without splitting (for UIDs, which are single-valued)."""
        element = self._ds.get(tag)
        if element is None or not isinstance(element.value, bytes):
            return None
        value = text(element.value, element.vr, self._charset, self._ignored).strip(" \0")
        return value or None

    def integer(self, tag: int) -> int | None:
        """The first value of an IS or binary integer element; ``None`` if absent/invalid."""
        element = self._ds.get(tag)
        if element is None or not isinstance(element.value, bytes) or not element.value:
            return None
        if element.vr == "IS":
            first = strings(element.value, "IS", self._charset, self._ignored)[0]
            return integer_string(first)
        if element.vr in BINARY_NUMBER_FORMATS and element.vr not in ("FL", "FD"):
            numbers = binary_numbers(element.value, element.vr, self._little, self._ignored)
            return int(numbers[0]) if numbers else None
        return None

    def from_items(self, sequence: int, tag: int) -> str | None:
        """Values of ``tag`` in every item of ``sequence``, joined with ``\\``."""
        element = self._ds.get(sequence)
        if element is None or not isinstance(element.value, list):
            return None
        found = []
        for item in element.value:
            value = Fields(item, self._charset, self._little).text(tag)
            if value is not None:
                found.append(value)
        return "\\".join(found) if found else None


def patient_record(f: Fields) -> PatientRecord:
    return PatientRecord(
        patient_id=f.text(0x00100020) or "",
        issuer_of_patient_id=f.text(0x00100021),
        patient_name=f.text(0x00100010),
        patient_birth_date=f.text(0x00100030),
        patient_birth_time=f.text(0x00100032),
        patient_sex=f.text(0x00100040),
        other_patient_ids=f.text(0x00101000),
        ethnic_group=f.text(0x00102160),
        patient_comments=f.text(0x00104000),
    )


def study_record(f: Fields, study_instance_uid: str) -> StudyRecord:
    return StudyRecord(
        study_instance_uid=study_instance_uid,
        study_date=f.text(0x00080020),
        study_time=f.text(0x00080030),
        accession_number=f.text(0x00080050),
        study_id=f.text(0x00200010),
        study_description=f.text(0x00081030),
        referring_physician_name=f.text(0x00080090),
        timezone_offset_from_utc=f.text(0x00080201),
        patient_age=f.text(0x00101010),
        patient_size=f.text(0x00101020),
        patient_weight=f.text(0x00101030),
        specific_character_set=f.text(0x00080005),
    )


def series_record(f: Fields, series_instance_uid: str) -> SeriesRecord:
    return SeriesRecord(
        series_instance_uid=series_instance_uid,
        modality=f.text(0x00080060),
        series_number=f.integer(0x00200011),
        series_description=f.text(0x0008103E),
        series_date=f.text(0x00080021),
        series_time=f.text(0x00080031),
        body_part_examined=f.text(0x00180015),
        institution_name=f.text(0x00080080),
        station_name=f.text(0x00081010),
        performed_procedure_step_start_date=f.text(0x00400244),
        performed_procedure_step_start_time=f.text(0x00400245),
        scheduled_procedure_step_id=f.from_items(
            REQUEST_ATTRIBUTES_SEQUENCE, SCHEDULED_PROCEDURE_STEP_ID
        ),
        requested_procedure_id=f.from_items(REQUEST_ATTRIBUTES_SEQUENCE, REQUESTED_PROCEDURE_ID),
    )


def instance_record(
    f: Fields, sop_instance_uid: str, sop_class_uid: str, transfer_syntax_uid: str
) -> InstanceRecord:
    return InstanceRecord(
        sop_instance_uid=sop_instance_uid,
        sop_class_uid=sop_class_uid,
        transfer_syntax_uid=transfer_syntax_uid,
        instance_number=f.integer(0x00200013),
        content_date=f.text(0x00080023),
        content_time=f.text(0x00080033),
        acquisition_date_time=f.text(0x0008002A),
        rows=f.integer(0x00280010),
        columns=f.integer(0x00280011),
        bits_allocated=f.integer(0x00280100),
        number_of_frames=f.integer(0x00280008),
        image_type=f.text(0x00080008),
        completion_flag=f.text(0x0040A491),
        verification_flag=f.text(0x0040A493),
        content_label=f.text(0x00700080),
    )
