"""WADO-RS (PS3.18 10.4) through the real server: httpx and dicomweb-client as clients,
DCMTK storescu and Archive.store_file to fill the archive."""

from __future__ import annotations

import io
import os
import re
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLSLossless, generate_uid

from tests.core.dicomfiles import bundled
from tests.web.conftest import WebServer

# pydicom's rtdose.dcm references a UID with a leading zero component (PS3.5 9.1); the
# archive keeps it, pydicom warns when it reads it.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning"),
    pytest.mark.filterwarnings("ignore:With tag:UserWarning"),
]

ELE = "1.2.840.10008.1.2.1"
MULTIPART_DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'
OHIF_FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"


def store(web: WebServer, name: str | Path) -> Dataset:
    path = name if isinstance(name, Path) else bundled(name)
    web.archive.store_file(path)
    return pydicom.dcmread(path)


def instance_path(ds: Dataset) -> str:
    return (
        f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


def parts(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    """Split a multipart/related body as OHIF does (VIEWERS.md)."""
    match = re.search(r"boundary=([^;]+)", response.headers["content-type"])
    assert match, response.headers["content-type"]
    boundary = match.group(1).encode()
    body = response.content
    out = []
    for chunk in body.split(b"--" + boundary)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, payload = chunk.partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode().strip().split("\r\n"):
            key, _, value = line.partition(": ")
            headers[key] = value
        assert payload.endswith(b"\r\n")
        out.append((headers, payload[:-2]))
    assert body.endswith(b"--" + boundary + b"--\r\n")
    return out


def stored_file(web: WebServer, uid: str) -> bytes:
    with web.archive.open_instance(uid) as fp:
        return fp.read()


# -- instances ----------------------------------------------------------------------------


def test_instances_as_stored_are_the_files_dcmtk_sent(web_sqlite: WebServer) -> None:
    files = [bundled("CT_small.dcm"), bundled("MR_small.dcm")]
    result = subprocess.run(
        [
            "/usr/bin/storescu",
            "-aec",
            "DICOMVAULT",
            "127.0.0.1",
            str(web_sqlite.dimse_port),
            *map(str, files),
        ],
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for path in files:
        ds = pydicom.dcmread(path)
        response = web_sqlite.client.get(
            f"/dicom-web/studies/{ds.StudyInstanceUID}", headers={"Accept": MULTIPART_DICOM_ANY}
        )
        assert response.status_code == 200
        assert response.headers["cache-control"] == "private, no-cache"
        ((headers, payload),) = parts(response)
        assert headers["Content-Type"] == f"application/dicom; transfer-syntax={ELE}"
        assert payload == stored_file(web_sqlite, ds.SOPInstanceUID)
        # storescu sent the file's data set (less trailing padding (FFFC,FFFC), which
        # DCMTK drops); the stored bytes above are what it sent.
        got = pydicom.dcmread(io.BytesIO(payload))
        for element in ds:
            if element.tag != 0xFFFCFFFC:
                assert got[element.tag] == element


def test_study_answer_has_a_content_length_and_large_files_stream(
    web_sqlite: WebServer, tmp_path: Path
) -> None:
    """As stored, the sizes are known: the answer declares its length (no chunked
    encoding); a file above the whole-file limit is streamed in pieces."""
    from bench.datasets import large_multiframe
    from dicomvault.web import wado

    big = large_multiframe(tmp_path / "big.dcm", size_bytes=wado.WHOLE_FILE + (3 << 20))
    small = store(web_sqlite, "CT_small.dcm")
    web_sqlite.archive.store_file(big)
    big_ds = pydicom.dcmread(big, stop_before_pixels=True)
    for ds in (small, big_ds):
        url = f"/dicom-web/studies/{ds.StudyInstanceUID}"
        response = web_sqlite.client.get(url, headers={"Accept": MULTIPART_DICOM_ANY})
        assert response.status_code == 200
        assert int(response.headers["content-length"]) == len(response.content)
        ((headers, payload),) = parts(response)
        stored = stored_file(web_sqlite, ds.SOPInstanceUID)
        assert payload[128:] == stored[128:]  # CT_small's preamble holds a TIFF header
        assert payload[:128] == bytes(128)
        assert headers["Content-Length"] == str(len(payload))


def test_a_blob_that_no_longer_matches_the_index_cuts_the_answer(
    web_sqlite: WebServer,
) -> None:
    """The declared length came from the index: a blob truncated on disk must not be
    sent as if whole — the connection is cut and the client sees an incomplete body."""
    ds = store(web_sqlite, "CT_small.dcm")
    blob = web_sqlite.archive.get_instance(ds.SOPInstanceUID).blob_name
    path = web_sqlite.settings.storage.path / "blobs" / blob
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(httpx.RemoteProtocolError):
        web_sqlite.client.get(
            f"/dicom-web/studies/{ds.StudyInstanceUID}", headers={"Accept": MULTIPART_DICOM_ANY}
        )


def test_dicomweb_client_retrieves_study_series_instance(web_sqlite: WebServer) -> None:
    ds = store(web_sqlite, "CT_small.dcm")
    client = DICOMwebClient(url=web_sqlite.dicomweb)
    study = client.retrieve_study(ds.StudyInstanceUID)
    series = client.retrieve_series(ds.StudyInstanceUID, ds.SeriesInstanceUID)
    instance = client.retrieve_instance(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    )
    for got in (study[0], series[0], instance):
        assert got.SOPInstanceUID == ds.SOPInstanceUID
        assert np.array_equal(got.pixel_array, ds.pixel_array)


def test_default_transcodes_implicit_vr_to_explicit(web_sqlite: WebServer) -> None:
    ds = store(web_sqlite, "MR_small_implicit.dcm")
    response = web_sqlite.client.get(
        instance_path(ds), headers={"Accept": 'multipart/related; type="application/dicom"'}
    )
    assert response.status_code == 200
    ((headers, payload),) = parts(response)
    assert headers["Content-Type"] == f"application/dicom; transfer-syntax={ELE}"
    got = pydicom.dcmread(io.BytesIO(payload))
    assert got.file_meta.TransferSyntaxUID == ELE
    assert np.array_equal(got.pixel_array, ds.pixel_array)


def test_default_decompresses_jpeg_and_star_keeps_it(web_sqlite: WebServer) -> None:
    ds = store(web_sqlite, "SC_rgb_jpeg_gdcm.dcm")
    response = web_sqlite.client.get(instance_path(ds))
    ((headers, payload),) = parts(response)
    got = pydicom.dcmread(io.BytesIO(payload))
    assert got.file_meta.TransferSyntaxUID == ELE
    assert np.array_equal(got.pixel_array, ds.pixel_array)
    response = web_sqlite.client.get(instance_path(ds), headers={"Accept": MULTIPART_DICOM_ANY})
    ((headers, payload),) = parts(response)
    assert headers["Content-Type"].endswith("transfer-syntax=1.2.840.10008.1.2.4.70")
    assert payload == stored_file(web_sqlite, ds.SOPInstanceUID)


def test_series_parts_follow_instance_number(web_sqlite: WebServer, tmp_path: Path) -> None:
    series = generate_uid()
    study = generate_uid()
    uids = []
    for number in (3, 1, 2):
        ds = pydicom.dcmread(bundled("CT_small.dcm"))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = number
        path = tmp_path / f"{number}.dcm"
        ds.save_as(path)
        web_sqlite.archive.store_file(path)
        uids.append((number, ds.SOPInstanceUID))
    response = web_sqlite.client.get(
        f"/dicom-web/studies/{study}/series/{series}", headers={"Accept": MULTIPART_DICOM_ANY}
    )
    got = [pydicom.dcmread(io.BytesIO(p)).SOPInstanceUID for _, p in parts(response)]
    assert got == [uid for _, uid in sorted(uids)]


def test_not_found_and_bad_uids(web_sqlite: WebServer) -> None:
    ds = store(web_sqlite, "CT_small.dcm")
    other = store(web_sqlite, "MR_small.dcm")
    client = web_sqlite.client
    response = client.get("/dicom-web/studies/1.2.3.4")
    assert response.status_code == 404
    assert "no study" in response.json()["message"]
    # An instance under a series it does not belong to.
    wrong = (
        f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{other.SOPInstanceUID}"
    )
    response = client.get(wrong)
    assert response.status_code == 404
    assert "is not in series" in response.json()["message"]
    response = client.get(
        f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{other.SeriesInstanceUID}/metadata"
    )
    assert response.status_code == 404
    assert "is not in study" in response.json()["message"]
    response = client.get("/dicom-web/studies/not-a-uid")
    assert response.status_code == 400
    assert response.json()["parameter"] == "Study Instance UID"


def test_not_acceptable(web_sqlite: WebServer) -> None:
    ds = store(web_sqlite, "CT_small.dcm")
    client = web_sqlite.client
    study = f"/dicom-web/studies/{ds.StudyInstanceUID}"
    response = client.get(study, headers={"Accept": 'multipart/related; type="image/png"'})
    assert response.status_code == 406
    assert response.json()["status"] == 406
    response = client.get(
        study,
        headers={
            "Accept": 'multipart/related; type="application/dicom"; '
            "transfer-syntax=1.2.840.10008.1.2.4.50"
        },
    )
    assert response.status_code == 406
    response = client.get(study + "/metadata", headers={"Accept": "application/dicom+xml"})
    assert response.status_code == 406


def test_metadata_as_multipart_dicom_xml(web_sqlite: WebServer) -> None:
    """PS3.18 8.7.2: metadata as one Native DICOM Model document per instance."""
    import xml.etree.ElementTree as ET

    NS = {"n": "http://dicom.nema.org/PS3.19/models/NativeDICOM"}

    ds = store(web_sqlite, "CT_small.dcm")
    response = web_sqlite.client.get(
        instance_path(ds) + "/metadata",
        headers={"Accept": 'multipart/related; type="application/dicom+xml"'},
    )
    assert response.status_code == 200
    ((headers, payload),) = parts(response)
    assert headers["Content-Type"] == "application/dicom+xml"
    root = ET.fromstring(payload)
    uid = root.find("./n:DicomAttribute[@tag='00080018']/n:Value", NS)
    assert uid is not None and uid.text == ds.SOPInstanceUID
    pixels = root.find("./n:DicomAttribute[@tag='7FE00010']/n:BulkData", NS)
    assert pixels is not None
    assert pixels.get("uri", "").endswith(instance_path(ds) + "/bulkdata/7FE00010")


def test_etag_and_if_none_match(web_sqlite: WebServer) -> None:
    ds = store(web_sqlite, "CT_small.dcm")
    client = web_sqlite.client
    for url in (
        f"/dicom-web/studies/{ds.StudyInstanceUID}",
        instance_path(ds) + "/metadata",
        instance_path(ds) + "/frames/1",
    ):
        first = client.get(url)
        assert first.status_code == 200
        etag = first.headers["etag"]
        again = client.get(url, headers={"If-None-Match": etag})
        assert again.status_code == 304
        assert again.headers["etag"] == etag
        assert again.content == b""
        assert client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200


# -- metadata -----------------------------------------------------------------------------


def _bulk_uris(model: object, out: list[str]) -> None:
    if isinstance(model, dict):
        for key, value in model.items():
            if key == "BulkDataURI":
                out.append(value)
            else:
                _bulk_uris(value, out)
    elif isinstance(model, list):
        for value in model:
            _bulk_uris(value, out)


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "MR_small.dcm", "rtdose.dcm", "SC_rgb_jpeg_gdcm.dcm"]
)
def test_metadata_matches_pydicom(web_sqlite: WebServer, name: str) -> None:
    ds = store(web_sqlite, name)
    client = DICOMwebClient(url=web_sqlite.dicomweb)
    got = client.retrieve_instance_metadata(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    )
    expected = ds.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=lambda _e: "X")
    # Same attributes, same values; bulk data named by URI in both.
    assert set(got) == set(expected)
    for tag, element in expected.items():
        if "BulkDataURI" in element or "InlineBinary" in element:
            assert "BulkDataURI" in got[tag], tag
        elif element.get("vr") != "SQ":
            assert got[tag] == element, tag
    # dicomweb-client sends "Host: 127.0.0.1" without the port, so URIs are checked on
    # an httpx answer (its Host header is the one the URIs are built from).
    (model,) = web_sqlite.client.get(instance_path(ds) + "/metadata").json()
    uris: list[str] = []
    _bulk_uris(model, uris)
    base = web_sqlite.url + instance_path(ds) + "/bulkdata/"
    assert uris and all(uri.startswith(base) for uri in uris)
    pixel = model["7FE00010"]["BulkDataURI"]
    assert pixel == base + "7FE00010"
    series = client.retrieve_series_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID)
    study = client.retrieve_study_metadata(ds.StudyInstanceUID)
    assert series == [got] and study == [got]


