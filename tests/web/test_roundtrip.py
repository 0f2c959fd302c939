"""Every pydicom test file through STOW-RS and back over WADO-RS: the same bytes, and
metadata equal to pydicom's own DICOM JSON with bulk data replaced by working URIs
(PS3.18 10.5 store, 10.4 retrieve, F.2 JSON model)."""

from __future__ import annotations

import base64
import email.parser
import email.policy
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_files

from dicomvault.dicom.parse import parse_instance
from dicomvault.dicom.part10 import read_preamble_layout
from dicomvault.model.errors import InvalidInstance
from tests.web.conftest import WebServer, start_web, web_settings

SKIPPED_SUFFIXES = (".gz", ".bz2", ".xz", ".zip", ".json", ".txt", ".py", ".dump", ".icc")


def _storable() -> list[Path]:
    """The bundled files the archive accepts as they are (the others are bad-input cases
    with their own tests: truncated files, DICOMDIRs, stale file meta …)."""
    found = []
    for name in sorted(get_testdata_files()):
        path = Path(name)
        if path.is_dir() or path.name.endswith(SKIPPED_SUFFIXES):
            continue
        try:
            parse_instance(path, meta_mismatch="error")
        except (InvalidInstance, OSError):
            continue
        found.append(path)
    return found


FILES = _storable()


def test_most_bundled_files_take_part() -> None:
    assert len(FILES) >= 120


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    yield from start_web(web_settings(tmp_path_factory.mktemp("roundtrip")))


def _multipart(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    parts = []
    for part in message.iter_parts():
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        parts.append(({k.lower(): str(v) for k, v in part.items()}, payload))
    return parts


def _stow(server: WebServer, path: Path) -> dict[str, Any]:
    boundary = "roundtrip-boundary-4f2a"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    response = server.client.post(
        "/dicom-web/studies",
        content=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def _read(path: Path) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, force=True)


def _pydicom_json(ds: pydicom.Dataset) -> dict[str, Any]:
    """pydicom's JSON of the data set; bulk values (binary VRs over 1 KiB) are marked."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model: dict[str, Any] = ds.to_json_dict(
            bulk_data_threshold=1024, bulk_data_element_handler=lambda _e: "bulk"
        )
    return model


def _same_value(a: Any, b: Any) -> bool:
    if a in (None, "") and b in (None, ""):
        return True  # an empty member of a multi-valued value is null (PS3.18 F.2.5)
    if isinstance(a, int | float) and isinstance(b, int | float):
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(a)))
    if isinstance(a, str) and isinstance(b, str):
        # Leading/trailing spaces of a value are not significant (PS3.5 6.2); pydicom
        # keeps them on all but the last value of a multi-valued string.
        return a.strip(" ") == b.strip(" ")
    return bool(a == b)


def _little_endian(raw: bytes, element: dict[str, Any], ds: pydicom.Dataset | None) -> bytes:
    """Bulk data is served little endian (PS3.18 8.7.3.?): swap a big-endian file's words."""
    if ds is None or ds.file_meta.get("TransferSyntaxUID") != "1.2.840.10008.1.2.2":
        return raw
    width = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}.get(element["vr"], 1)
    if width == 1:
        return raw
    return b"".join(raw[i : i + width][::-1] for i in range(0, len(raw), width))


