"""Our requestor (C-ECHO / C-STORE SCU) against DCMTK storescp and our own acceptor."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers import (
    DCMTK_ENV,
    PYDICOM_TEST_FILES,
    FileStoreHandler,
    ServerThread,
    data_set_bytes,
    free_port,
    needs_dcmtk,
    start_server,
)

from dicomvault.net import (
    AcceptorPolicy,
    AssociationRejected,
    NoPresentationContext,
    ServiceRegistry,
    associate,
    contexts_for_files,
    read_file_info,
)
from dicomvault.net.sender import collect_files, send_files
from dicomvault.net.uids import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN, VERIFICATION

CT = PYDICOM_TEST_FILES / "CT_small.dcm"
MR = PYDICOM_TEST_FILES / "MR_small.dcm"
JPEG = PYDICOM_TEST_FILES / "SC_rgb_jpeg_dcmtk.dcm"
IMPLICIT = PYDICOM_TEST_FILES / "rtplan.dcm"


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    out = tmp_path / "storescp"
    out.mkdir()
    port = free_port()
    proc = subprocess.Popen(
        ["/usr/bin/storescp", "-aet", "STORESCP", "+xa", "+B", "-od", str(out), str(port)],
        env=DCMTK_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield port, out
    finally:
        proc.terminate()
        proc.wait(10)


@needs_dcmtk
def test_echo_and_store_to_storescp(storescp: tuple[int, Path]) -> None:
    port, out = storescp
    files = [CT, MR, JPEG, IMPLICIT]
    infos = [read_file_info(f) for f in files]

    async def run() -> list[int]:
        statuses = []
        async with associate(
            "127.0.0.1",
            port,
            called_ae="STORESCP",
            contexts=[VERIFICATION, *contexts_for_files(infos)],
            max_pdu=16384,
            timeout=10,
        ) as assoc:
            statuses.append((await assoc.echo()).status)
            for path in files:
                statuses.append((await assoc.send_file(path)).status)
        return statuses

    assert asyncio.run(run()) == [0] * 5
    stored = {read_file_info(p).sop_instance_uid: p for p in out.iterdir()}
    for info in infos:
        received = stored[info.sop_instance_uid]
        assert read_file_info(received).transfer_syntax_uid == info.transfer_syntax_uid
        assert data_set_bytes(received) == data_set_bytes(info.path)


def test_store_streams_in_peer_max_pdu(server: ServerThread, handler: FileStoreHandler) -> None:
    async def run() -> None:
        async with associate(
            "127.0.0.1",
            server.port,
            called_ae="DICOMVAULT",
            contexts=contexts_for_files([read_file_info(CT)]),
        ) as assoc:
            assoc.info.peer_max_pdu = 4096  # as if the acceptor had asked for 4 KiB PDUs
            assert (await assoc.send_file(CT)).status == 0

    asyncio.run(run())
    (record,) = handler.received
    assert record.path.read_bytes() == data_set_bytes(CT)
    assert handler.sinks[0].chunks >= len(data_set_bytes(CT)) // 4090


def test_fallback_reencodes_uncompressed(store_dir: Path) -> None:
    handler = FileStoreHandler(store_dir)
    registry = ServiceRegistry()
    registry.add_store(handler)
    policy = AcceptorPolicy(transfer_syntaxes=(IMPLICIT_VR_LITTLE_ENDIAN,), artim_timeout=2)
    srv = start_server(registry, policy)

    async def run() -> None:
        async with associate(
            "127.0.0.1",
            srv.port,
            called_ae="DICOMVAULT",
            contexts=contexts_for_files([read_file_info(CT), read_file_info(JPEG)]),
        ) as assoc:
            assert (await assoc.send_file(CT)).status == 0  # explicit -> implicit
            with pytest.raises(NoPresentationContext):
                await assoc.send_file(JPEG)  # compressed: never decoded here

    try:
        asyncio.run(run())
    finally:
        srv.close()
    (record,) = handler.received
    assert record.request.transfer_syntax_uid == IMPLICIT_VR_LITTLE_ENDIAN
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO

    fp = DicomBytesIO(record.path.read_bytes())
    fp.is_little_endian, fp.is_implicit_VR = True, True
    from pydicom.filereader import read_dataset

    sent = read_dataset(fp, is_implicit_VR=True, is_little_endian=True)
    assert sent.SOPInstanceUID == dcmread(CT).SOPInstanceUID
    assert sent.PixelData == dcmread(CT).PixelData


def test_rejection_is_typed(server: ServerThread) -> None:
    async def run() -> None:
        async with associate("127.0.0.1", server.port, called_ae="NOT-US", timeout=5):
            pass

    with pytest.raises(AssociationRejected) as info:
        asyncio.run(run())
    assert (info.value.result, info.value.source, info.value.reason) == (1, 1, 7)


def test_send_files_parallel_associations(
    server: ServerThread, handler: FileStoreHandler, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    for index, source in enumerate([CT, MR, JPEG, IMPLICIT]):
        target = folder / ("sub" if index % 2 else "") / f"{index}.dcm"
        target.write_bytes(source.read_bytes())
    (folder / "README.txt").write_text("not DICOM")
    assert len(collect_files([folder])) == 5
    results = asyncio.run(
        send_files(
            [folder], "127.0.0.1", server.port, called_ae="DICOMVAULT", associations=3, timeout=10
        )
    )
    outcomes = sorted(r.outcome for r in results)
    assert outcomes == ["failed", "sent", "sent", "sent", "sent"]
    assert len(handler.received) == 4
    by_uid = handler.by_uid()
    for source in (CT, MR, JPEG, IMPLICIT):
        info = read_file_info(source)
        assert by_uid[info.sop_instance_uid].path.read_bytes() == data_set_bytes(source)
        assert by_uid[info.sop_instance_uid].request.transfer_syntax_uid == info.transfer_syntax_uid


def test_contexts_for_files_fallbacks() -> None:
    jpeg, ct = read_file_info(JPEG), read_file_info(CT)
    contexts = contexts_for_files([jpeg, ct, ct])
    assert contexts == [
        (jpeg.sop_class_uid, [jpeg.transfer_syntax_uid]),
        (ct.sop_class_uid, [ct.transfer_syntax_uid]),
        (jpeg.sop_class_uid, [EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN]),
        (ct.sop_class_uid, [EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN]),
    ]