# -- frames -------------------------------------------------------------------------------


def test_native_multiframe_frames(web_sqlite: WebServer) -> None:
    ds = store(web_sqlite, "rtdose.dcm")
    client = DICOMwebClient(url=web_sqlite.dicomweb)
    frames = client.retrieve_instance_frames(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, [1, 15, 7]
    )
    pixels = ds.pixel_array
    for number, frame in zip([1, 15, 7], frames, strict=True):
        assert frame == pixels[number - 1].astype("<u4").tobytes()
    response = web_sqlite.client.get(
        instance_path(ds) + "/frames/2", headers={"Accept": OHIF_FRAMES}
    )
    ((headers, payload),) = parts(response)
    assert headers["Content-Type"] == f"application/octet-stream; transfer-syntax={ELE}"
    assert payload == pixels[1].astype("<u4").tobytes()


def test_jpeg_frames_as_stored_and_decompressed(web_sqlite: WebServer) -> None:
    ds = store(web_sqlite, "SC_rgb_jpeg_gdcm.dcm")
    stored = pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1)
    as_stored = next(stored)
    client = web_sqlite.client
    url = instance_path(ds) + "/frames/1"
    response = client.get(url, headers={"Accept": OHIF_FRAMES})
    ((headers, payload),) = parts(response)
    assert headers["Content-Type"] == (
        "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.70"
    )
    assert payload == as_stored
    response = client.get(url, headers={"Accept": 'multipart/related; type="image/jpeg"'})
    ((headers, payload),) = parts(response)
    assert headers["Content-Type"] == "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.70"
    assert payload == as_stored
    response = client.get(
        url, headers={"Accept": 'multipart/related; type="application/octet-stream"'}
    )
    ((headers, payload),) = parts(response)
    assert headers["Content-Type"] == f"application/octet-stream; transfer-syntax={ELE}"
    assert payload == ds.pixel_array.tobytes()


