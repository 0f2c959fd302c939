"""A small archive of real files with the attributes the query tests match on."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydicom.uid import generate_uid

from dicomvault.archive import Archive
from dicomvault.model.query import InformationModel, Level, Query, QueryKey
from tests.core.dicomfiles import deliberately_invalid, make_dataset, write_part10

_VR = {
    "PatientName": (0x00100010, "PN"),
    "PatientID": (0x00100020, "LO"),
    "PatientBirthDate": (0x00100030, "DA"),
    "StudyDate": (0x00080020, "DA"),
    "StudyTime": (0x00080030, "TM"),
    "AccessionNumber": (0x00080050, "SH"),
    "StudyInstanceUID": (0x0020000D, "UI"),
    "StudyDescription": (0x00081030, "LO"),
    "ModalitiesInStudy": (0x00080061, "CS"),
    "NumberOfStudyRelatedInstances": (0x00201208, "IS"),
    "NumberOfStudyRelatedSeries": (0x00201206, "IS"),
    "NumberOfPatientRelatedStudies": (0x00201200, "IS"),
    "NumberOfPatientRelatedInstances": (0x00201204, "IS"),
    "Modality": (0x00080060, "CS"),
    "SeriesInstanceUID": (0x0020000E, "UI"),
    "SeriesNumber": (0x00200011, "IS"),
    "NumberOfSeriesRelatedInstances": (0x00201209, "IS"),
    "SOPInstanceUID": (0x00080018, "UI"),
    "SOPClassUID": (0x00080016, "UI"),
    "InstanceNumber": (0x00200013, "IS"),
    "Manufacturer": (0x00080070, "LO"),
    "BodyPartExamined": (0x00180015, "CS"),
    "ReferringPhysicianName": (0x00080090, "PN"),
    "AcquisitionDateTime": (0x0008002A, "DT"),
    "SpecificCharacterSet": (0x00080005, "CS"),
}


def key(keyword: str, value: str | None = "") -> QueryKey:
    tag, vr = _VR[keyword]
    return QueryKey(tag, keyword, vr, value)


def query(
    level: str,
    model: str = "STUDY",
    relational: bool = False,
    max_results: int | None = None,
    combined: bool = False,
    **keys: str,
) -> Query:
    return Query(
        InformationModel(model),
        Level(level),
        tuple(key(k, v) for k, v in keys.items()),
        relational=relational,
        max_results=max_results,
        combined_datetime=combined,
    )


@dataclass
class Spec:
    """One study of the corpus: its attributes and series (modality, instance count)."""

    patient_id: str
    name: str
    study_date: str = "20240115"
    study_time: str = "101500"
    accession: str = ""
    description: str = ""
    series: list[tuple[str, int]] = field(default_factory=lambda: [("CT", 1)])
    charset: str | None = None
    birth_date: str = ""
    manufacturer: str = ""
    uid: str = field(default_factory=generate_uid)
    series_uids: list[str] = field(default_factory=list)
    instance_uids: list[str] = field(default_factory=list)


def store(archive: Archive, tmp: Path, specs: list[Spec]) -> None:
    tmp.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        number = 0
        for s_index, (modality, count) in enumerate(spec.series):
            series_uid = generate_uid()
            spec.series_uids.append(series_uid)
            for _ in range(count):
                number += 1
                uid = generate_uid()
                spec.instance_uids.append(uid)
                ds = make_dataset(
                    sop_instance_uid=uid,
                    study=spec.uid,
                    series=series_uid,
                    name=spec.name,
                    charset=spec.charset,
                )
                with deliberately_invalid():
                    ds.PatientID = spec.patient_id
                    ds.StudyDate = spec.study_date
                    ds.StudyTime = spec.study_time
                    if spec.accession:
                        ds.AccessionNumber = spec.accession
                    if spec.description:
                        ds.StudyDescription = spec.description
                    if spec.birth_date:
                        ds.PatientBirthDate = spec.birth_date
                    if spec.manufacturer:
                        ds.Manufacturer = spec.manufacturer
                    ds.Modality = modality
                    ds.SeriesNumber = s_index + 1
                    ds.InstanceNumber = number
                    ds.AcquisitionDateTime = f"{spec.study_date}{spec.study_time}"
                write_part10(ds, tmp / f"{uid}.dcm")
                archive.store_file(tmp / f"{uid}.dcm")
