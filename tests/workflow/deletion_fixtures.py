"""Helpers of the deletion tests (tests/workflow/test_deletion_*.py): instances of a
chosen patient/study/series/modality/date stored straight into an archive, IOCM
rejection notes (Key Object Selection Documents), blob listings."""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicomvault.archive import Archive
from tests.core.dicomfiles import make_dataset, write_part10

KOS_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"
CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"
ROOT = "1.2.826.0.1.3680043.8.498.77"


def instance(
    *,
    study: str,
    series: str,
    modality: str = "CT",
    study_date: str = "20260102",
    patient_id: str = "PID1",
    issuer: str | None = None,
) -> Dataset:
    ds = make_dataset(study=study, series=series)
    ds.Modality = modality
    ds.StudyDate = study_date
    ds.PatientID = patient_id
    if issuer is not None:
        ds.IssuerOfPatientID = issuer
    return ds


def store(archive: Archive, tmp_path: Path, ds: Dataset) -> str:
    """Store ``ds`` through the archive's ingest path; returns its SOP Instance UID."""
    path = write_part10(ds, tmp_path / f"{ds.SOPInstanceUID}.dcm")
    archive.store_file(path)
    return str(ds.SOPInstanceUID)


def store_many(archive: Archive, tmp_path: Path, n: int, **kwargs: str) -> list[str]:
    return [store(archive, tmp_path, instance(**kwargs)) for _ in range(n)]


def rejection_note(
    references: list[tuple[str, str, str]],
    *,
    code: str = "113001",
    meaning: str = "Rejected for Quality Reasons",
    study: str | None = None,
    patient_id: str = "PID1",
) -> Dataset:
    """A KOS (PS3.3 A.35.4) with a PS3.16 CID 7011 title listing ``references``, each
    ``(study, series, SOP instance)`` of CT Image Storage, in IHE IOCM's form."""
    kos = Dataset()
    kos.SOPClassUID = KOS_CLASS
    kos.SOPInstanceUID = generate_uid()
    kos.StudyInstanceUID = study or references[0][0]
    kos.SeriesInstanceUID = generate_uid()
    kos.Modality = "KO"
    kos.PatientID = patient_id
    kos.PatientName = "Test^Patient"
    kos.StudyDate = "20260102"
    kos.InstanceNumber = 1
    kos.ValueType = "CONTAINER"
    title = Dataset()
    title.CodeValue = code
    title.CodingSchemeDesignator = "DCM"
    title.CodeMeaning = meaning
    kos.ConceptNameCodeSequence = [title]
    by_study: dict[str, dict[str, list[str]]] = {}
    for study_uid, series_uid, sop in references:
        by_study.setdefault(study_uid, {}).setdefault(series_uid, []).append(sop)
    evidence = []
    for study_uid, series_map in by_study.items():
        item = Dataset()
        item.StudyInstanceUID = study_uid
        series_items = []
        for series_uid, sops in series_map.items():
            s = Dataset()
            s.SeriesInstanceUID = series_uid
            refs = []
            for sop in sops:
                ref = Dataset()
                ref.ReferencedSOPClassUID = CT_CLASS
                ref.ReferencedSOPInstanceUID = sop
                refs.append(ref)
            s.ReferencedSOPSequence = refs
            series_items.append(s)
        item.ReferencedSeriesSequence = series_items
        evidence.append(item)
    kos.CurrentRequestedProcedureEvidenceSequence = evidence
    return kos


def blob_files(archive: Archive) -> set[str]:
    return set(archive.store.names())
