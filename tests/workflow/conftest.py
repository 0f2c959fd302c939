"""Fixtures of the workflow services' tests (issue 6): an archive with a DIMSE server
on 127.0.0.1 that also runs the background services ``serve`` runs (the storage
commitment report sender), and stored CT instances to refer to."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "net"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "core"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from commitment_peers import Reports, free_port
from dicomfiles import make_dataset, write_part10
from peers import ServerThread
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel

from dicomvault.archive import Archive
from dicomvault.config import Settings, load_settings
from dicomvault.dimse.commitment import CommitmentReporter
from dicomvault.dimse.server import serve_dicom

#: Settings each test may extend through the ``workflow_overrides`` fixture.
BASE: dict[str, Any] = {
    "dicom": {"host": "127.0.0.1", "port": 0, "idle_timeout": 10, "artim_timeout": 2},
    "commitment": {"retry_initial": 0.2, "retry_max": 0.5, "poll_interval": 0.1},
}


@pytest.fixture
def workflow_overrides() -> dict[str, Any]:
    return {}


@pytest.fixture
def workflow_settings(tmp_path: Path, workflow_overrides: dict[str, Any]) -> Settings:
    data: dict[str, Any] = {"storage": {"path": tmp_path / "data", "fsync": False}}
    for section, values in {**BASE, **workflow_overrides}.items():
        data[section] = {**BASE.get(section, {}), **values}
    return load_settings(None, data)


@pytest.fixture
def wf_archive(workflow_settings: Settings) -> Iterator[Archive]:
    archive = Archive.open(workflow_settings)
    try:
        yield archive
    finally:
        archive.close()


@pytest.fixture
def wf_server(wf_archive: Archive, workflow_settings: Settings) -> Iterator[ServerThread]:
    """The DIMSE listener plus the commitment report sender, on one event loop."""

    async def make(sock: socket.socket, ready: asyncio.Event, stop: asyncio.Event) -> None:
        await asyncio.gather(
            serve_dicom(wf_archive, workflow_settings, ready=ready, stop=stop, sock=sock),
            CommitmentReporter(wf_archive).run(stop),
        )

    srv = ServerThread(make).start()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
def stored(wf_archive: Archive, tmp_path: Path) -> Callable[[int], list[tuple[str, str]]]:
    """Store ``n`` CT instances; returns their (SOP Class UID, SOP Instance UID)."""

    def store(n: int) -> list[tuple[str, str]]:
        out = []
        for i in range(n):
            ds = make_dataset()
            path = write_part10(ds, tmp_path / f"in{i}-{ds.SOPInstanceUID}.dcm")
            wf_archive.store_file(path)
            out.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
        return out

    return store


@pytest.fixture
def listener_port() -> int:
    return free_port()


@pytest.fixture
def report_listener(listener_port: int) -> Iterator[Callable[[], Reports]]:
    """Start (when called) a pynetdicom acceptor taking the report as the SCU of Storage
    Commitment while we propose the SCP role (role selection)."""
    servers: list[Any] = []

    def start() -> Reports:
        reports = Reports()
        ae = AE(ae_title="MODALITY")
        ae.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
        servers.append(
            ae.start_server(
                ("127.0.0.1", listener_port),
                block=False,
                evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handler)],
            )
        )
        return reports

    yield start
    for server in servers:
        server.shutdown()
