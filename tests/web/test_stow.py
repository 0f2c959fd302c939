"""STOW-RS (PS3.18 10.5) through the real server: dicomweb-client, httpx, DCMTK getscu."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from dicomweb_client import DICOMwebClient
from pydicom import Dataset, dcmread, dcmwrite
from pydicom.uid import generate_uid

from dicomvault import metrics
from tests.core.dicomfiles import dataset_bytes, make_dataset, write_bare, write_part10
from tests.web.conftest import WebServer, start_web, web_settings

STUDY = "1.2.826.0.1.3680043.8.498.1"
OTHER_STUDY = "1.2.826.0.1.3680043.8.498.2"
BOUNDARY = "stow-test-boundary"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def _encoded(ds: Dataset) -> bytes:
    """A Part 10 file as dicomweb-client encodes it."""
    out = io.BytesIO()
    dcmwrite(out, ds)
    return out.getvalue()


def _file(tmp_path: Path, study: str = STUDY, **kwargs: str) -> bytes:
    ds = make_dataset(study=study, series=study + ".1", **kwargs)
    return write_part10(ds, tmp_path / f"{ds.SOPInstanceUID}.dcm").read_bytes()


def _body(
    *parts: bytes, boundary: str = BOUNDARY, part_type: str | None = "application/dicom"
) -> bytes:
    out = bytearray()
    for part in parts:
        out += f"--{boundary}\r\n".encode()
        if part_type:
            out += f"Content-Type: {part_type}\r\n".encode()
        out += b"\r\n" + part + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


def _uid(part10: bytes) -> str:
    return str(dcmread(io.BytesIO(part10)).SOPInstanceUID)


def _stored_bytes(web: WebServer, uid: str) -> bytes:
    with web.archive.open_instance(uid) as f:
        return f.read()


def _seq(body: dict[str, object], tag: str) -> list[dict[str, dict[str, list[object]]]]:
    element = body.get(tag)
    assert isinstance(element, dict)
    return element.get("Value", [])  # type: ignore[no-any-return]


# -- the application/dicom form -----------------------------------------------------


def test_dicomweb_client_stores_instances_byte_for_byte(web: WebServer, tmp_path: Path) -> None:
    datasets = [make_dataset(study=STUDY) for _ in range(3)]
    for ds in datasets:
        write_part10(ds, tmp_path / f"{ds.SOPInstanceUID}.dcm")  # gives it a file meta
    client = DICOMwebClient(url=web.dicomweb)
    answer = client.store_instances(datasets)
    referenced = answer.ReferencedSOPSequence
    assert [item.ReferencedSOPInstanceUID for item in referenced] == [
        ds.SOPInstanceUID for ds in datasets
    ]
    assert "FailedSOPSequence" not in answer
    # dicomweb-client sends a Host header without the port, so only the path is checked.
    assert answer.RetrieveURL.endswith(f"/dicom-web/studies/{STUDY}")
    series = datasets[0].SeriesInstanceUID
    assert referenced[0].RetrieveURL.endswith(
        f"/dicom-web/studies/{STUDY}/series/{series}/instances/{datasets[0].SOPInstanceUID}"
    )
    for ds in datasets:
        # dicomweb-client writes group 0002 without preamble and "DICM" (no Part 10
        # header): the archive gives it one; the data set is kept byte for byte.
        stored = tmp_path / "stored.dcm"
        stored.write_bytes(_stored_bytes(web, ds.SOPInstanceUID))
        assert dataset_bytes(stored) == dataset_bytes(tmp_path / f"{ds.SOPInstanceUID}.dcm")
        assert _encoded(ds).endswith(dataset_bytes(stored))
        assert web.archive.get_instance(ds.SOPInstanceUID).study_instance_uid == STUDY


def test_concurrent_requests_with_many_parts_all_store(web: WebServer, tmp_path: Path) -> None:
    """Three requests of 40 parts at once keep every HTTP pool thread busy: each thread's
    index probe once held a pooled connection for good, and the pool ran dry (a part
    failed with 0110 after a 30 s wait)."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    bodies = [_body(*(_file(tmp_path, study=f"{STUDY}.{r}") for _ in range(40))) for r in range(3)]

    def post(body: bytes) -> httpx.Response:
        return httpx.post(
            web.dicomweb + "/studies",
            content=body,
            headers={"Content-Type": CONTENT_TYPE},
            timeout=60,
        )

    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(post, bodies))
    for answer in answers:
        assert answer.status_code == 200, answer.text[:500]
        assert len(_seq(answer.json(), "00081199")) == 40
    assert web.archive.stats().instances == 120


