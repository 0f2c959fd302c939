"""The audit trail over HTTP (issue 7 part 5, PS3.15 A.5.3) with httpx against the real
server: STOW-RS, QIDO-RS, WADO-RS, DELETE, logins, and ``GET /api/audit`` (admin only)."""

from __future__ import annotations

import base64
import secrets
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dicomvault.archive import audit, users
from dicomvault.archive.audit import AuditFilter, AuditRow, trail_of
from tests.core.dicomfiles import make_dataset, write_part10
from tests.web.conftest import WebServer, start_web, web_settings

PASSWORD = "correct horse battery"
ADMIN = httpx.BasicAuth("admin", PASSWORD)
VIEWER = httpx.BasicAuth("viewer", PASSWORD)
BOUNDARY = "audit-boundary"


def rows(web: WebServer, n: int, timeout: float = 10.0, **where: Any) -> list[AuditRow]:
    deadline = time.monotonic() + timeout
    while True:
        trail_of(web.archive).flush(5)
        found = audit.search(web.archive, AuditFilter(limit=1000, **where))
        if len(found) >= n or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@pytest.fixture
def web(tmp_path: Path) -> Iterator[WebServer]:
    for server in start_web(web_settings(tmp_path)):
        users.add_user(server.archive, "admin", PASSWORD, "admin")
        users.add_user(server.archive, "viewer", PASSWORD, "viewer")
        yield server


def _stow(web: WebServer, tmp_path: Path, study: str, n: int) -> None:
    body = bytearray()
    for _ in range(n):
        ds = make_dataset(study=study, series=study + ".1")
        part = write_part10(ds, tmp_path / f"{ds.SOPInstanceUID}.dcm").read_bytes()
        body += f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        body += part + b"\r\n"
    body += f"--{BOUNDARY}--\r\n".encode()
    response = web.client.post(
        "/dicom-web/studies",
        content=bytes(body),
        auth=ADMIN,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
        },
    )
    assert response.status_code == 200, response.text


def test_dicomweb_events(web: WebServer, tmp_path: Path) -> None:
    study = f"1.2.826.0.1.3680043.8.498.78.{secrets.randbelow(10**12)}"
    _stow(web, tmp_path, study, 2)
    stored = rows(web, 1, event_id="110104")
    assert [(r.action, r.user, r.peer, r.patient_id, r.study_instance_uid) for r in stored] == [
        ("C", "admin", "127.0.0.1", "PID1", study)
    ]

    found = web.client.get("/dicom-web/studies", params={"PatientID": "PID1"}, auth=VIEWER)
    assert found.status_code == 200
    (query,) = rows(web, 1, event_id="110112")
    assert query.user == "viewer"
    obj = ET.fromstring(query.xml).find("ParticipantObjectIdentification")
    assert obj is not None
    assert base64.b64decode(obj.findtext("ParticipantObjectQuery", "")) == (
        b"/dicom-web/studies?PatientID=PID1"
    )

    assert web.client.get(f"/dicom-web/studies/{study}", auth=VIEWER).status_code == 200
    sent = rows(web, 2, event_id="110104")
    assert sorted(r.action for r in sent) == ["C", "R"]
    assert web.client.get(f"/dicom-web/studies/{study}/metadata", auth=VIEWER).status_code == 200
    (accessed,) = rows(web, 1, event_id="110103")
    assert (accessed.user, accessed.patient_id) == ("viewer", "PID1")

    assert web.client.delete(f"/dicom-web/studies/{study}", auth=ADMIN).status_code == 204
    (deleted,) = rows(web, 1, event_id="110105")
    assert (deleted.action, deleted.user, deleted.patient_id) == ("D", "admin", "PID1")
    assert deleted.study_instance_uid == study


def test_logins_success_once_and_every_failure(web: WebServer) -> None:
    bad = httpx.BasicAuth("admin", "wrong password!")
    for _ in range(2):
        assert web.client.get("/dicom-web/studies", auth=bad).status_code == 401
    for _ in range(3):
        assert web.client.get("/dicom-web/studies", auth=ADMIN).status_code in (200, 204)
    logins = rows(web, 3, event_id="110114")
    assert sorted((r.outcome, r.user) for r in logins) == [
        (0, "admin"),
        (4, "admin"),
        (4, "admin"),
    ]
    failure = next(r for r in logins if r.outcome == 4)
    assert "EventOutcomeDescription" in failure.xml
    assert all(r.event_type == "110122" for r in logins)


def test_api_audit_is_admin_only_and_filters(web: WebServer) -> None:
    assert web.client.get("/api/audit", auth=VIEWER).status_code == 403
    web.client.get("/dicom-web/studies", auth=VIEWER)
    rows(web, 1, event_id="110112")
    answer = web.client.get("/api/audit", params={"event": "110112"}, auth=ADMIN)
    assert answer.status_code == 200
    body = answer.json()
    assert [e["event_id"] for e in body] == ["110112"]
    assert body[0]["user"] == "viewer" and body[0]["xml"].startswith("<AuditMessage>")
    everything = web.client.get("/api/audit", params={"limit": 1000}, auth=ADMIN).json()
    assert {e["event_id"] for e in everything} >= {"110112", "110114"}
    assert len(web.client.get("/api/audit", params={"limit": 1}, auth=ADMIN).json()) == 1
    assert web.client.get("/api/audit", params={"user": "nobody"}, auth=ADMIN).json() == []
    for params in ({"limit": 1001}, {"since": "yesterday"}, {"outcome": 3}, {"who": "x"}):
        bad = web.client.get("/api/audit", params=params, auth=ADMIN)
        assert bad.status_code == 400, params
        assert bad.json()["status"] == 400
