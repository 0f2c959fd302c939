"""Modality Performed Procedure Step SCP (PS3.4 F.7.2) with pynetdicom as the modality:
N-CREATE IN PROGRESS, N-SET to COMPLETED / DISCONTINUED, the state rules and the
statuses of bad requests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep as MPPS_CLASS

from dicomvault.archive import Archive
from dicomvault.archive import mpps as steps


def create_list(study_uid: str = "1.2.3.4.5", accession: str = "ACC1") -> Dataset:
    ds = Dataset()
    item = Dataset()
    item.StudyInstanceUID = study_uid
    item.AccessionNumber = accession
    item.ScheduledProcedureStepID = "SPS1"
    item.RequestedProcedureID = "RP1"
    ds.ScheduledStepAttributesSequence = [item]
    ds.PatientName = "Doe^John"
    ds.PatientID = "P1"
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedStationAETitle = "CT1"
    ds.PerformedProcedureStepStartDate = "20261126"
    ds.PerformedProcedureStepStartTime = "101500"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.Modality = "CT"
    ds.PerformedSeriesSequence = []
    return ds


def completion(status: str = "COMPLETED", series: list[str] | None = None) -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate = "20261126"
    ds.PerformedProcedureStepEndTime = "103000"
    items = []
    for uid in series if series is not None else [generate_uid()]:
        item = Dataset()
        item.SeriesInstanceUID = uid
        item.SeriesDescription = "AX 5mm"
        item.ProtocolName = "HEAD"
        item.RetrieveAETitle = "DICOMVAULT"
        item.ReferencedImageSequence = []
        items.append(item)
    ds.PerformedSeriesSequence = items
    return ds


@pytest.fixture
def modality(wf_server: Any) -> Iterator[Any]:
    ae = AE(ae_title="CT1")
    ae.add_requested_context(MPPS_CLASS)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", wf_server.port, ae_title="DICOMVAULT")
    assert assoc.is_established
    yield assoc
    assoc.release()


def test_create_then_complete(modality: Any, wf_archive: Archive, stored: Any) -> None:
    uid = generate_uid()
    status, _ = modality.send_n_create(create_list(), MPPS_CLASS, uid)
    assert status.Status == 0x0000
    step = steps.get_step(wf_archive, uid)
    assert step.status == "IN PROGRESS" and step.calling_ae_title == "CT1"
    assert step.accession_number == "ACC1" and step.study_instance_uid == "1.2.3.4.5"
    series_uid = str(wf_archive.get_instance(stored(1)[0][1]).series_instance_uid)
    status, _ = modality.send_n_set(completion(series=[series_uid]), MPPS_CLASS, uid)
    assert status.Status == 0x0000
    step = steps.get_step(wf_archive, uid)
    assert step.status == "COMPLETED"
    linked = steps.performed_series(wf_archive, step)
    assert linked == [
        {"series_instance_uid": series_uid, "series_description": "AX 5mm",
         "referenced_instances": 0, "stored_instances": 1}
    ]  # fmt: skip


def test_scp_chooses_the_uid(modality: Any, wf_archive: Archive) -> None:
    status, _ = modality.send_n_create(create_list(), MPPS_CLASS, None)
    assert status.Status == 0x0000
    (step,) = steps.list_steps(wf_archive)
    assert step.sop_instance_uid.startswith("2.25.") and step.status == "IN PROGRESS"


def test_no_n_set_after_completed(modality: Any) -> None:
    uid = generate_uid()
    modality.send_n_create(create_list(), MPPS_CLASS, uid)
    assert modality.send_n_set(completion(), MPPS_CLASS, uid)[0].Status == 0x0000
    status, _ = modality.send_n_set(completion("DISCONTINUED"), MPPS_CLASS, uid)
    assert status.Status == 0x0110
    assert status.ErrorID == 0xA710
    assert "no longer be updated" in status.ErrorComment


def test_discontinued_needs_end_time_only(modality: Any, wf_archive: Archive) -> None:
    uid = generate_uid()
    modality.send_n_create(create_list(), MPPS_CLASS, uid)
    stop = Dataset()
    stop.PerformedProcedureStepStatus = "DISCONTINUED"
    status, _ = modality.send_n_set(stop, MPPS_CLASS, uid)
    assert status.Status == 0x0120 and "PerformedProcedureStepEndDate" in status.ErrorComment
    assert steps.get_step(wf_archive, uid).status == "IN PROGRESS"  # nothing half-applied
    stop.PerformedProcedureStepEndDate = "20261126"
    stop.PerformedProcedureStepEndTime = "1031"
    assert modality.send_n_set(stop, MPPS_CLASS, uid)[0].Status == 0x0000
    assert steps.get_step(wf_archive, uid).status == "DISCONTINUED"


def test_completed_needs_performed_series(modality: Any) -> None:
    uid = generate_uid()
    modality.send_n_create(create_list(), MPPS_CLASS, uid)
    status, _ = modality.send_n_set(completion(series=[]), MPPS_CLASS, uid)
    assert status.Status == 0x0120 and "PerformedSeriesSequence" in status.ErrorComment


def test_bad_requests(modality: Any) -> None:
    uid = generate_uid()
    assert modality.send_n_create(create_list(), MPPS_CLASS, uid)[0].Status == 0x0000
    # the same SOP Instance UID twice
    status, _ = modality.send_n_create(create_list(), MPPS_CLASS, uid)
    assert status.Status == 0x0111
    # N-SET on an instance never created
    status, _ = modality.send_n_set(completion(), MPPS_CLASS, generate_uid())
    assert status.Status == 0x0112
    # created in another state
    wrong = create_list()
    wrong.PerformedProcedureStepStatus = "COMPLETED"
    status, _ = modality.send_n_create(wrong, MPPS_CLASS, generate_uid())
    assert status.Status == 0x0106
    # a Type 1 attribute missing
    partial = create_list()
    del partial.PerformedStationAETitle
    status, _ = modality.send_n_create(partial, MPPS_CLASS, generate_uid())
    assert status.Status == 0x0120 and "PerformedStationAETitle" in status.ErrorComment
    # a status that is not one of the three
    odd = Dataset()
    odd.PerformedProcedureStepStatus = "PAUSED"
    status, _ = modality.send_n_set(odd, MPPS_CLASS, uid)
    assert status.Status == 0x0106


def test_worklist_item_follows_the_step(modality: Any, wf_archive: Archive) -> None:
    from dicomvault.archive import worklist

    item = worklist.add_item(
        wf_archive,
        {
            "PatientID": "P1",
            "PatientName": "Doe^John",
            "AccessionNumber": "ACC1",
            "StudyInstanceUID": "1.2.3.4.5",
            "RequestedProcedureID": "RP1",
            "ScheduledProcedureStepSequence": [
                {
                    "Modality": "CT",
                    "ScheduledStationAETitle": "CT1",
                    "ScheduledProcedureStepStartDate": "20261126",
                    "ScheduledProcedureStepStartTime": "100000",
                    "ScheduledProcedureStepID": "SPS1",
                }
            ],
        },
    )
    assert item.status == "SCHEDULED"
    uid = generate_uid()
    assert modality.send_n_create(create_list(), MPPS_CLASS, uid)[0].Status == 0x0000
    assert worklist.get_item(wf_archive, item.id).status == "IN PROGRESS"
    assert modality.send_n_set(completion(), MPPS_CLASS, uid)[0].Status == 0x0000
    assert worklist.get_item(wf_archive, item.id).status == "COMPLETED"