def test_dicomweb_client_stores_into_a_study(web_sqlite: WebServer, tmp_path: Path) -> None:
    ds = make_dataset(study=OTHER_STUDY, series=OTHER_STUDY + ".1")
    write_part10(ds, tmp_path / "a.dcm")
    client = DICOMwebClient(url=web_sqlite.dicomweb)
    answer = client.store_instances([ds], study_instance_uid=OTHER_STUDY)
    assert answer.RetrieveURL.endswith(f"/dicom-web/studies/{OTHER_STUDY}")
    assert answer.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
    stored = tmp_path / "stored.dcm"
    stored.write_bytes(_stored_bytes(web_sqlite, ds.SOPInstanceUID))
    assert dataset_bytes(stored) == dataset_bytes(tmp_path / "a.dcm")


def test_stored_instance_comes_back_over_dimse_c_get(web_sqlite: WebServer, tmp_path: Path) -> None:
    sent = [_file(tmp_path), _file(tmp_path)]
    response = web_sqlite.client.post(
        "/dicom-web/studies", content=_body(*sent), headers={"Content-Type": CONTENT_TYPE}
    )
    assert response.status_code == 200, response.text
    out = tmp_path / "got"
    out.mkdir()
    run = subprocess.run(
        ["/usr/bin/getscu", "-S", "-aec", "DICOMVAULT", "-od", str(out),
         "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={STUDY}",
         "127.0.0.1", str(web_sqlite.dimse_port)],
        capture_output=True, text=True, timeout=30, env={**os.environ, "TCP_NODELAY": "1"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    got = {dcmread(p).SOPInstanceUID: dataset_bytes(p) for p in out.iterdir()}
    for part10, name in zip(sent, ("s0.dcm", "s1.dcm"), strict=True):
        path = tmp_path / name
        path.write_bytes(part10)
        assert got[_uid(part10)] == dataset_bytes(path)


def test_partly_bad_request_is_202_with_what_failed(web_sqlite: WebServer, tmp_path: Path) -> None:
    good = [_file(tmp_path), _file(tmp_path)]
    stranger = _file(tmp_path, study=OTHER_STUDY)
    parts = [good[0], b"this is not DICOM at all, just some text", stranger, good[1]]
    before = metrics.INGEST_INSTANCES.value("stow", "failed")
    response = web_sqlite.client.post(
        f"/dicom-web/studies/{STUDY}",
        content=_body(*parts),
        headers={"Content-Type": CONTENT_TYPE, "Accept": "application/dicom+json"},
    )
    assert response.status_code == 202, response.text
    assert response.headers["content-type"] == "application/dicom+json"
    body = response.json()
    assert body["00081190"]["Value"] == [f"{web_sqlite.dicomweb}/studies/{STUDY}"]
    referenced = _seq(body, "00081199")
    assert [r["00081155"]["Value"][0] for r in referenced] == [_uid(g) for g in good]
    failed = _seq(body, "00081198")
    assert [f["00081197"]["Value"][0] for f in failed] == [0xC000, 0xC409]
    assert "Value" not in failed[0]["00081155"]  # not DICOM: no UID to name
    assert failed[1]["00081155"]["Value"] == [_uid(stranger)]
    for part10 in good:
        assert _stored_bytes(web_sqlite, _uid(part10)) == part10
    assert web_sqlite.archive.stats().instances == 2
    assert metrics.INGEST_INSTANCES.value("stow", "failed") == before + 2


def test_response_as_dicom_xml(web_sqlite: WebServer, tmp_path: Path) -> None:
    """PS3.18 10.5.3: the store response module as a Native DICOM Model document."""
    import xml.etree.ElementTree as ET

    NS = {"n": "http://dicom.nema.org/PS3.19/models/NativeDICOM"}

    part = _file(tmp_path)
    response = web_sqlite.client.post(
        "/dicom-web/studies",
        content=_body(part),
        headers={"Content-Type": CONTENT_TYPE, "Accept": "application/dicom+xml"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/dicom+xml")
    root = ET.fromstring(response.content)
    referenced = root.find("./n:DicomAttribute[@tag='00081199']", NS)
    assert referenced is not None
    uids = [v.text for v in referenced.iterfind(".//n:DicomAttribute[@tag='00081155']/n:Value", NS)]
    assert uids == [_uid(part)]


def test_nothing_stored_is_409(web_sqlite: WebServer, tmp_path: Path) -> None:
    stranger = _file(tmp_path, study=OTHER_STUDY)
    response = web_sqlite.client.post(
        f"/dicom-web/studies/{STUDY}",
        content=_body(stranger, b"\x00" * 10),
        headers={"Content-Type": CONTENT_TYPE},
    )
    assert response.status_code == 409
    failed = _seq(response.json(), "00081198")
    assert len(failed) == 2
    assert "00081199" not in response.json()
    assert web_sqlite.archive.stats().instances == 0


def test_part_layouts_type_parameter_and_duplicates(web_sqlite: WebServer, tmp_path: Path) -> None:
    """Unquoted, upper-case type; parts without Content-Type; a file without preamble and
    a bare data set get Part 10 headers; a re-sent instance is a success."""
    full = _file(tmp_path)
    bare_ds = make_dataset(study=STUDY)
    bare = write_bare(bare_ds, tmp_path / "bare.dcm").read_bytes()
    no_preamble = _file(tmp_path)[128:]
    content_type = f'multipart/related; TYPE=APPLICATION/DICOM; boundary="{BOUNDARY}"'
    body = b"a preamble to ignore\r\n" + _body(full, bare, no_preamble, full, part_type=None)
    response = web_sqlite.client.post(
        "/dicom-web/studies", content=body + b"an epilogue", headers={"Content-Type": content_type}
    )
    assert response.status_code == 200, response.text
    assert len(_seq(response.json(), "00081199")) == 4
    stored_bare = _stored_bytes(web_sqlite, bare_ds.SOPInstanceUID)
    assert stored_bare[128:132] == b"DICM" and stored_bare.endswith(bare)
    assert _stored_bytes(web_sqlite, _uid(full)) == full
    assert _stored_bytes(web_sqlite, _uid(bytes(128) + no_preamble)) == bytes(128) + no_preamble


def test_parts_held_in_memory_and_streamed_alike(web_sqlite: WebServer, tmp_path: Path) -> None:
    """Parts up to archive.stow.IN_MEMORY are parsed from memory, larger ones stream
    through the spool: either way, with and without preamble, the stored file is the part
    with a zero preamble, and a part of another study is refused by both."""
    from dicomvault.archive.stow import IN_MEMORY

    def big(study: str = STUDY) -> bytes:
        ds = make_dataset(study=study, series=study + ".1")
        ds.add_new(0x00090010, "LO", "DICOMVAULT TEST")
        ds.add_new(0x00091010, "OB", b"\x01" * (IN_MEMORY + 300_000))
        data = write_part10(ds, tmp_path / f"{ds.SOPInstanceUID}.dcm").read_bytes()
        return b"\x7fELF" + data[4:]  # a non-zero preamble, which must not be kept

    small, large, large_bare = _file(tmp_path), big(), big()[128:]
    other_small, other_large = _file(tmp_path, study=STUDY + ".9"), big(STUDY + ".9")
    assert len(small) < IN_MEMORY < len(large_bare)
    response = web_sqlite.client.post(
        f"/dicom-web/studies/{STUDY}",
        content=_body(small, large, large_bare, other_small, other_large),
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
        },
    )
    assert response.status_code == 202, response.text
    assert len(_seq(response.json(), "00081199")) == 3
    assert len(_seq(response.json(), "00081198")) == 2
    for part in (small, large, bytes(128) + large_bare):
        assert _stored_bytes(web_sqlite, _uid(part)) == bytes(128) + part[128:]


# -- bad requests -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status", "words"),
    [
        ({}, 415, "Content-Type is missing"),
        ({"Content-Type": "application/dicom"}, 415, "multipart/related"),
        ({"Content-Type": f'multipart/related; type="application/xml"; boundary={BOUNDARY}'},
         415, "application/xml"),
        ({"Content-Type": 'multipart/related; type="application/dicom"'}, 400, "boundary"),
        ({"Content-Type": CONTENT_TYPE, "Content-Encoding": "br"}, 415, "Content-Encoding"),
        ({"Content-Type": CONTENT_TYPE, "Accept": "text/html"}, 406, "accepted"),
    ],
)  # fmt: skip
def test_refused_requests(
    web_sqlite: WebServer, tmp_path: Path, headers: dict[str, str], status: int, words: str
) -> None:
    response = web_sqlite.client.post(
        "/dicom-web/studies", content=_body(_file(tmp_path)), headers=headers
    )
    assert response.status_code == status
    body = response.json()
    assert body["status"] == status and words in body["message"]
    assert web_sqlite.archive.stats().instances == 0


def test_broken_and_truncated_bodies_are_400(web_sqlite: WebServer, tmp_path: Path) -> None:
    headers = {"Content-Type": CONTENT_TYPE}
    response = web_sqlite.client.post(
        "/dicom-web/studies", content=b"no boundary anywhere", headers=headers
    )
    assert response.status_code == 400 and "no delimiter" in response.json()["message"]
    response = web_sqlite.client.post(
        "/dicom-web/studies", content=f"--{BOUNDARY}garbage\r\n\r\nx".encode(), headers=headers
    )
    assert response.status_code == 400 and "broken delimiter" in response.json()["message"]
    response = web_sqlite.client.post(
        "/dicom-web/studies", content=f"--{BOUNDARY}--\r\n".encode(), headers=headers
    )
    assert response.status_code == 400 and "no parts" in response.json()["message"]

    # Completed parts stay stored and are reported; the truncated one is not stored.
    complete, cut = _file(tmp_path), _file(tmp_path)
    body = _body(complete, cut)
    truncated = body[: body.index(cut) + 200]
    response = web_sqlite.client.post("/dicom-web/studies", content=truncated, headers=headers)
    assert response.status_code == 400
    problem = response.json()
    assert "truncated" in problem["message"] and problem["parts"] == 2
    stored = _seq(problem["stored"], "00081199")
    assert [s["00081155"]["Value"][0] for s in stored] == [_uid(complete)]
    assert web_sqlite.archive.stats().instances == 1
    assert web_sqlite.archive.verify().consistent


def test_gzip_bodies_are_inflated(web_sqlite: WebServer, tmp_path: Path) -> None:
    part10 = _file(tmp_path)
    response = web_sqlite.client.post(
        "/dicom-web/studies",
        content=gzip.compress(_body(part10)),
        headers={"Content-Type": CONTENT_TYPE, "Content-Encoding": "gzip"},
    )
    assert response.status_code == 200, response.text
    assert _stored_bytes(web_sqlite, _uid(part10)) == part10
    response = web_sqlite.client.post(
        "/dicom-web/studies",
        content=gzip.compress(_body(part10))[:-20],
        headers={"Content-Type": CONTENT_TYPE, "Content-Encoding": "gzip"},
    )
    assert response.status_code == 400


@pytest.fixture
def small_limits(tmp_path: Path) -> Iterator[WebServer]:
    yield from start_web(web_settings(tmp_path, http={"max_body_bytes": 64 * 1024, "max_parts": 3}))


def test_limits_are_413(small_limits: WebServer, tmp_path: Path) -> None:
    web = small_limits
    headers = {"Content-Type": CONTENT_TYPE}
    # Declared too large: refused before reading.
    response = web.client.post("/dicom-web/studies", content=b"x" * (65 * 1024), headers=headers)
    assert response.status_code == 413 and "max_body_bytes" in response.json()["message"]

    # Chunked, growing past the limit: the parts before the limit stay stored.
    first = _file(tmp_path)
    body = _body(first, b"\0" * (80 * 1024))

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 4096):
            yield body[i : i + 4096]

    response = web.client.post("/dicom-web/studies", content=chunks(), headers=headers)
    assert response.status_code == 413, response.text
    assert response.json()["parts"] == 2, response.text
    stored = _seq(response.json()["stored"], "00081199")
    assert [s["00081155"]["Value"][0] for s in stored] == [_uid(first)]

    # A gzip bomb: 64 MiB of zeros in 64 KiB, stopped at the 64 KiB limit.
    bomb = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = b"\0" * (1 << 20)
    compressed = b"".join(bomb.compress(zeros) for _ in range(64)) + bomb.flush()
    response = web.client.post(
        "/dicom-web/studies",
        content=compressed,
        headers={**headers, "Content-Encoding": "gzip"},
    )
    assert response.status_code == 413

    # Too many parts.
    tiny = [_file(tmp_path) for _ in range(4)]
    response = web.client.post("/dicom-web/studies", content=_body(*tiny), headers=headers)
    assert response.status_code == 413 and "max_parts" in response.json()["message"]
    assert web.archive.verify().consistent


def _big_part(size: int) -> tuple[bytes, Iterator[bytes]]:
    """A Part 10 header whose last element is an OB of ``size`` bytes, and the value's
    bytes generated in 1 MiB chunks (never held whole)."""
    ds = make_dataset(study=STUDY)
    del ds.PixelData
    out = io.BytesIO()
    from pydicom.dataset import FileMetaDataset

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ds.file_meta = meta
    dcmwrite(out, ds, enforce_file_format=True)
    head = out.getvalue() + b"\xe0\x7f\x10\x00OB\x00\x00" + size.to_bytes(4, "little")
    block = bytes(range(256)) * 4096

    def value() -> Iterator[bytes]:
        for _ in range(size // len(block)):
            yield block

    return head, value()


def test_memory_stays_bounded_for_a_large_body(web_sqlite: WebServer) -> None:
    size = 160 * (1 << 20)
    heads: list[bytes] = []

    def body() -> Iterator[bytes]:
        for _ in range(2):
            head, value = _big_part(size)
            heads.append(head)
            yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + head
            yield from value
            yield b"\r\n"
        yield f"--{BOUNDARY}--\r\n".encode()

    process = psutil.Process()
    before = process.memory_info().rss
    response = web_sqlite.client.post(
        "/dicom-web/studies", content=body(), headers={"Content-Type": CONTENT_TYPE}
    )
    growth = process.memory_info().rss - before
    assert response.status_code == 200, response.text
    assert len(_seq(response.json(), "00081199")) == 2
    assert growth < 64 * (1 << 20), f"RSS grew by {growth / (1 << 20):.0f} MiB"
    for head in heads:
        uid = dcmread(io.BytesIO(head), stop_before_pixels=True).SOPInstanceUID
        stored = web_sqlite.archive.get_instance(uid)
        assert stored.size == len(head) + size


# -- the application/dicom+json form ------------------------------------------------


def test_json_and_bulk_data_form(web_sqlite: WebServer) -> None:
    ds = make_dataset(study=STUDY)
    pixels = bytes(ds.PixelData)
    metadata = ds.to_json_dict(bulk_data_threshold=16, bulk_data_element_handler=lambda _e: "px")
    metadata["7FE00010"] = {"vr": "OW", "BulkDataURI": "urn:uuid:pixels"}
    boundary = "json-boundary"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom+json\r\n\r\n".encode()
        + json.dumps([metadata]).encode()
        + f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Location: urn:uuid:pixels\r\n\r\n".encode()
        + pixels
        + f"\r\n--{boundary}--\r\n".encode()
    )
    response = web_sqlite.client.post(
        "/dicom-web/studies",
        content=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom+json"; boundary={boundary}'
        },
    )
    assert response.status_code == 200, response.text
    stored = dcmread(io.BytesIO(_stored_bytes(web_sqlite, ds.SOPInstanceUID)))
    assert stored.PixelData == pixels
    assert stored.PatientName == ds.PatientName
    assert stored.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"

    # A BulkDataURI without its part fails that data set only.
    metadata["00080018"] = {"vr": "UI", "Value": [generate_uid()]}
    metadata["7FE00010"] = {"vr": "OW", "BulkDataURI": "urn:uuid:missing"}
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom+json\r\n\r\n".encode()
        + json.dumps([metadata]).encode()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    response = web_sqlite.client.post(
        "/dicom-web/studies",
        content=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom+json"; boundary={boundary}'
        },
    )
    assert response.status_code == 409
    failed = _seq(response.json(), "00081198")
    assert failed[0]["00081155"]["Value"] == metadata["00080018"]["Value"]


def test_a_5_gb_content_length_is_refused_before_any_byte_is_read(
    web_sqlite: WebServer,
) -> None:
    """With the default limit (4 GiB), a request declaring 5 GB gets 413 at once: the
    server answers from the headers alone, while the client has sent no body yet."""
    import socket

    host, port = web_sqlite.url.removeprefix("http://").split(":")
    head = (
        "POST /dicom-web/studies HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        f"Content-Type: {CONTENT_TYPE}\r\n"
        "Content-Length: 5000000000\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    assert b" 413 " in status_line
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert "http.max_body_bytes" in body["message"]
    assert web_sqlite.archive.stats().instances == 0
