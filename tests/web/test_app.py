"""The HTTP app's own endpoints and conventions: health, metrics, capabilities, OpenAPI,
JSON error bodies, CORS, gzip."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dicomvault.web.media import parse_accept, parse_media_type
from tests.web.conftest import WebServer, start_web, web_settings


def test_healthz_answers_ok(web_sqlite: WebServer) -> None:
    response = web_sqlite.client.get("/healthz")
    assert response.status_code == 200
    assert response.text == "ok\n"


def test_healthz_reports_an_unwritable_store(web_sqlite: WebServer) -> None:
    spool = web_sqlite.settings.storage.path / "blobs" / ".tmp"
    spool.chmod(0o500)
    try:
        # root ignores mode bits; make the directory unusable another way
        spool.rename(spool.with_name(".tmp-moved"))
        response = web_sqlite.client.get("/healthz")
    finally:
        moved = spool.with_name(".tmp-moved")
        if moved.exists():
            moved.rename(spool)
        spool.chmod(0o700)
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == 503
    assert ".tmp" in body["message"]


def test_metrics_count_requests_per_route(web_sqlite: WebServer) -> None:
    web_sqlite.client.get("/healthz")
    web_sqlite.client.get("/dicom-web/no-such-thing")
    text = web_sqlite.client.get("/metrics").text
    assert 'dicomvault_http_requests_total{route="/healthz",method="GET",status="200"}' in text
    assert 'status="404"' in text
    bucket = 'dicomvault_http_request_duration_seconds_bucket{route="/healthz",method="GET"'
    assert bucket + ',le="+Inf"}' in text
    assert "# TYPE dicomvault_dimse_messages_total counter" in text


def test_capabilities_list_services_and_openapi(web_sqlite: WebServer) -> None:
    root = web_sqlite.client.get("/dicom-web").json()
    assert {s["name"] for s in root["services"]} >= {"QIDO-RS", "WADO-RS", "STOW-RS"}
    assert root["openapi"] == web_sqlite.dicomweb + "/openapi.json"
    document = web_sqlite.client.get("/dicom-web/openapi.json").json()
    assert document["openapi"].startswith("3.")
    assert "/healthz" in document["paths"]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert operation["summary"], f"{method.upper()} {path} has no summary"


def test_unknown_route_is_a_json_404(web_sqlite: WebServer) -> None:
    response = web_sqlite.client.get("/dicom-web/nothing-here")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["status"] == 404


@pytest.fixture
def cors_server(tmp_path: Path) -> Iterator[WebServer]:
    yield from start_web(
        web_settings(tmp_path, http={"cors_origins": ["https://viewer.example.org"]})
    )


def test_cors_preflight_and_response_headers(cors_server: WebServer) -> None:
    preflight = cors_server.client.options(
        "/dicom-web/studies",
        headers={
            "Origin": "https://viewer.example.org",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "accept",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://viewer.example.org"
    response = cors_server.client.get(
        "/dicom-web", headers={"Origin": "https://viewer.example.org"}
    )
    assert response.headers["access-control-allow-origin"] == "https://viewer.example.org"
    other = cors_server.client.get("/dicom-web", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_no_cors_headers_by_default(web_sqlite: WebServer) -> None:
    response = web_sqlite.client.get("/dicom-web", headers={"Origin": "https://x.example"})
    assert "access-control-allow-origin" not in response.headers


def test_gzip_when_asked(web_sqlite: WebServer) -> None:
    raw = httpx.get(
        web_sqlite.url + "/dicom-web/openapi.json", headers={"Accept-Encoding": "gzip"}
    )
    assert raw.headers["content-encoding"] == "gzip"
    plain = httpx.get(
        web_sqlite.url + "/dicom-web/openapi.json", headers={"Accept-Encoding": "identity"}
    )
    assert "content-encoding" not in plain.headers
    assert raw.json() == plain.json()


def test_accept_parsing_keeps_dicom_parameters() -> None:
    ranges = parse_accept(
        'multipart/related; type="application/dicom"; transfer-syntax=*, '
        "application/dicom+json;q=0.5, image/*;q=0"
    )
    assert [r.type for r in ranges] == ["multipart/related", "application/dicom+json"]
    assert ranges[0].related_type == "application/dicom"
    assert ranges[0].transfer_syntax == "*"
    assert ranges[1].q == 0.5
    quoted = parse_media_type('multipart/related; type="application/dicom+xml"; boundary="a,b"')
    assert quoted.params["boundary"] == "a,b"


@pytest.mark.parametrize("bad", ["text", "image/jpeg; q=2", "application/dicom; x"])
def test_malformed_media_types_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="Accept"):
        parse_accept(bad)


def _samples(client: httpx.Client) -> dict[str, float]:
    """The metric samples by name+labels (metrics are per process: tests compare deltas)."""
    samples = {}
    for line in client.get("/metrics").text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_metrics_count_dimse_messages_and_ingest(web_sqlite: WebServer, tmp_path: Path) -> None:
    import os
    import subprocess

    from tests.core.dicomfiles import make_dataset, write_part10

    before = _samples(web_sqlite.client)
    env = {**os.environ, "TCP_NODELAY": "1"}
    port = str(web_sqlite.dimse_port)
    subprocess.run(
        ["/usr/bin/echoscu", "-aec", "DICOMVAULT", "127.0.0.1", port],
        check=True, env=env, timeout=30,
    )  # fmt: skip
    ds = make_dataset()
    path = write_part10(ds, tmp_path / "one.dcm")
    subprocess.run(
        ["/usr/bin/storescu", "-aec", "DICOMVAULT", "127.0.0.1", port, str(path)],
        check=True, env=env, timeout=30,
    )  # fmt: skip
    after = _samples(web_sqlite.client)

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert delta('dicomvault_dimse_messages_total{service="C-ECHO",status="0x0000"}') == 1
    assert delta('dicomvault_dimse_messages_total{service="C-STORE",status="0x0000"}') == 1
    assert delta('dicomvault_ingest_instances_total{source="dimse",outcome="stored"}') == 1
    # The bytes received: the stored file (whose file meta we wrote) give or take the
    # meta's padding.
    stored = web_sqlite.archive.get_instance(ds.SOPInstanceUID).size
    assert abs(delta('dicomvault_ingest_bytes_total{source="dimse"}') - stored) <= 16


def test_http_listens_on_loopback_by_default_and_refuses_exposure_without_users() -> None:
    from dicomvault.config import load_settings
    from dicomvault.model.errors import ConfigError
    from dicomvault.web.http import refuse_if_exposed

    assert load_settings(None, {}).http.host == "127.0.0.1"
    refuse_if_exposed("127.0.0.1", False)
    refuse_if_exposed("::1", False)
    refuse_if_exposed("localhost", False)
    refuse_if_exposed("0.0.0.0", True)  # users exist: served, with authentication
    with pytest.raises(ConfigError, match="dicomvault user add admin --role admin"):
        refuse_if_exposed("0.0.0.0", False)
    with pytest.raises(ConfigError, match="no HTTP user exists"):
        refuse_if_exposed("192.0.2.10", False)
