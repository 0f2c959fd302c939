"""``/api/mpps`` and ``/api/commitments`` through a real HTTP client, after a modality
(pynetdicom) reported a step and asked for a commitment over DIMSE on the same archive."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from commitment_peers import Reports, action_info, request
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep as MPPS_CLASS
from test_mpps import completion, create_list

from tests.core.dicomfiles import make_dataset, write_part10
from tests.web.conftest import WebServer, start_web, web_settings


@pytest.fixture
def site(tmp_path: Path) -> Iterator[WebServer]:
    yield from start_web(web_settings(tmp_path))


def test_mpps_listed_and_linked_to_stored_series(site: WebServer, tmp_path: Path) -> None:
    ds = make_dataset()
    site.archive.store_file(write_part10(ds, tmp_path / "a.dcm"))
    ae = AE(ae_title="CT1")
    ae.add_requested_context(MPPS_CLASS)
    assoc = ae.associate("127.0.0.1", site.dimse_port, ae_title="DICOMVAULT")
    uid = generate_uid()
    try:
        assert assoc.send_n_create(create_list(), MPPS_CLASS, uid)[0].Status == 0
        done = completion(series=[str(ds.SeriesInstanceUID)])
        assert assoc.send_n_set(done, MPPS_CLASS, uid)[0].Status == 0
    finally:
        assoc.release()
    listed = site.client.get("/api/mpps", params={"status": "COMPLETED"}).json()
    assert [(s["sop_instance_uid"], s["accession_number"]) for s in listed] == [(uid, "ACC1")]
    one = site.client.get(f"/api/mpps/{uid}").json()
    assert one["performed_series"][0]["stored_instances"] == 1
    assert one["dataset"]["00400252"]["Value"] == ["COMPLETED"]
    assert site.client.get("/api/mpps", params={"study": "1.2.3.4.5"}).json()[0]["status"] == (
        "COMPLETED"
    )


def test_bad_queries_and_unknown_uids(site: WebServer) -> None:
    for path, params, text in [
        ("/api/mpps", {"status": "PAUSED"}, "status must be one of"),
        ("/api/mpps", {"limit": "0"}, "limit must be"),
        ("/api/mpps", {"study": "1.2.x"}, "not digits"),
        ("/api/commitments", {"state": "done"}, "state must be one of"),
        ("/api/mpps/1.2.x", {}, "not digits"),
    ]:
        answer = site.client.get(path, params=params)
        assert answer.status_code == 400, path
        assert text in answer.json()["message"], answer.json()
    assert site.client.get(f"/api/mpps/{generate_uid()}").status_code == 404
    assert site.client.get(f"/api/commitments/{generate_uid()}").status_code == 404


def test_commitment_jobs(site: WebServer, tmp_path: Path) -> None:
    ds = make_dataset()
    site.archive.store_file(write_part10(ds, tmp_path / "a.dcm"))
    info = action_info(
        [(str(ds.SOPClassUID), str(ds.SOPInstanceUID)), (str(ds.SOPClassUID), generate_uid())]
    )
    reports = Reports()
    assert request(site.dimse_port, info, reports, keep=15) == 0
    reports.wait()
    job = site.client.get(f"/api/commitments/{info.TransactionUID}").json()
    assert job["state"] == "sent" and job["committed"] == 1
    assert job["failed"][0]["failure_reason"] == "0x0112"
    listed = site.client.get("/api/commitments", params={"state": "sent"}).json()
    assert [j["transaction_uid"] for j in listed] == [info.TransactionUID]
