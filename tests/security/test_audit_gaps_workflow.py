"""The audit trail's remaining producers (issue 7 part 5, PS3.15 A.5.3) through real
peers on 127.0.0.1: DCMTK ``findscu -W`` (worklist Query), httpx against ``/api/worklist``
(Query, Procedure Record, Use of Restricted Function), pynetdicom MPPS N-CREATE / N-SET
and User Identity Negotiation, an MLLP client feeding HL7 orders, and the CLI
(``worklist add/cancel``, ``import``, ``delete``, ``retention run``) run by click."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import socket
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.pdu_primitives import UserIdentityNegotiation

from dicomvault.archive import Archive, users
from dicomvault.archive import audit as trail_api
from dicomvault.archive.audit import AuditFilter, AuditRow, trail_of
from dicomvault.cli.main import cli
from dicomvault.config import Settings, load_settings
from dicomvault.hl7.feed import serve_hl7
from tests.core.dicomfiles import make_dataset, write_part10
from tests.net.peers import DCMTK_ENV, ServerThread
from tests.web.conftest import WebServer, start_web, web_settings
from tests.workflow.hl7_fixtures import MllpClient, orm

PASSWORD = "correct horse battery"
MWL_FIND = "1.2.840.10008.5.1.4.31"
MPPS = "1.2.840.10008.3.1.2.3.3"
VERIFICATION = "1.2.840.10008.1.1"


def uid() -> str:
    return f"1.2.826.0.1.3680043.8.498.78.{secrets.randbelow(10**15)}"


def rows_of(archive: Archive, n: int, timeout: float = 10.0, **where: Any) -> list[AuditRow]:
    """At least ``n`` recorded messages matching ``where`` (bounded wait)."""
    deadline = time.monotonic() + timeout
    while True:
        trail_of(archive).flush(5)
        found = trail_api.search(archive, AuditFilter(limit=1000, **where))
        if len(found) >= n or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def search_closed(settings: Settings, **where: Any) -> list[AuditRow]:
    """Messages recorded by a CLI command (its archive closed since)."""
    with Archive.open(settings, recover_on_start=False) as archive:
        return trail_api.search(archive, AuditFilter(limit=1000, **where))


def objects(row: AuditRow) -> list[ET.Element]:
    return ET.fromstring(row.xml).findall("ParticipantObjectIdentification")


@pytest.fixture
def web(tmp_path: Path) -> Iterator[WebServer]:
    for server in start_web(web_settings(tmp_path)):
        users.add_user(server.archive, "admin", PASSWORD, "admin")
        users.add_user(server.archive, "viewer", PASSWORD, "viewer")
        yield server


# -- 1. Modality Worklist queries -> Query (A.5.3.10) ---------------------------------


def test_findscu_worklist_query_is_a_query_message(web: WebServer) -> None:
    result = subprocess.run(
        ["/usr/bin/findscu", "-W", "-aet", "MODALITY", "-aec", "DICOMVAULT",
         "-k", "PatientID=PWL*", "-k", "ScheduledProcedureStepSequence[0].Modality=CT",
         "127.0.0.1", str(web.dimse_port)],
        env=DCMTK_ENV, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (row,) = rows_of(web.archive, 1, event_id="110112", user="MODALITY")
    assert (row.action, row.outcome, row.peer) == ("E", 0, "127.0.0.1")
    (obj,) = objects(row)
    assert obj.get("ParticipantObjectID") == MWL_FIND
    assert b"PWL*" in base64.b64decode(obj.findtext("ParticipantObjectQuery", ""))


# -- 2. worklist items over HTTP -> Procedure Record (A.5.3.15), Query; 403 -> 110132 --


def _item(patient: str, study: str) -> dict[str, Any]:
    return {
        "PatientID": patient,
        "PatientName": "DOE^JANE",
        "AccessionNumber": f"ACC-{patient}",
        "StudyInstanceUID": study,
        "ScheduledProcedureStepSequence": [
            {"Modality": "MR", "ScheduledStationAETitle": "MR1",
             "ScheduledProcedureStepStartDate": "20260401",
             "ScheduledProcedureStepStartTime": "081500"}
        ],
    }  # fmt: skip


def test_api_worklist_changes_reads_and_a_forbidden_role(web: WebServer) -> None:
    admin = httpx.BasicAuth("admin", PASSWORD)
    study = uid()
    created = web.client.post("/api/worklist", json=_item("PWL-1", study), auth=admin)
    assert created.status_code == 201, created.text
    item_id = created.json()["id"]
    assert (
        web.client.put(
            f"/api/worklist/{item_id}", json=_item("PWL-1", study), auth=admin
        ).status_code
        == 200
    )
    assert web.client.delete(f"/api/worklist/{item_id}", auth=admin).status_code == 200
    assert web.client.get("/api/worklist?patient_id=PWL-1", auth=admin).status_code == 200

    records = rows_of(web.archive, 3, event_id="110111")
    assert sorted(r.action for r in records) == ["C", "U", "U"]
    for row in records:
        assert (row.user, row.peer, row.patient_id) == ("admin", "127.0.0.1", "PWL-1")
        assert row.study_instance_uid == study
        study_obj, patient_obj = objects(row)
        accession = study_obj.find("ParticipantObjectDescription/Accession")
        assert accession is not None and accession.get("Number") == "ACC-PWL-1"
        assert patient_obj.get("ParticipantObjectTypeCodeRole") == "1"
        assert patient_obj.findtext("ParticipantObjectName") == "DOE^JANE"
    (query,) = rows_of(web.archive, 1, event_id="110112", user="admin")
    (obj,) = objects(query)
    # An HTTP query: the path, as a URI (PS3.15 A.5.3.10, note 2), and the query string.
    assert obj.get("ParticipantObjectID") == "/api/worklist"
    id_type = obj.find("ParticipantObjectIDTypeCode")
    assert id_type is not None and id_type.get("csd-code") == "12"
    assert base64.b64decode(obj.findtext("ParticipantObjectQuery", "")) == (
        b"/api/worklist?patient_id=PWL-1"
    )

    # A viewer may not add worklist items: 403 and Use of Restricted Function.
    refused = web.client.post(
        "/api/worklist", json=_item("PWL-2", uid()), auth=httpx.BasicAuth("viewer", PASSWORD)
    )
    assert refused.status_code == 403
    (alert,) = rows_of(web.archive, 1, event_id="110113", user="viewer")
    assert alert.event_type == "110132" and alert.outcome == 4
    (subject,) = objects(alert)
    # The resource as a URI, the attempt as its name (PS3.15 A.5.3.11).
    assert subject.get("ParticipantObjectID") == "/api/worklist"
    assert subject.findtext("ParticipantObjectName") == "POST /api/worklist"


# -- MPPS N-CREATE / N-SET -> Procedure Record C / U ----------------------------------


def test_pynetdicom_mpps_create_and_set(web: WebServer) -> None:
    study = uid()
    create = Dataset()
    step = Dataset()
    step.StudyInstanceUID = study
    step.AccessionNumber = "ACC-MPPS"
    step.ScheduledProcedureStepID = "SPS1"
    step.RequestedProcedureID = "RP1"
    create.ScheduledStepAttributesSequence = [step]
    create.PatientName = "Doe^John"
    create.PatientID = "P-MPPS"
    create.PerformedProcedureStepID = "PPS1"
    create.PerformedStationAETitle = "CT1"
    create.PerformedProcedureStepStartDate = "20261126"
    create.PerformedProcedureStepStartTime = "101500"
    create.PerformedProcedureStepStatus = "IN PROGRESS"
    create.Modality = "CT"
    create.PerformedSeriesSequence = []
    done = Dataset()
    done.PerformedProcedureStepStatus = "DISCONTINUED"
    done.PerformedProcedureStepEndDate = "20261126"
    done.PerformedProcedureStepEndTime = "103000"

    peer = AE(ae_title="CT1")
    peer.acse_timeout = peer.dimse_timeout = peer.network_timeout = 10
    peer.add_requested_context(MPPS)
    assoc = peer.associate("127.0.0.1", web.dimse_port, ae_title="DICOMVAULT")
    assert assoc.is_established
    try:
        mpps_uid = uid()
        status, _ = assoc.send_n_create(create, MPPS, mpps_uid)
        assert status.Status == 0
        status, _ = assoc.send_n_set(done, MPPS, mpps_uid)
        assert status.Status == 0
    finally:
        assoc.release()
    records = rows_of(web.archive, 2, event_id="110111", user="CT1")
    assert sorted(r.action for r in records) == ["C", "U"]
    assert {(r.patient_id, r.study_instance_uid, r.peer) for r in records} == {
        ("P-MPPS", study, "127.0.0.1")
    }


# -- HL7 orders -> Procedure Record ---------------------------------------------------


def test_hl7_order_is_a_procedure_record(tmp_path: Path) -> None:
    settings = web_settings(tmp_path)
    with Archive.open(settings) as archive:

        async def run(sock: socket.socket, ready: asyncio.Event, stop: asyncio.Event) -> None:
            await serve_hl7(archive, settings, stop, sock=sock, ready=lambda _a: ready.set())

        thread = ServerThread(run).start()
        client = MllpClient(thread.port)
        try:
            ack = client.request(orm(control_id="N1"))
            assert ack["MSA"][1] == "AA"
        finally:
            client.close()
            thread.close()
        (row,) = rows_of(archive, 1, event_id="110111")
        assert (row.action, row.user, row.patient_id) == ("C", "HL7", "P1")
        trail_api.close_trail(archive)


# -- User Identity Negotiation -> User Authentication (A.5.3.12) ----------------------


def _identity(name: str, passcode: str) -> UserIdentityNegotiation:
    item = UserIdentityNegotiation()
    item.user_identity_type = 2
    item.primary_field = name.encode()
    item.secondary_field = passcode.encode()
    return item


def test_dimse_user_identity_success_and_failure(tmp_path: Path) -> None:
    settings = web_settings(tmp_path, security={"trust_loopback": False})
    for web_server in start_web(settings):
        users.add_user(web_server.archive, "alice", PASSWORD, "viewer")
        for passcode in (PASSWORD, "wrong passcode"):
            peer = AE(ae_title="USERSCU")
            peer.acse_timeout = peer.dimse_timeout = peer.network_timeout = 10
            peer.add_requested_context(VERIFICATION)
            assoc = peer.associate(
                "127.0.0.1", web_server.dimse_port, ae_title="DICOMVAULT",
                ext_neg=[_identity("alice", passcode)],
            )  # fmt: skip
            assert assoc.is_established  # identity optional: the AE's rights stay
            assoc.release()
        found = rows_of(web_server.archive, 2, event_id="110114", user="alice")
        assert sorted(r.outcome for r in found) == [0, 4]
        failed = next(r for r in found if r.outcome == 4)
        assert "wrong user name or passcode" in failed.xml and "USERSCU" in failed.xml


# -- the CLI: worklist add/cancel, import, delete, retention run ----------------------


def _cli(*args: str) -> Any:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result


def test_cli_worklist_import_delete_retention(tmp_path: Path) -> None:
    data = tmp_path / "data"
    settings = load_settings(None, {"storage": {"path": data, "fsync": False}})
    added = _cli(
        "worklist", "add", "--json", "--data-dir", str(data), "--patient-id", "P-CLI",
        "--accession", "A-CLI", "--modality", "CT", "--date", "20260310", "--time", "0930",
    )  # fmt: skip
    item = json.loads(added.stdout)
    _cli("worklist", "cancel", item["id"], "--data-dir", str(data))
    records = search_closed(settings, event_id="110111")
    assert sorted(r.action for r in records) == ["C", "U"]
    assert all(r.patient_id == "P-CLI" and r.peer for r in records)

    folder = tmp_path / "media"
    folder.mkdir()
    kept, old = uid(), uid()
    for study, count, date in ((kept, 2, "20260101"), (old, 1, "19990101")):
        for _ in range(count):
            ds = make_dataset(study=study, series=study + ".1")
            ds.PatientID = "P-IMP"
            ds.StudyDate = date
            write_part10(ds, folder / f"{ds.SOPInstanceUID}.dcm")
    _cli("import", "--data-dir", str(data), "--no-progress", str(folder))
    imports = search_closed(settings, event_id="110107")
    assert {r.study_instance_uid for r in imports} == {kept, old}
    for row in imports:
        assert (row.action, row.outcome, row.patient_id) == ("C", 0, "P-IMP")
        media = ET.fromstring(row.xml).findall("ActiveParticipant")[1]
        assert media.get("UserID") == str(folder.resolve())
        description = objects(row)[0].find("ParticipantObjectDescription")
        assert description is not None
        counts = [s.get("NumberOfInstances") for s in description.findall("SOPClass")]
        assert counts == (["2"] if row.study_instance_uid == kept else ["1"])

    _cli("delete", "--data-dir", str(data), "--study", kept, "--yes")
    (deleted,) = search_closed(settings, event_id="110105")
    assert (deleted.study_instance_uid, deleted.patient_id, deleted.action) == (kept, "P-IMP", "D")

    config = tmp_path / "retention.toml"
    config.write_text(
        '[[retention.rules]]\nolder_than_days = 3650\nby = "study_date"\n', encoding="utf-8"
    )
    _cli("retention", "run", "--config", str(config), "--data-dir", str(data))
    swept = [r for r in search_closed(settings, event_id="110105") if r.study_instance_uid == old]
    assert len(swept) == 1 and swept[0].patient_id == "P-IMP" and "retention" in swept[0].xml
