"""Storage Commitment Push Model SCP (PS3.4 J.3) against pynetdicom as the SCU: reports on
the request's association and on a new one, retries while the requester is down, the
failure reasons, and the N-ACTION statuses for bad requests."""

from __future__ import annotations

import time
from typing import Any

import pytest
from commitment_peers import INSTANCE, Reports, action_info, request, scu
from dicomfiles import deliberately_invalid
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom.sop_class import StorageCommitmentPushModel

from dicomvault.archive import Archive
from dicomvault.archive import commitment as jobs
from dicomvault.dicom.commitment import CommitmentRequest, Reference

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"


@pytest.fixture
def workflow_overrides(listener_port: int) -> dict[str, Any]:
    # The requester's own listener for reports on a new association (PS3.4 J.3.3).
    return {"remotes": {"modality": {"ae_title": "MODALITY", "host": "127.0.0.1",
                                     "port": listener_port}}}  # fmt: skip


def test_report_on_the_same_association(wf_server: Any, stored: Any) -> None:
    refs = stored(3)
    reports = Reports()
    info = action_info(refs)
    assert request(wf_server.port, info, reports, keep=15) == 0x0000
    event_type, result, _ = reports.wait()
    assert event_type == 1
    assert result.TransactionUID == info.TransactionUID
    assert sorted(i.ReferencedSOPInstanceUID for i in result.ReferencedSOPSequence) == sorted(
        uid for _, uid in refs
    )
    assert "FailedSOPSequence" not in result
    assert result.RetrieveAETitle == "DICOMVAULT"


def test_failure_reasons(wf_server: Any, wf_archive: Archive, stored: Any) -> None:
    good, wrong_class, corrupt = stored(3)
    blob = wf_archive.get_instance(corrupt[1]).blob_name
    path = wf_archive.store.root / blob if (wf_archive.store.root / blob).exists() else None
    if path is None:
        path = next(p for p in wf_archive.store.root.rglob("*") if p.name == blob.split("/")[-1])
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # one bit of pixel data flipped on disk
    path.write_bytes(bytes(raw))
    never = (CT, generate_uid())
    info = action_info([good, (MR, wrong_class[1]), corrupt, never])
    reports = Reports()
    assert request(wf_server.port, info, reports, keep=15) == 0x0000
    event_type, result, _ = reports.wait()
    assert event_type == 2
    assert [i.ReferencedSOPInstanceUID for i in result.ReferencedSOPSequence] == [good[1]]
    reasons = {i.ReferencedSOPInstanceUID: i.FailureReason for i in result.FailedSOPSequence}
    assert reasons == {wrong_class[1]: 0x0119, corrupt[1]: 0x0110, never[1]: 0x0112}


def test_a_job_asked_on_an_association_is_held_from_the_poller(wf_archive: Archive) -> None:
    # The N-ACTION handler delivers on the requester's association; a poller that claimed
    # the job first would send it on a new association the requester never sees.
    def record(claimed: bool) -> str:
        uid = generate_uid()
        request = CommitmentRequest(uid, (Reference(CT, generate_uid()),))
        jobs.request_commitment(
            wf_archive, request, calling_ae_title="SCU", called_ae_title="DICOMVAULT",
            peer_host="127.0.0.1", claimed=claimed,
        )  # fmt: skip
        return uid

    held, free = record(claimed=True), record(claimed=False)
    assert jobs.due_jobs(wf_archive) == [free]
    assert jobs.claim(wf_archive, held) is None
    assert jobs.claim(wf_archive, free) is not None


def test_report_on_a_new_association(
    wf_server: Any, wf_archive: Archive, stored: Any, report_listener: Any
) -> None:
    reports = report_listener()
    info = action_info(stored(2))
    assert request(wf_server.port, info) == 0x0000  # released at once: no report on it
    event_type, result, _ = reports.wait()
    assert event_type == 1 and len(result.ReferencedSOPSequence) == 2
    deadline = time.monotonic() + 5
    while jobs.get_job(wf_archive, info.TransactionUID).state != "sent":
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_requester_down_for_two_attempts(
    wf_server: Any, wf_archive: Archive, stored: Any, report_listener: Any
) -> None:
    info = action_info(stored(1))
    assert request(wf_server.port, info) == 0x0000
    deadline = time.monotonic() + 10
    while jobs.get_job(wf_archive, info.TransactionUID).attempts < 2:
        assert time.monotonic() < deadline, "the archive did not retry"
        time.sleep(0.05)
    job = jobs.get_job(wf_archive, info.TransactionUID)
    assert job.state == "pending" and "MODALITY" in (job.last_error or "")
    reports = report_listener()
    event_type, result, _ = reports.wait()
    assert event_type == 1 and result.TransactionUID == info.TransactionUID
    while jobs.get_job(wf_archive, info.TransactionUID).state != "sent":
        assert time.monotonic() < deadline + 10
        time.sleep(0.05)
    assert jobs.get_job(wf_archive, info.TransactionUID).attempts >= 3


def _raw_action(port: int, info: Dataset | None, action: int = 1, instance: str = INSTANCE) -> Any:
    assoc = scu().associate("127.0.0.1", port, ae_title="DICOMVAULT")
    assert assoc.is_established
    try:
        status, _ = assoc.send_n_action(info, action, StorageCommitmentPushModel, instance)
    finally:
        assoc.release()
    return status


@pytest.mark.parametrize(
    ("mutate", "action", "instance", "expected", "comment"),
    [
        (None, 2, INSTANCE, 0x0123, "Action Type ID 2"),
        (None, 1, "1.2.3.4", 0x0117, "Requested SOP Instance"),
        ("empty", 1, INSTANCE, 0x0114, "empty Referenced SOP Sequence"),
        ("bad-uid", 1, INSTANCE, 0x0115, "Transaction UID"),
        ("no-uid", 1, INSTANCE, 0x0114, "no Transaction UID"),
    ],
)
def test_bad_requests(
    wf_server: Any,
    stored: Any,
    mutate: str | None,
    action: int,
    instance: str,
    expected: int,
    comment: str,
) -> None:
    info = action_info(stored(1))
    if mutate == "empty":
        info.ReferencedSOPSequence = []
    elif mutate == "bad-uid":
        with deliberately_invalid():
            info.TransactionUID = "1.2.abc"
    elif mutate == "no-uid":
        del info.TransactionUID
    status = _raw_action(wf_server.port, info, action, instance)
    assert status.Status == expected
    assert comment in status.ErrorComment


def test_transaction_uid_is_never_reused(wf_server: Any, stored: Any) -> None:
    info = action_info(stored(1))
    assert _raw_action(wf_server.port, info).Status == 0x0000
    again = _raw_action(wf_server.port, info)
    assert again.Status == 0x0115
    assert "already used" in again.ErrorComment
