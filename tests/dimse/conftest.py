from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "net"))

from peers import ServerThread

from dicomvault.archive import Archive
from dicomvault.config import Settings, load_settings
from dicomvault.dimse.server import serve_dicom


@pytest.fixture
def dimse_settings(tmp_path: Path) -> Settings:
    return load_settings(
        None,
        {
            "storage": {"path": tmp_path / "data", "fsync": False},
            "dicom": {"host": "127.0.0.1", "port": 0, "idle_timeout": 10, "artim_timeout": 2},
        },
    )


@pytest.fixture
def vault(dimse_settings: Settings) -> Iterator[Archive]:
    archive = Archive.open(dimse_settings)
    try:
        yield archive
    finally:
        archive.close()


@pytest.fixture
def vault_server(vault: Archive, dimse_settings: Settings) -> Iterator[ServerThread]:
    async def make(sock: socket.socket, ready: asyncio.Event, stop: asyncio.Event) -> None:
        await serve_dicom(vault, dimse_settings, ready=ready, stop=stop, sock=sock)

    srv = ServerThread(make).start()
    try:
        yield srv
    finally:
        srv.close()
