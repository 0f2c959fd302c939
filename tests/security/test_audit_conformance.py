"""The audit trail of a real server, checked against PS3.15 A.5: WADO-RS frames, bulk
data, rendered images and thumbnails (DICOM Instances Transferred, A.5.3.7), a C-MOVE
to a third party (Begin Transferring A.5.3.3 and Instances Transferred with the
requestor), partial and whole deletions (Instances Accessed D, A.5.3.6; Study Deleted,
A.5.3.8) -- with httpx, pynetdicom and DCMTK peers on 127.0.0.1. Every line of the
resulting audit logs is validated against the A.5.1 schema (here, and by the
``tests/conftest.py`` fixture for every other test)."""

from __future__ import annotations

import secrets
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage

from dicomvault.archive import Archive
from dicomvault.archive import audit as trail_api
from dicomvault.archive.audit import AuditFilter, AuditRow, trail_of
from tests.core.dicomfiles import make_dataset, write_part10
from tests.net.peers import DCMTK_ENV
from tests.web.conftest import WebServer, start_web, web_settings

from .audit_schema import validate, validate_logs_under

STUDY_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


def uid() -> str:
    return f"1.2.826.0.1.3680043.8.498.79.{secrets.randbelow(10**15)}"


def rows(archive: Archive, n: int, timeout: float = 10.0, **where: Any) -> list[AuditRow]:
    """At least ``n`` recorded messages matching ``where`` (bounded wait)."""
    deadline = time.monotonic() + timeout
    while True:
        trail_of(archive).flush(5)
        found = trail_api.search(archive, AuditFilter(limit=1000, **where))
        if len(found) >= n or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def store(archive: Archive, tmp_path: Path, study: str, series: str, n: int = 1) -> list[str]:
    """``n`` 4x4 CT images of ``series`` (patient PID1, Test^Patient) stored; their UIDs."""
    sops = []
    for _ in range(n):
        ds = make_dataset(study=study, series=series)
        ds.StudyDescription = "CT HEAD <w/o> & contrast"
        archive.store_file(write_part10(ds, tmp_path / f"{ds.SOPInstanceUID}.dcm"))
        sops.append(str(ds.SOPInstanceUID))
    return sops


@pytest.fixture
def server(tmp_path: Path) -> Iterator[WebServer]:
    yield from start_web(web_settings(tmp_path))


def _objects(row: AuditRow) -> list[ET.Element]:
    return ET.fromstring(row.xml).findall("ParticipantObjectIdentification")


@pytest.fixture
def per_request_server(tmp_path: Path) -> Iterator[WebServer]:
    """A server recording WADO-RS reads per request (``audit.http_coalesce_seconds`` 0;
    tests/security/test_audit_coalesce.py covers the coalesced default)."""
    yield from start_web(web_settings(tmp_path, audit={"http_coalesce_seconds": 0}))


