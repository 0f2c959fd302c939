"""The requests the OHIF viewer makes (VIEWERS.md, observed with OHIF 3.13), replayed in
its order, and the answers parsed the way OHIF parses them — so a viewer can open a study
from dicomvault: study list, series list, series metadata, one frames request per image."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_fragmented_frames

from bench.datasets import ct_series
from tests.web.conftest import WebServer, start_web, web_settings

JSON = {"Accept": "application/dicom+json"}
FRAMES = {"Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"}


@pytest.fixture(scope="module")
def viewer_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    tmp = tmp_path_factory.mktemp("ohif")
    for server in start_web(web_settings(tmp)):
        for path in ct_series(tmp / "ct", 12, rows=64, cols=64, seed=7):
            server.archive.store_file(path)
        for name in (
            "JPEG2000.dcm",
            "SC_rgb_jpeg_dcmtk.dcm",
            "MR_small_RLE.dcm",
            "SC_rgb_rle_2frame.dcm",
            "examples_ybr_color.dcm",
        ):
            source = get_testdata_file(name)
            assert source is not None
            copy = tmp / name
            shutil.copyfile(source, copy)
            server.archive.store_file(copy)
        yield server


def ohif_parts(body: bytes) -> list[tuple[str, bytes]]:
    """Split a multipart body as OHIF's DICOMweb client does: the boundary is the first
    line starting with ``--``; each part's header is found by ``Content-Type:`` spelt
    exactly so; its data ends two bytes (CRLF) before the next boundary."""
    first_line = body.split(b"\r\n", 1)[0]
    assert first_line.startswith(b"--"), first_line[:40]
    boundary = first_line
    parts = []
    position = 0
    while True:
        start = body.find(boundary, position)
        assert start >= 0
        after = start + len(boundary)
        if body[after : after + 2] == b"--":
            break
        header_end = body.find(b"\r\n\r\n", after)
        header = body[after:header_end].decode("latin-1")
        assert "Content-Type:" in header, header
        content_type = header.split("Content-Type:", 1)[1].split("\r\n", 1)[0].strip()
        data_start = header_end + 4
        next_boundary = body.find(b"\r\n" + boundary, data_start)
        parts.append((content_type, body[data_start:next_boundary]))
        position = next_boundary + 2
    return parts


def transfer_syntax_of(content_type: str) -> str:
    for param in content_type.split(";")[1:]:
        name, _, value = param.strip().partition("=")
        if name == "transfer-syntax":
            return value.strip('"')
    raise AssertionError(f"no transfer-syntax parameter in {content_type!r}: OHIF would guess")


def value(element: dict[str, Any]) -> Any:
    return element.get("Value", [None])[0]


def test_ohif_opens_every_study(viewer_server: WebServer) -> None:
    client = viewer_server.client
    studies = client.get(
        "/dicom-web/studies?limit=101&offset=0&fuzzymatching=false"
        "&includefield=00081030,00080060,00080090,00100030",
        headers=JSON,
    )
    assert studies.status_code == 200
    listed = studies.json()
    assert len(listed) == viewer_server.archive.stats().studies >= 4
    for study in listed:
        for tag in ("0020000D", "00080020", "00080030", "00080050", "00100020", "00100010",
                    "00201208", "00080061"):  # fmt: skip
            assert tag in study, (tag, study)
        study_uid = value(study["0020000D"])
        patient_id = value(study["00100020"])
        reopened = client.get(
            f"/dicom-web/studies?limit=101&offset=0&StudyInstanceUID={study_uid}", headers=JSON
        ).json()
        assert [value(s["0020000D"]) for s in reopened] == [study_uid]
        priors = client.get(f"/dicom-web/studies?00100020={patient_id}", headers=JSON).json()
        assert study_uid in {value(s["0020000D"]) for s in priors}
        series_list = client.get(
            f"/dicom-web/studies/{study_uid}/series"
            "?includefield=00080021,00080031,0008103E,00200011",
            headers=JSON,
        ).json()
        assert series_list
        for series in series_list:
            for tag in ("0020000E", "00080060", "00201209"):
                assert tag in series, (tag, series)
            series_uid = value(series["0020000E"])
            _open_series(viewer_server, study_uid, series_uid)


def _open_series(server: WebServer, study_uid: str, series_uid: str) -> None:
    client = server.client
    metadata = client.get(
        f"/dicom-web/studies/{study_uid}/series/{series_uid}/metadata", headers=JSON
    )
    assert metadata.status_code == 200
    for instance in metadata.json():
        sop_uid = value(instance["00080018"])
        frames = int(value(instance.get("00280008", {"Value": [1]})) or 1)
        with server.archive.open_instance(sop_uid) as stored:
            ds = pydicom.dcmread(stored)
        url = f"/dicom-web/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/frames/1"
        response = client.get(url, headers=FRAMES)
        assert response.status_code == 200, response.text
        ((content_type, pixels),) = ohif_parts(response.content)
        syntax = transfer_syntax_of(content_type)
        assert syntax == ds.file_meta.TransferSyntaxUID, (content_type, sop_uid)
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            first = next(generate_fragmented_frames(ds.PixelData, number_of_frames=frames))
            assert pixels == b"".join(first)
        else:
            frame_size = len(ds.PixelData) // frames
            assert pixels == ds.PixelData[:frame_size]