def jpeg_ls_multiframe(tmp_path: Path, offsets: bool) -> Path:
    """rtdose as JPEG-LS lossless (32-bit to 16-bit first), with or without a Basic
    Offset Table, two fragments per frame when without."""
    ds = pydicom.dcmread(bundled("rtdose.dcm"))
    pixels = (ds.pixel_array % 60000).astype(np.uint16)
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    ds.compress(JPEGLSLossless, generate_instance_uid=False)
    frames = list(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=15))
    if offsets:
        ds.PixelData = encapsulate(frames, has_bot=True)
    else:
        # Split each frame into two fragments: only scanning for EOI can find frames.
        ds.PixelData = encapsulate(frames, fragments_per_frame=2, has_bot=False)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = tmp_path / f"jls-{offsets}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("offsets", [True, False])
def test_compressed_multiframe_frames(web_sqlite: WebServer, tmp_path: Path, offsets: bool) -> None:
    path = jpeg_ls_multiframe(tmp_path, offsets)
    ds = store(web_sqlite, path)
    expected = list(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=15))
    client = DICOMwebClient(url=web_sqlite.dicomweb)
    got = client.retrieve_instance_frames(
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
        [3, 14],
        media_types=(("image/jls", "1.2.840.10008.1.2.4.80"),),
    )
    assert got == [expected[2], expected[13]]
    decoded = client.retrieve_instance_frames(
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
        [5],
        media_types=(("application/octet-stream", ELE),),
    )
    assert decoded == [ds.pixel_array[4].astype("<u2").tobytes()]