def _compare(
    server: WebServer, ours: dict[str, Any], theirs: dict[str, Any], ds: pydicom.Dataset | None
) -> list[str]:
    """Where our metadata differs from pydicom's: every bulk value must be fetchable from
    its URI (top level: and equal the element's bytes), every other value equal."""
    problems = []
    # Group lengths (gggg,0000) are not part of the JSON model (PS3.18 F.2.1.1).
    theirs = {tag: element for tag, element in theirs.items() if not tag.endswith("0000")}
    if set(ours) != set(theirs):
        problems.append(
            f"tags differ: ours-only {set(ours) - set(theirs)}, "
            f"pydicom-only {set(theirs) - set(ours)}"
        )
    for tag in sorted(set(ours) & set(theirs)):
        o, t = ours[tag], theirs[tag]
        # Pixel Data read with Implicit VR is OW (PS3.5 A.1 c); pydicom guesses OB for
        # 8-bit images. UN: pydicom may know a private tag's VR from its dictionary.
        vrs = {o["vr"], t["vr"]}
        if len(vrs) > 1 and "UN" not in vrs and not (tag == "7FE00010" and vrs == {"OB", "OW"}):
            problems.append(f"{tag}: VR {o['vr']} vs {t['vr']}")
            continue
        if "BulkDataURI" in o:
            encapsulated = (
                ds is not None and tag == "7FE00010" and ds[0x7FE00010].is_undefined_length
            )
            accept = "*/*" if encapsulated else "application/octet-stream"
            response = server.client.get(o["BulkDataURI"], headers={"Accept": accept})
            if response.status_code != 200:
                problems.append(f"{tag}: bulk data URI answered {response.status_code}")
            elif encapsulated:
                pass  # answered as frames, one part each (PS3.18 8.7.3.3.2): test_wado
            elif "InlineBinary" in t:
                expected = _little_endian(base64.b64decode(t["InlineBinary"]), o, ds)
                if response.content != expected:
                    problems.append(f"{tag}: bulk data differs from pydicom's inline binary")
            elif ds is not None and isinstance(ds[int(tag, 16)].value, bytes):
                expected = _little_endian(ds[int(tag, 16)].value, o, ds)
                if response.content != expected:
                    problems.append(f"{tag}: bulk data differs from the element's bytes")
            continue
        if "InlineBinary" in t or t.get("BulkDataURI"):
            problems.append(f"{tag}: pydicom has binary data, ours {o}")
            continue
        if o["vr"] == "SQ":
            items_o, items_t = o.get("Value", []), t.get("Value", [])
            if len(items_o) != len(items_t):
                problems.append(f"{tag}: {len(items_o)} items vs {len(items_t)}")
                continue
            for io, it in zip(items_o, items_t, strict=True):
                problems += [f"{tag}/{p}" for p in _compare(server, io, it, None)]
            continue
        vo, vt = o.get("Value"), t.get("Value")
        if vo is None or vt is None:
            if (vo or None) != (vt or None):
                problems.append(f"{tag}: {vo!r} vs {vt!r}")
            continue
        if len(vo) != len(vt) or not all(_same_value(x, y) for x, y in zip(vo, vt, strict=True)):
            problems.append(f"{tag}: {vo!r} vs {vt!r}")
    return problems


def _bulk_uris(model: dict[str, Any]) -> Iterator[str]:
    for element in model.values():
        if "BulkDataURI" in element:
            yield element["BulkDataURI"]
        if element.get("vr") == "SQ":
            for item in element.get("Value", []):
                yield from _bulk_uris(item)


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_stow_then_wado_gives_back_the_same_bytes(server: WebServer, path: Path) -> None:
    stored = _stow(server, path)
    referenced = stored["00081199"]["Value"]
    assert len(referenced) == 1
    instance_url = referenced[0]["00081190"]["Value"][0]
    uid = referenced[0]["00081155"]["Value"][0]

    response = server.client.get(
        instance_url,
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
    )
    assert response.status_code == 200, response.text
    parts = _multipart(response.content, response.headers["content-type"])
    assert len(parts) == 1
    headers, payload = parts[0]
    assert "transfer-syntax=" in headers["content-type"]
    with server.archive.open_instance(uid) as stored_file:
        stored_bytes = stored_file.read()
    # Byte for byte, but for the preamble, which is always sent as zeros (CVE-2019-11687).
    assert payload[:128] == bytes(128)
    assert payload[128:] == stored_bytes[128:]
    # The data set bytes are the sender's (the file meta may have been completed).
    original = path.read_bytes()
    layout, offset = read_preamble_layout(original[:65536])
    assert payload.endswith(original[offset:] if layout != "no-meta" else original)

    metadata = server.client.get(
        instance_url + "/metadata", headers={"Accept": "application/dicom+json"}
    )
    assert metadata.status_code == 200
    (ours,) = metadata.json()
    for uri in _bulk_uris(ours):
        assert uri.startswith(instance_url + "/bulkdata/"), uri
    assert _compare(server, ours, _pydicom_json(_read(path)), _read(path)) == []