def test_wado_pixel_resources_are_instances_transferred(
    per_request_server: WebServer, tmp_path: Path
) -> None:
    """Frames, bulk data, rendered instance / frames / series / study, thumbnails: one
    DICOM Instances Transferred, action R, per request (and study) with
    ``audit.http_coalesce_seconds = 0``, the archive the source, the client the
    destination and requestor; a 304 revalidation sends nothing and audits nothing.
    Patient and study carry their names from the index."""
    server = per_request_server
    study, series = uid(), uid()
    (sop,) = store(server.archive, tmp_path, study, series)
    store(server.archive, tmp_path, study, series + ".2")
    instance = f"/dicom-web/studies/{study}/series/{series}/instances/{sop}"
    octets = {"Accept": "application/octet-stream"}
    requests = [
        (f"{instance}/frames/1", octets),
        (f"{instance}/bulkdata/7FE00010", octets),
        (f"{instance}/rendered", {"Accept": "image/png"}),
        (f"{instance}/frames/1/rendered", {"Accept": "image/jpeg"}),
        (f"{instance}/thumbnail", {}),
        (f"{instance}/frames/1/thumbnail", {}),
        (f"/dicom-web/studies/{study}/series/{series}/rendered", {}),
        (f"/dicom-web/studies/{study}/series/{series}/thumbnail", {}),
        (f"/dicom-web/studies/{study}/rendered", {}),
        (f"/dicom-web/studies/{study}/thumbnail", {}),
    ]
    etags = []
    for path, headers in requests:
        answer = server.client.get(path, headers=headers)
        assert answer.status_code == 200, (path, answer.text)
        etags.append((path, headers, answer.headers["ETag"]))
    sent = rows(server.archive, len(requests), event_id="110104")
    assert len(sent) == len(requests)
    for path, headers, etag in etags:  # revalidations: 304, no transfer, no message
        again = server.client.get(path, headers={**headers, "If-None-Match": etag})
        assert again.status_code == 304
    time.sleep(0.2)
    assert len(rows(server.archive, len(requests) + 1, timeout=1, event_id="110104")) == len(
        requests
    )
    for row in sent:
        assert (row.action, row.outcome, row.user, row.peer) == ("R", 0, "anonymous", "127.0.0.1")
        assert (row.patient_id, row.study_instance_uid) == ("PID1", study)
        root = validate(row.xml)
        ours, client = root.findall("ActiveParticipant")
        assert [c.get("csd-code") for c in ours.findall("RoleIDCode")] == ["110153"]
        assert [c.get("csd-code") for c in client.findall("RoleIDCode")] == ["110152"]
        assert (ours.get("UserIsRequestor"), client.get("UserIsRequestor")) == ("false", "true")
        study_obj, patient = root.findall("ParticipantObjectIdentification")
        assert study_obj.findtext("ParticipantObjectName") == "CT HEAD <w/o> & contrast"
        assert patient.findtext("ParticipantObjectName") == "Test^Patient"
    counts = sorted(
        sum(int(s.get("NumberOfInstances", "0")) for s in o.iter("SOPClass"))
        for row in sent
        for o in _objects(row)[:1]
    )
    assert counts == [1] * 9 + [2]  # the study rendered: its two images
    assert validate_logs_under(tmp_path) >= len(requests)


