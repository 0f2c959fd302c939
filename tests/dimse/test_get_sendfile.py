"""C-GET sub-operations whose data sets go from the stored file to the socket with
``sendfile`` (net/sendfile.py): byte for byte on both event loops, through a receiver
too slow for the socket's buffer (the sender then waits for writability), and the usual
path where sendfile does not apply (PDUs under 32 KiB)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from peers import PYDICOM_TEST_FILES, ServerThread, data_set_bytes
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import generate_uid
from qr_peers import qr_settings

from dicomvault.archive import Archive
from dicomvault.dimse.server import serve_dicom
from dicomvault.net import (
    SUCCESS,
    DimseStatus,
    RoleSelection,
    ServiceRegistry,
    associate,
    service_user,
)
from dicomvault.net import sendfile as sendfile_module

STUDY_GET = "1.2.840.10008.5.1.4.1.2.2.3"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


def _ct(path: Path, side: int, study: str) -> Path:
    """A CT of ``side`` x ``side`` 16-bit pixels (random: nothing compresses it)."""
    ds = dcmread(PYDICOM_TEST_FILES / "CT_small.dcm")
    ds.file_meta.TransferSyntaxUID = EXPLICIT
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Rows = ds.Columns = side
    ds.PixelData = bytes(range(256)) * (side * side * 2 // 256)
    ds.save_as(path, enforce_file_format=True)
    return path


class _Sink:
    def __init__(self, out: list[bytes], pause: float) -> None:
        self.out, self.pause, self.parts = out, pause, bytearray()

    def write(self, chunk: memoryview) -> None:
        if self.pause:
            time.sleep(self.pause)  # blocks the receiver's loop: its socket fills up
        self.parts += chunk

    def finish(self) -> DimseStatus:
        self.out.append(bytes(self.parts))
        return SUCCESS

    def abort(self) -> None:
        pass


class _Handler:
    def __init__(self, pause: float = 0.0) -> None:
        self.received: list[bytes] = []
        self.pause = pause

    def begin_store(self, request: Any) -> _Sink:
        return _Sink(self.received, self.pause)


@contextmanager
def _server(tmp_path: Path, files: list[Path], *, uvloop: bool) -> Iterator[int]:
    settings = qr_settings(tmp_path, {})
    archive = Archive.open(settings)
    for path in files:
        archive.store_file(path)

    async def make(sock: socket.socket, ready: asyncio.Event, stop: asyncio.Event) -> None:
        await serve_dicom(archive, settings, ready=ready, stop=stop, sock=sock)

    server = ServerThread(make, uvloop=uvloop).start()
    try:
        yield server.port
    finally:
        server.close()
        archive.close()


def _get(port: int, study: str, handler: _Handler, max_pdu: int) -> int:
    registry = ServiceRegistry()
    registry.add_store(handler, sop_classes=[CT_STORAGE])
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    query = dcmread(PYDICOM_TEST_FILES / "CT_small.dcm", stop_before_pixels=True)
    query.clear()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study
    write_dataset(fp, query)

    async def run() -> int:
        async with associate(
            "127.0.0.1",
            port,
            called_ae="DICOMVAULT",
            contexts=[(STUDY_GET, ["1.2.840.10008.1.2"]), (CT_STORAGE, [EXPLICIT])],
            roles=[RoleSelection(CT_STORAGE, False, True)],
            registry=registry,
            max_pdu=max_pdu,
            timeout=30,
        ) as assoc:
            responses = [r async for r in assoc.get(STUDY_GET, fp.getvalue())]
            assert responses[-1].status.status == 0x0000
            return responses[-1].completed or 0

    return asyncio.run(run())


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    used: list[bool] = []
    real = service_user.send_file_pdus

    async def counting(*args: Any, **kwargs: Any) -> bool:
        used.append(out := await real(*args, **kwargs))
        return out

    monkeypatch.setattr(service_user, "send_file_pdus", counting)
    return used


@pytest.mark.parametrize("uvloop", [False, True], ids=["asyncio", "uvloop"])
def test_byte_for_byte_in_several_pdus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uvloop: bool
) -> None:
    study = generate_uid()
    files = [_ct(tmp_path / f"{n}.dcm", side, study) for n, side in enumerate((64, 400, 700))]
    used = _counting(monkeypatch)
    handler = _Handler()
    with _server(tmp_path, files, uvloop=uvloop) as port:
        assert _get(port, study, handler, max_pdu=65536) == 3
    assert used == [True, True, True]
    assert sorted(handler.received, key=len) == [data_set_bytes(f) for f in files]


def test_a_receiver_slower_than_the_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """16 MB to a receiver that stalls on every PDU: the sender's socket fills, it waits
    for writability, and the data set still arrives whole."""
    study = generate_uid()
    path = _ct(tmp_path / "big.dcm", 2896, study)
    waits: list[int] = []
    real = sendfile_module._writable

    async def counting(*args: Any) -> None:
        waits.append(1)
        await real(*args)

    monkeypatch.setattr(sendfile_module, "_writable", counting)
    used = _counting(monkeypatch)
    handler = _Handler(pause=0.02)
    with _server(tmp_path, [path], uvloop=True) as port:
        assert _get(port, study, handler, max_pdu=262144) == 1
    assert used == [True] and waits
    assert handler.received == [data_set_bytes(path)]


def test_small_pdus_go_the_usual_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study = generate_uid()
    path = _ct(tmp_path / "a.dcm", 300, study)
    used = _counting(monkeypatch)
    handler = _Handler()
    with _server(tmp_path, [path], uvloop=False) as port:
        assert _get(port, study, handler, max_pdu=16384) == 1
    assert used == [False]
    assert handler.received == [data_set_bytes(path)]
