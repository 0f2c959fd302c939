"""WADO-RS for a ``researcher`` (permission ``retrieve_deidentified``) through a real
server and httpx: studies, series and instances come de-identified (PS3.15 Annex E, the
``deidentify.wado_*`` options); every other route is 403; burned-in annotation is 409."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from dicomvault.archive import users
from dicomvault.archive.anonymize import deid_keys
from tests.core.dicomfiles import bundled, make_dataset, write_part10
from tests.web.conftest import WebServer, start_web, web_settings
from tests.web.test_wado import parts

STUDY = "1.2.826.0.1.3680043.8.498.9191"
SERIES = STUDY + ".1"
ANY = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}


def _server(tmp_path: Path, **deidentify: object) -> Iterator[WebServer]:
    for server in start_web(web_settings(tmp_path, deidentify=deidentify)):
        users.add_user(server.archive, "rita", "correct horse battery", "researcher")
        users.add_user(server.archive, "vic", "correct horse battery", "viewer")
        for n in (1, 2):
            ds = make_dataset(
                sop_instance_uid=f"{SERIES}.{n}", study=STUDY, series=SERIES, name="Doe^Jane"
            )
            ds.StudyDescription = "CT for Jane Doe"
            server.archive.store_file(write_part10(ds, tmp_path / f"{n}.dcm"))
        yield server


@pytest.fixture
def web(tmp_path: Path) -> Iterator[WebServer]:
    yield from _server(tmp_path)


def _auth(web: WebServer, name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {users.create_token(web.archive, name, 'test').token}"}


def test_a_researcher_gets_the_study_de_identified(web: WebServer) -> None:
    headers = {**_auth(web, "rita"), **ANY}
    response = web.client.get(f"/dicom-web/studies/{STUDY}", headers=headers)
    assert response.status_code == 200, response.text
    keys = deid_keys(web.settings)
    got = parts(response)
    assert len(got) == 2
    sop_uids = set()
    for part_headers, data in got:
        assert data[:128] == bytes(128) and data[128:132] == b"DICM"
        ds = dcmread(io.BytesIO(data))
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.StudyInstanceUID == keys.uid(STUDY) != STUDY
        assert ds.PatientID == str(ds.PatientName) == keys.pseudonym("PID1")
        assert "StudyDescription" not in ds and ds.StudyDate == ""  # X, Z
        assert part_headers["Content-Type"].endswith("transfer-syntax=1.2.840.10008.1.2.1")
        sop_uids.add(ds.SOPInstanceUID)
    assert sop_uids == {keys.uid(f"{SERIES}.1"), keys.uid(f"{SERIES}.2")}
    # the same bytes on every download (keyed UIDs and pseudonyms): an ETag that holds
    again = web.client.get(
        f"/dicom-web/studies/{STUDY}",
        headers={**headers, "If-None-Match": response.headers["ETag"]},
    )
    assert again.status_code == 304
    # a series and an instance too, in the default transfer syntax (Explicit VR LE)
    series_url = f"/dicom-web/studies/{STUDY}/series/{SERIES}"
    series = web.client.get(series_url, headers=_auth(web, "rita"))
    assert series.status_code == 200 and len(parts(series)) == 2
    one = web.client.get(
        f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{SERIES}.1", headers=headers
    )
    ((_, data),) = parts(one)
    assert dcmread(io.BytesIO(data)).SOPInstanceUID == keys.uid(f"{SERIES}.1")


def test_a_viewer_still_gets_the_stored_study(web: WebServer) -> None:
    response = web.client.get(f"/dicom-web/studies/{STUDY}", headers={**_auth(web, "vic"), **ANY})
    ds = dcmread(io.BytesIO(parts(response)[0][1]))
    assert ds.StudyInstanceUID == STUDY and str(ds.PatientName) == "Doe^Jane"


@pytest.mark.parametrize(
    "path",
    [
        "/dicom-web/studies",
        f"/dicom-web/studies/{STUDY}/series",
        f"/dicom-web/studies/{STUDY}/metadata",
        f"/dicom-web/studies/{STUDY}/rendered",
        f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{SERIES}.1/frames/1",
        f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{SERIES}.1/bulkdata/7FE00010",
        "/api/audit",
    ],
)
def test_every_other_route_is_forbidden(web: WebServer, path: str) -> None:
    response = web.client.get(path, headers=_auth(web, "rita"))
    assert response.status_code == 403, (path, response.text)
    assert response.json()["role"] == "researcher"


def test_burned_in_annotation_refuses_the_request(tmp_path: Path) -> None:
    for web in _server(tmp_path):
        ds = make_dataset(sop_instance_uid=f"{SERIES}.3", study=STUDY, series=SERIES)
        ds.BurnedInAnnotation = "YES"
        web.archive.store_file(write_part10(ds, tmp_path / "burned.dcm"))
        response = web.client.get(f"/dicom-web/studies/{STUDY}", headers=_auth(web, "rita"))
        assert response.status_code == 409
        assert f"{SERIES}.3" in response.json()["message"]


def test_the_wado_options_apply(tmp_path: Path) -> None:
    options = {
        "wado_retain_uids": True,
        "wado_retain_dates": "full",
        "wado_clean_descriptors": True,
    }
    for web in _server(tmp_path, **options):
        web.archive.store_file(bundled("SC_rgb_jpeg_dcmtk.dcm"))
        headers = {**_auth(web, "rita"), **ANY}
        response = web.client.get(f"/dicom-web/studies/{STUDY}", headers=headers)
        ds = dcmread(io.BytesIO(parts(response)[0][1]))
        assert ds.StudyInstanceUID == STUDY and ds.StudyDate == "20260102"
        assert ds.StudyDescription == "ANONYMIZED"  # it names the patient
        assert [i.CodeValue for i in ds.DeidentificationMethodCodeSequence] == [
            "113100", "113105", "113106", "113110",
        ]  # fmt: skip
        # a compressed instance goes out as stored with *, decompressed by default
        jpeg = dcmread(bundled("SC_rgb_jpeg_dcmtk.dcm"))
        url = f"/dicom-web/studies/{jpeg.StudyInstanceUID}"
        as_stored = web.client.get(url, headers=headers)
        out = dcmread(io.BytesIO(parts(as_stored)[0][1]))
        assert out.file_meta.TransferSyntaxUID == jpeg.file_meta.TransferSyntaxUID
        assert out.PixelData == jpeg.PixelData
        default = web.client.get(url, headers=_auth(web, "rita"))
        plain = dcmread(io.BytesIO(parts(default)[0][1]))
        assert plain.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        assert plain.PatientIdentityRemoved == "YES"


def test_user_add_researcher(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from dicomvault.cli.main import cli

    data = tmp_path / "data"
    ran = CliRunner().invoke(
        cli,
        [
            "user",
            "add",
            "rita",
            "--role",
            "researcher",
            "--password-stdin",
            "--data-dir",
            str(data),
        ],
        input="correct horse battery\n",
    )
    assert ran.exit_code == 0, ran.output
    listed = CliRunner().invoke(cli, ["user", "list", "--json", "--data-dir", str(data)])
    assert '"researcher"' in listed.stdout
