"""A real dicomvault HTTP server (uvicorn on a loopback socket, in a thread) over a fresh
archive, with the DIMSE listener on the same event loop, for DICOMweb tests through real
clients (httpx, dicomweb-client) and DCMTK / pynetdicom peers."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "net"))

from peers import ServerThread

from dicomvault.archive import Archive
from dicomvault.config import Settings, load_settings
from dicomvault.dimse.server import serve_dicom
from dicomvault.web.http import serve_http


@dataclass
class WebServer:
    archive: Archive
    settings: Settings
    #: ``http://127.0.0.1:PORT``
    url: str
    #: ``http://127.0.0.1:PORT/dicom-web``
    dicomweb: str
    #: DIMSE port of the same archive (AE title ``DICOMVAULT``)
    dimse_port: int
    client: httpx.Client


def web_settings(tmp_path: Path, index_url: str = "", **sections: dict[str, Any]) -> Settings:
    base: dict[str, dict[str, Any]] = {
        "storage": {"path": tmp_path / "data", "fsync": False},
        "index": {"url": index_url},
        "dicom": {"host": "127.0.0.1", "port": 0, "idle_timeout": 10, "artim_timeout": 2},
        "http": {"host": "127.0.0.1", "port": 0},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return load_settings(None, base)


def _dimse_socket() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    return sock


def start_web(settings: Settings) -> Iterator[WebServer]:
    """Open an archive on ``settings`` and serve it over HTTP and DIMSE until closed."""
    archive = Archive.open(settings)
    dimse_sock = _dimse_socket()

    async def make(sock: socket.socket, ready: asyncio.Event, stop: asyncio.Event) -> None:
        http_ready = asyncio.Event()
        dimse_ready = asyncio.Event()

        async def both() -> None:
            await http_ready.wait()
            await dimse_ready.wait()
            ready.set()

        waiter = asyncio.ensure_future(both())
        try:
            await asyncio.gather(
                serve_http(archive, settings, ready=http_ready, stop=stop, sock=sock),
                serve_dicom(archive, settings, ready=dimse_ready, stop=stop, sock=dimse_sock),
            )
        finally:
            waiter.cancel()

    server = ServerThread(make).start()
    url = f"http://127.0.0.1:{server.port}"
    client = httpx.Client(base_url=url, timeout=30)
    try:
        yield WebServer(
            archive=archive,
            settings=settings,
            url=url,
            dicomweb=url + "/dicom-web",
            dimse_port=int(dimse_sock.getsockname()[1]),
            client=client,
        )
    finally:
        client.close()
        server.close()
        archive.close()


@pytest.fixture
def web(tmp_path: Path, backend: str) -> Iterator[WebServer]:
    """The server on each index backend (SQLite and PostgreSQL)."""
    yield from start_web(web_settings(tmp_path, backend))


@pytest.fixture
def web_sqlite(tmp_path: Path) -> Iterator[WebServer]:
    """The server on SQLite only, for tests whose subject is not the index."""
    yield from start_web(web_settings(tmp_path))