@pytest.mark.parametrize(
    ("frames", "status"),
    [("0", 400), ("1,x", 400), ("-1", 400), ("16", 404), ("1,,2", 400), ("\u00b2", 400)],
)
def test_bad_frame_lists(web_sqlite: WebServer, frames: str, status: int) -> None:
    ds = store(web_sqlite, "rtdose.dcm")
    response = web_sqlite.client.get(instance_path(ds) + f"/frames/{frames}")
    assert response.status_code == status
    body = response.json()
    assert body["status"] == status
    if status == 404:
        assert body["frame"] == 16 and body["frames"] == 15


def test_frames_of_an_instance_without_pixels(web_sqlite: WebServer) -> None:
    ds = store(web_sqlite, "test-SR.dcm")
    response = web_sqlite.client.get(instance_path(ds) + "/frames/1")
    assert response.status_code == 404
    assert "no pixel data" in response.json()["message"]


# -- bulk data ----------------------------------------------------------------------------


def test_bulkdata_multipart_single_and_ranges(web_sqlite: WebServer) -> None:
    ds = store(web_sqlite, "CT_small.dcm")
    url = web_sqlite.url + instance_path(ds) + "/bulkdata/7FE00010"
    client = DICOMwebClient(url=web_sqlite.dicomweb)
    assert client.retrieve_bulkdata(url) == [ds.PixelData]
    http = web_sqlite.client
    single = http.get(url, headers={"Accept": "application/octet-stream"})
    assert single.status_code == 200
    assert single.content == ds.PixelData
    assert single.headers["accept-ranges"] == "bytes"
    ranged = http.get(url, headers={"Accept": "application/octet-stream", "Range": "bytes=10-19"})
    assert ranged.status_code == 206
    assert ranged.content == ds.PixelData[10:20]
    assert ranged.headers["content-range"] == f"bytes 10-19/{len(ds.PixelData)}"
    suffix = http.get(url, headers={"Accept": "application/octet-stream", "Range": "bytes=-5"})
    assert suffix.status_code == 206 and suffix.content == ds.PixelData[-5:]
    bad = http.get(
        url, headers={"Accept": "application/octet-stream", "Range": f"bytes={len(ds.PixelData)}-"}
    )
    assert bad.status_code == 416
    assert bad.headers["content-range"] == f"bytes */{len(ds.PixelData)}"
    assert bad.json()["status"] == 416


