"""``/api/worklist`` through a real server with httpx (JSON in and out, every refusal),
the roles that may use it, and what a modality then finds with C-FIND (pynetdicom)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]

from dicomvault.archive import users
from tests.web.conftest import WebServer, start_web, web_settings

PASSWORD = "correct horse battery"


@pytest.fixture
def web(tmp_path: Path) -> Iterator[WebServer]:
    yield from start_web(web_settings(tmp_path))


def order(patient_id: str = "P1", **extra: Any) -> dict[str, Any]:
    return {
        "PatientID": patient_id,
        "PatientName": "DOE^JANE",
        "AccessionNumber": f"ACC-{patient_id}",
        "ScheduledProcedureStepSequence": [
            {
                "Modality": "MR",
                "ScheduledStationAETitle": "MR1",
                "ScheduledProcedureStepStartDate": "20250401",
                "ScheduledProcedureStepStartTime": "081500",
            }
        ],
        **extra,
    }


def modality_finds(web: WebServer) -> list[str]:
    """Patient IDs a modality (pynetdicom) finds on the worklist."""
    ae = AE(ae_title="MR1")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(ModalityWorklistInformationFind)
    query = Dataset()
    query.PatientID = ""
    step = Dataset()
    step.ScheduledStationAETitle = "MR1"
    query.ScheduledProcedureStepSequence = [step]
    assoc = ae.associate("127.0.0.1", web.dimse_port, ae_title="DICOMVAULT")
    assert assoc.is_established
    try:
        found = [
            str(identifier.PatientID)
            for status, identifier in assoc.send_c_find(query, ModalityWorklistInformationFind)
            if status is not None and status.Status == 0xFF00 and identifier is not None
        ]
    finally:
        assoc.release()
    return found


def test_add_show_list_update_cancel(web: WebServer) -> None:
    client = web.client
    created = client.post("/api/worklist", json=order())
    assert created.status_code == 201, created.text
    body = created.json()
    item_id = body["id"]
    assert created.headers["location"] == f"/api/worklist/{item_id}"
    assert body["status"] == "SCHEDULED" and body["patient_id"] == "P1"
    assert body["steps"][0]["station_ae_titles"] == ["MR1"]
    assert body["dataset"]["00100010"]["Value"] == [{"Alphabetic": "DOE^JANE"}]
    assert modality_finds(web) == ["P1"]

    assert client.get(f"/api/worklist/{item_id}").json() == body
    listed = client.get("/api/worklist", params={"modality": "MR", "date": "20250401"})
    assert [i["id"] for i in listed.json()] == [item_id]
    assert client.get("/api/worklist", params={"status": "CANCELLED"}).json() == []

    # PUT with the DICOM JSON model: the stored model, name changed
    model = body["dataset"]
    model["00100010"] = {"vr": "PN", "Value": [{"Alphabetic": "DOE^JANET"}]}
    updated = client.put(f"/api/worklist/{item_id}", json=model)
    assert updated.status_code == 200, updated.text
    assert updated.json()["patient_name"] == "DOE^JANET"
    assert updated.json()["study_instance_uid"] == body["study_instance_uid"]

    cancelled = client.delete(f"/api/worklist/{item_id}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "CANCELLED"
    assert modality_finds(web) == []
    again = client.put(f"/api/worklist/{item_id}", json=order())
    assert again.status_code == 409
    assert "CANCELLED" in again.json()["message"]


def test_dicom_json_array_body(web: WebServer) -> None:
    model = web.client.post("/api/worklist", json=order("P9")).json()["dataset"]
    del model["0020000D"]
    response = web.client.post(
        "/api/worklist", json=[model], headers={"content-type": "application/dicom+json"}
    )
    assert response.status_code == 201, response.text
    assert response.json()["patient_id"] == "P9"


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        (b"{not json", {"content-type": "application/json"}, 400, "the body is not JSON"),
        (b"[1, 2]", {"content-type": "application/json"}, 400, "not one JSON object"),
        (b'{"PatientID": "1"}', {"content-type": "application/json"}, 400, "at least one item"),
        (b'{"PatientID": "1"}', {"content-type": "text/plain"}, 415, "application/json"),
    ],
)
def test_bad_bodies(
    web: WebServer, body: bytes, headers: dict[str, str], status: int, message: str
) -> None:
    response = web.client.post("/api/worklist", content=body, headers=headers)
    assert response.status_code == status
    problem = response.json()
    assert problem["status"] == status and message in problem["message"]
    assert web.client.get("/api/worklist").json() == []


def test_invalid_values_name_the_attribute(web: WebServer) -> None:
    bad = order()
    bad["ScheduledProcedureStepSequence"][0]["ScheduledProcedureStepStartDate"] = "01.04.2025"
    response = web.client.post("/api/worklist", json=bad)
    assert response.status_code == 400
    assert response.json()["message"].startswith(
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate:"
    )


def test_unknown_items_are_404(web: WebServer) -> None:
    for method in ("GET", "PUT", "DELETE"):
        for item_id in ("0" * 32, "not-an-id"):
            kwargs: dict[str, Any] = {"json": order()} if method == "PUT" else {}
            response = web.client.request(method, f"/api/worklist/{item_id}", **kwargs)
            assert response.status_code == 404, (method, item_id)
            assert "no worklist item" in response.json()["message"]


def test_bad_list_parameters(web: WebServer) -> None:
    for params, message in (
        ({"status": "DONE"}, "status: 'DONE'"),
        ({"date": "April"}, "date:"),
        ({"limit": "x"}, "limit: 'x' is not an integer"),
        ({"limit": "0"}, "limit: must be 1 to"),
        ({"patient": "P1"}, "unknown parameter 'patient'"),
    ):
        response = web.client.get("/api/worklist", params=params)
        assert response.status_code == 400, params
        assert message in response.json()["message"]


def test_body_size_limit(tmp_path: Path) -> None:
    for web in start_web(web_settings(tmp_path, worklist={"max_item_bytes": 1024})):
        big = order(PatientComments="x" * 2000)
        response = web.client.post("/api/worklist", json=big)
        assert response.status_code == 413
        assert "worklist.max_item_bytes" in response.json()["message"]


def test_roles(tmp_path: Path) -> None:
    """Viewers read the worklist; uploaders (a RIS account) and admins change it."""
    for web in start_web(web_settings(tmp_path)):
        for role in users.ROLES:
            users.add_user(web.archive, role, PASSWORD, role)
        auth = {role: (role, PASSWORD) for role in users.ROLES}
        assert web.client.get("/api/worklist").status_code == 401
        assert web.client.get("/api/worklist", auth=auth["viewer"]).status_code == 200
        denied = web.client.post("/api/worklist", json=order(), auth=auth["viewer"])
        assert denied.status_code == 403 and denied.json()["permission"] == "worklist"
        added = web.client.post("/api/worklist", json=order(), auth=auth["uploader"])
        assert added.status_code == 201
        item_id = added.json()["id"]
        assert web.client.delete(f"/api/worklist/{item_id}", auth=auth["viewer"]).status_code == 403
        assert web.client.delete(f"/api/worklist/{item_id}", auth=auth["admin"]).status_code == 200
