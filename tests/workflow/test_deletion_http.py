"""The deletion admin API (web/admin_api.py) and the DICOMweb DELETE through the real
server with httpx, on both index backends: dry runs change nothing, each level, QIDO-RS
counts afterwards, protection, roles, bad input."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomvault.archive import users
from tests.web.conftest import WebServer, start_web, web_settings
from tests.workflow.deletion_fixtures import ROOT, blob_files, store_many

STUDY_A = ROOT + ".20"
STUDY_B = ROOT + ".21"


@pytest.fixture
def server(tmp_path: Path, backend: str) -> Iterator[WebServer]:
    yield from start_web(web_settings(tmp_path, backend))


def _fill(server: WebServer, tmp_path: Path) -> dict[str, list[str]]:
    archive = server.archive
    return {
        "ct": store_many(archive, tmp_path, 3, study=STUDY_A, series=STUDY_A + ".1"),
        "mr": store_many(archive, tmp_path, 2, study=STUDY_A, series=STUDY_A + ".2", modality="MR"),
        "b": store_many(archive, tmp_path, 2, study=STUDY_B, series=STUDY_B + ".1"),
    }


def _study(server: WebServer, study: str) -> dict[str, object] | None:
    """QIDO-RS of one study with its derived attributes (PS3.18 Table 10.6.3-3)."""
    found = server.client.get(
        "/dicom-web/studies",
        params={"StudyInstanceUID": study, "includefield": "00201206,00201208,00080061"},
    )
    assert found.status_code in (200, 204)
    items = found.json() if found.status_code == 200 else []
    if not items:
        return None
    item = items[0]
    return {
        "series": item["00201206"]["Value"][0],
        "instances": item["00201208"]["Value"][0],
        "modalities": item["00080061"]["Value"],
    }


def test_admin_api_levels_dry_run_and_qido_counts(server: WebServer, tmp_path: Path) -> None:
    uids = _fill(server, tmp_path)
    client = server.client
    files = blob_files(server.archive)

    response = client.delete(f"/api/studies/{STUDY_A}", params={"dry_run": "true"})
    assert response.status_code == 200
    body = response.json()
    assert body["dry_run"] is True
    assert (body["studies"], body["series"], body["instances"]) == (1, 2, 5)
    assert sorted(body["sop_instance_uids"]) == sorted(uids["ct"] + uids["mr"])
    assert body["bytes"] == sum(
        server.archive.get_instance(u).size for u in uids["ct"] + uids["mr"]
    )
    assert blob_files(server.archive) == files
    assert _study(server, STUDY_A) == {"series": 2, "instances": 5, "modalities": ["CT", "MR"]}

    mr = f"/api/studies/{STUDY_A}/series/{STUDY_A}.2"
    response = client.delete(f"{mr}/instances/{uids['mr'][0]}")
    assert response.status_code == 200 and response.json()["instances"] == 1
    assert _study(server, STUDY_A) == {"series": 2, "instances": 4, "modalities": ["CT", "MR"]}
    response = client.delete(mr)
    assert response.json()["series"] == 1
    assert _study(server, STUDY_A) == {"series": 1, "instances": 3, "modalities": ["CT"]}

    # The DICOMweb DELETE is the same service.
    assert client.delete(f"/dicom-web/studies/{STUDY_A}").status_code == 204
    assert _study(server, STUDY_A) is None

    response = client.delete("/api/patients/PID1", params={"dry_run": "1"})
    assert (response.json()["patients"], response.json()["instances"]) == (1, 2)
    response = client.delete("/api/patients/PID1")
    assert response.status_code == 200 and response.json()["patients"] == 1
    assert server.archive.stats().instances == 0
    assert blob_files(server.archive) == set()


def test_protection_over_http(server: WebServer, tmp_path: Path) -> None:
    _fill(server, tmp_path)
    client = server.client
    response = client.put(f"/api/studies/{STUDY_A}/protection", json={"note": "legal hold"})
    assert response.status_code == 200
    assert response.json() == {"study_instance_uid": STUDY_A, "protected": True, "changed": True}
    assert client.put(f"/api/studies/{STUDY_A}/protection").json()["changed"] is False
    for path in (f"/api/studies/{STUDY_A}", f"/dicom-web/studies/{STUDY_A}", "/api/patients/PID1"):
        response = client.delete(path)
        assert response.status_code == 409, path
        assert "protected" in response.json()["message"]
    assert server.archive.stats().instances == 7
    # A dry run says which protected study the deletion would touch.
    assert client.delete("/api/patients/PID1", params={"dry_run": "true"}).json()["protected"] == [
        STUDY_A
    ]
    response = client.delete(f"/api/studies/{STUDY_A}", params={"force": "true"})
    assert response.status_code == 200 and response.json()["instances"] == 5
    assert client.delete(f"/api/studies/{STUDY_B}/protection").json()["changed"] is False
    assert client.put("/api/studies/1.2.3.4/protection").status_code == 404


def test_bad_requests(server: WebServer, tmp_path: Path) -> None:
    _fill(server, tmp_path)
    client = server.client
    cases = {
        ("DELETE", f"/api/studies/{STUDY_A}?dry_run=maybe"): 400,
        ("DELETE", "/api/studies/not-a-uid"): 400,
        ("DELETE", "/api/studies/1.2.3.4"): 404,
        ("DELETE", f"/api/studies/{STUDY_B}/series/{STUDY_A}.1"): 404,  # not in that study
        ("DELETE", "/api/patients/NOBODY"): 404,
        ("DELETE", "/api/patients/" + "X" * 65): 400,
        ("GET", "/api/deletions?limit=0"): 400,
    }
    for (method, path), status in cases.items():
        response = client.request(method, path)
        assert response.status_code == status, (path, response.text)
        assert response.json()["status"] == status
    response = client.put(f"/api/studies/{STUDY_A}/protection", content=b"[1]")
    assert response.status_code == 400
    assert server.archive.stats().instances == 7


def test_only_admins_delete(tmp_path: Path) -> None:
    for server in start_web(web_settings(tmp_path)):
        _fill(server, tmp_path)
        users.add_user(server.archive, "ana", "correct horse battery", "admin")
        users.add_user(server.archive, "vic", "correct horse battery", "uploader")
        path = f"/api/studies/{STUDY_A}"
        assert server.client.delete(path).status_code == 401
        response = server.client.delete(path, auth=("vic", "correct horse battery"))
        assert response.status_code == 403
        response = server.client.get("/api/deletions", auth=("vic", "correct horse battery"))
        assert response.status_code == 403
        response = server.client.delete(path, auth=("ana", "correct horse battery"))
        assert response.status_code == 200
        assert server.archive.stats().instances == 2


def test_allow_delete_off_is_405_except_dry_runs(tmp_path: Path) -> None:
    for server in start_web(web_settings(tmp_path, http={"allow_delete": False})):
        _fill(server, tmp_path)
        assert server.client.delete(f"/api/studies/{STUDY_A}").status_code == 405
        response = server.client.delete(f"/api/studies/{STUDY_A}?dry_run=true")
        assert response.status_code == 200 and response.json()["instances"] == 5
        assert server.archive.stats().instances == 7