def test_bulkdata_nested_and_bad_paths(web_sqlite: WebServer) -> None:
    ds = store(web_sqlite, "CT_small.dcm")
    meta = web_sqlite.client.get(instance_path(ds) + "/metadata").json()[0]
    uris: list[str] = []
    _bulk_uris(meta, uris)
    for uri in uris:
        response = httpx.get(uri, headers={"Accept": "application/octet-stream"})
        assert response.status_code == 200, uri
    base = instance_path(ds) + "/bulkdata/"
    assert web_sqlite.client.get(base + "7FE0001").status_code == 400
    assert web_sqlite.client.get(base + "00081115/0").status_code == 400
    missing = web_sqlite.client.get(base + "7FE00008")
    assert missing.status_code == 404


def test_bulkdata_of_big_endian_is_little_endian(web_sqlite: WebServer) -> None:
    ds = store(web_sqlite, "MR_small_bigendian.dcm")
    url = instance_path(ds) + "/bulkdata/7FE00010"
    response = web_sqlite.client.get(url, headers={"Accept": "application/octet-stream"})
    assert response.content == ds.pixel_array.astype("<i2").tobytes()


def test_bulkdata_pixel_data_of_encapsulated_is_frames(web_sqlite: WebServer) -> None:
    ds = store(web_sqlite, "SC_rgb_rle_2frame.dcm")
    url = instance_path(ds) + "/bulkdata/7FE00010"
    response = web_sqlite.client.get(
        url,
        headers={"Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"},
    )
    got = [payload for _, payload in parts(response)]
    assert got == list(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=2))


# -- index backends -----------------------------------------------------------------------