def test_c_move_to_a_third_party(tmp_path: Path) -> None:
    """A C-MOVE by MOVER to DEST (a pynetdicom Storage SCP): Begin Transferring, then
    Instances Transferred (R) with the archive as source, DEST as destination, MOVER the
    requestor among the other participants, AE titles as AlternativeUserID (A.5.2.2);
    two patients in two studies give two messages of each (one patient per message)."""
    dest = AE(ae_title="DEST")
    dest.add_supported_context(CTImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    got: list[str] = []

    def on_store(event: Any) -> int:
        got.append(str(event.request.AffectedSOPInstanceUID))
        return 0

    scp = dest.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    port = scp.socket.getsockname()[1]
    settings = web_settings(
        tmp_path, remotes={"DEST": {"ae_title": "DEST", "host": "127.0.0.1", "port": port}}
    )
    try:
        for server in start_web(settings):
            first, second = uid(), uid()
            store(server.archive, tmp_path, first, first + ".1", 2)
            other = make_dataset(study=second, series=second + ".1", name="Other^Patient")
            other.PatientID = "PID2"
            server.archive.store_file(write_part10(other, tmp_path / "other.dcm"))
            mover = AE(ae_title="MOVER")
            mover.acse_timeout = mover.dimse_timeout = mover.network_timeout = 10
            mover.add_requested_context(STUDY_MOVE)
            assoc = mover.associate("127.0.0.1", server.dimse_port, ae_title="DICOMVAULT")
            assert assoc.is_established
            query = Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.StudyInstanceUID = [first, second]
            try:
                statuses = [s.Status for s, _ in assoc.send_c_move(query, "DEST", STUDY_MOVE)]
            finally:
                assoc.release()
            assert statuses[-1] == 0 and len(got) == 3
            begins = rows(server.archive, 2, event_id="110102")
            sent = rows(server.archive, 2, event_id="110104")
            assert sorted(r.patient_id for r in begins) == ["PID1", "PID2"]
            assert sorted((r.patient_id, r.study_instance_uid) for r in sent) == sorted(
                [("PID1", first), ("PID2", second)]
            )
            for row in [*begins, *sent]:
                root = validate(row.xml)
                archive, destination, requestor = root.findall("ActiveParticipant")
                assert (archive.get("AlternativeUserID"), archive.get("UserIsRequestor")) == (
                    "AETITLES=DICOMVAULT", "false",
                )  # fmt: skip
                assert (destination.get("UserID"), destination.get("UserIsRequestor")) == (
                    "DEST", "false",
                )  # fmt: skip
                assert destination.get("AlternativeUserID") == "AETITLES=DEST"
                assert (requestor.get("UserID"), requestor.get("UserIsRequestor")) == (
                    "MOVER", "true",
                )  # fmt: skip
                assert row.user == "MOVER"
                assert (
                    len([o for o in _objects(row) if o.get("ParticipantObjectTypeCode") == "1"])
                    == 1
                )
            assert {r.action for r in sent} == {"R"}
    finally:
        scp.shutdown()


def test_deleting_part_of_a_study_is_instances_accessed(server: WebServer, tmp_path: Path) -> None:
    """DELETE of one series of a two-series study: DICOM Instances Accessed, action D
    (A.5.3.6: Study Deleted is for all instances of a study); then the rest of the
    study: DICOM Study Deleted (A.5.3.8)."""
    study, series = uid(), uid()
    store(server.archive, tmp_path, study, series, 2)
    store(server.archive, tmp_path, study, series + ".2")
    gone = server.client.delete(f"/dicom-web/studies/{study}/series/{series}")
    assert gone.status_code == 204, gone.text
    (partial,) = rows(server.archive, 1, event_id="110103")
    assert (partial.action, partial.patient_id, partial.study_instance_uid) == ("D", "PID1", study)
    assert "2 instance(s) of series" in partial.xml
    assert server.client.delete(f"/dicom-web/studies/{study}").status_code == 204
    (whole,) = rows(server.archive, 1, event_id="110105")
    assert (whole.action, whole.patient_id, whole.study_instance_uid) == ("D", "PID1", study)
    for row in (partial, whole):
        validate(row.xml)


@pytest.mark.dcmtk
def test_dcmtk_find_and_http_query_messages(server: WebServer) -> None:
    """findscu (a DICOM query: ID type 110181, the SOP class, TransferSyntax detail) and
    QIDO-RS (an HTTP query: ID type 12 URI, the path): both role 3 Report (A.5.3.10)."""
    result = subprocess.run(
        ["/usr/bin/findscu", "-S", "-aet", "FINDER", "-aec", "DICOMVAULT",
         "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientName=<script>&*",
         "127.0.0.1", str(server.dimse_port)],
        env=DCMTK_ENV, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert server.client.get("/dicom-web/studies", params={"PatientName": "<x>&"}).status_code in (
        200,
        204,
    )
    queries = rows(server.archive, 2, event_id="110112")
    by_user = {row.user: validate(row.xml) for row in queries}
    dimse = by_user["FINDER"].find("ParticipantObjectIdentification")
    http = by_user["anonymous"].find("ParticipantObjectIdentification")
    assert dimse is not None and http is not None
    assert (dimse.get("ParticipantObjectID"), dimse.get("ParticipantObjectTypeCodeRole")) == (
        STUDY_FIND, "3",
    )  # fmt: skip
    assert dimse.find("ParticipantObjectIDTypeCode").get("csd-code") == "110181"  # type: ignore[union-attr]
    assert dimse.find("ParticipantObjectDetail").get("type") == "TransferSyntax"  # type: ignore[union-attr]
    assert (http.get("ParticipantObjectID"), http.get("ParticipantObjectTypeCodeRole")) == (
        "/dicom-web/studies", "3",
    )  # fmt: skip
    assert http.find("ParticipantObjectIDTypeCode").get("csd-code") == "12"  # type: ignore[union-attr]
    finder = by_user["FINDER"].find("ActiveParticipant")
    assert finder is not None and finder.get("AlternativeUserID") == "AETITLES=FINDER"
