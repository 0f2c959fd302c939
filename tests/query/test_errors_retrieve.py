"""Bad input (PS3.4 C.4.1.1.4 statuses) and retrieve selection (PS3.4 C.4.2.2.1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomvault.archive import Archive
from dicomvault.dicom.identifier import decode_identifier
from dicomvault.model.query import (
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
    UNABLE_TO_PROCESS,
    InformationModel,
    InvalidQuery,
)
from tests.query.corpus import Spec, query, store


@pytest.mark.parametrize(
    ("q", "status", "keyword"),
    [
        (
            query("PATIENT", model="STUDY"),
            IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
            "QueryRetrieveLevel",
        ),
        (query("STUDY", Modality="CT"), IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "Modality"),
        (query("SERIES", SOPInstanceUID=""), IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "SOPInstanceUID"),
        (query("STUDY", StudyDate="20240101-20231231"), UNABLE_TO_PROCESS, "StudyDate"),
        (query("STUDY", StudyDate="abc-"), UNABLE_TO_PROCESS, "StudyDate"),
        (query("STUDY", StudyTime="25x-"), UNABLE_TO_PROCESS, "StudyTime"),
        (query("STUDY", StudyInstanceUID="1.2.*"), UNABLE_TO_PROCESS, "StudyInstanceUID"),
        (
            query("STUDY", NumberOfStudyRelatedInstances="many"),
            UNABLE_TO_PROCESS,
            "NumberOfStudyRelatedInstances",
        ),
    ],
)
def test_invalid_queries(archive: Archive, q: object, status: int, keyword: str) -> None:
    with pytest.raises(InvalidQuery) as caught:
        archive.find(q)  # type: ignore[arg-type]
    assert caught.value.status == status
    assert caught.value.keyword == keyword
    assert keyword in str(caught.value) and "\n" not in str(caught.value)


def test_missing_level_in_identifier() -> None:
    from pydicom.dataset import Dataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ds = Dataset()
    ds.PatientName = "X*"
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_dataset(fp, ds)
    with pytest.raises(InvalidQuery) as caught:
        decode_identifier(fp.getvalue(), "1.2.840.10008.1.2", InformationModel.STUDY_ROOT)
    assert caught.value.status == IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS


def test_retrieve_instances(archive: Archive, tmp_path: Path) -> None:
    specs = [Spec("P1", "A^B", series=[("CT", 2), ("MR", 1)]), Spec("P1", "A^B"), Spec("P2", "C^D")]
    store(archive, tmp_path / "in", specs)
    found = archive.retrieve_instances(query("STUDY", StudyInstanceUID=specs[0].uid))
    assert [i.sop_instance_uid for i in found] == specs[0].instance_uids
    both = archive.retrieve_instances(
        query("STUDY", StudyInstanceUID=f"{specs[0].uid}\\{specs[2].uid}")
    )
    assert len(both) == 4
    series = archive.retrieve_instances(
        query("SERIES", StudyInstanceUID=specs[0].uid, SeriesInstanceUID=specs[0].series_uids[1])
    )
    assert [i.sop_instance_uid for i in series] == specs[0].instance_uids[2:]
    image = archive.retrieve_instances(query("IMAGE", SOPInstanceUID=specs[1].instance_uids[0]))
    assert [i.study_instance_uid for i in image] == [specs[1].uid]
    patient = archive.retrieve_instances(query("PATIENT", model="PATIENT", PatientID="P1"))
    assert len(patient) == 4
    with pytest.raises(InvalidQuery) as caught:
        archive.retrieve_instances(query("SERIES", StudyInstanceUID=specs[0].uid))
    assert caught.value.status == IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS
    with pytest.raises(InvalidQuery) as caught:
        archive.retrieve_instances(query("PATIENT", model="PATIENT", PatientID="P*"))
    assert caught.value.status == UNABLE_TO_PROCESS