def test_study_metadata_on_both_backends(web: WebServer) -> None:
    ds = store(web, "CT_small.dcm")
    other = store(web, "MR_small.dcm")
    response = web.client.get(f"/dicom-web/studies/{ds.StudyInstanceUID}/metadata")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/dicom+json")
    (model,) = response.json()
    assert model["00080018"]["Value"] == [ds.SOPInstanceUID]
    response = web.client.get(
        f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{other.SOPInstanceUID}/metadata"
    )
    assert response.status_code == 404


def test_a_non_zero_preamble_is_never_stored_or_sent(web_sqlite: WebServer, tmp_path: Path) -> None:
    """A received preamble is stored as zeros, and WADO-RS sends zeros even for a blob
    that holds something else (stored by an older version) (PS3.10 7.1 preamble;
    PE/DICOM polyglots, CVE-2019-11687)."""
    source = bundled("CT_small.dcm").read_bytes()
    assert source[128:132] == b"DICM"
    polyglot = tmp_path / "polyglot.dcm"
    polyglot.write_bytes(b"MZ" + bytes(range(126)) + source[128:])
    ds = store(web_sqlite, polyglot)
    assert stored_file(web_sqlite, ds.SOPInstanceUID) == bytes(128) + source[128:]
    # A blob of an older version, with the polyglot's preamble, as it is on disk.
    stored = web_sqlite.archive.get_instance(ds.SOPInstanceUID)
    blob = web_sqlite.archive.store.root / stored.blob_name
    with blob.open("r+b") as fp:
        fp.write(b"MZ" + bytes(range(126)))
    response = web_sqlite.client.get(instance_path(ds), headers={"Accept": MULTIPART_DICOM_ANY})
    ((_, payload),) = parts(response)
    assert payload[:128] == bytes(128)
    assert payload[128:] == source[128:]


def test_as_stored_answers_go_out_by_sendfile_in_batches(
    web_sqlite: WebServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under uvicorn the as-stored answer is sent with sendfile (web/zerocopy.py), in
    batches; the bytes are the same as the streamed path's."""
    from bench.datasets import ct_series
    from dicomvault.web import zerocopy

    calls: list[int] = []
    original = zerocopy._send_parts

    def counting(sock_fd: int, parts: list[zerocopy.Part10]) -> None:
        calls.append(len(parts))
        original(sock_fd, parts)

    monkeypatch.setattr(zerocopy, "_send_parts", counting)
    monkeypatch.setattr(zerocopy, "BATCH_BYTES", 40_000)  # ~1 file per batch
    paths = ct_series(tmp_path / "ct", 3, rows=128, cols=128, seed=5)
    for path in paths:
        web_sqlite.archive.store_file(path)
    ds = pydicom.dcmread(paths[0], stop_before_pixels=True)
    response = web_sqlite.client.get(
        f"/dicom-web/studies/{ds.StudyInstanceUID}", headers={"Accept": MULTIPART_DICOM_ANY}
    )
    assert response.status_code == 200
    assert calls == [1, 1, 1]
    got = {pydicom.dcmread(io.BytesIO(p)).SOPInstanceUID: p for _, p in parts(response)}
    for path in paths:
        uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        assert got[uid][128:] == stored_file(web_sqlite, uid)[128:]
        assert got[uid][:128] == bytes(128)


def test_a_client_that_goes_away_mid_answer_leaves_the_server_serving(
    web_sqlite: WebServer, tmp_path: Path
) -> None:
    import socket

    from bench.datasets import ct_series

    paths = ct_series(tmp_path / "ct", 20, seed=6)  # 20 × 0.5 MB
    for path in paths:
        web_sqlite.archive.store_file(path)
    study = pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID
    host, port = web_sqlite.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(
            f"GET /dicom-web/studies/{study} HTTP/1.1\r\nHost: {host}\r\n"
            f"Accept: {MULTIPART_DICOM_ANY}\r\n\r\n".encode()
        )
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")
    # Closed after 1 KiB of ~10 MB: the server's send fails; it must keep serving.
    for _ in range(3):
        assert web_sqlite.client.get("/healthz").status_code == 200
        response = web_sqlite.client.get(
            f"/dicom-web/studies/{study}", headers={"Accept": MULTIPART_DICOM_ANY}
        )
        assert response.status_code == 200 and len(parts(response)) == 20
