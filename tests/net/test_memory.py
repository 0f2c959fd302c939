"""Memory stays flat whatever the instance size: streaming on both sides."""

from __future__ import annotations

import asyncio
import tracemalloc
from pathlib import Path

import pytest
from peers import PYDICOM_TEST_FILES, dcmtk, needs_dcmtk, start_server
from pydicom import dcmread

from dicomvault.net import (
    SUCCESS,
    AcceptorPolicy,
    DimseStatus,
    ServiceRegistry,
    StoreRequest,
    associate,
    contexts_for_files,
    read_file_info,
)

SIZE = 48 * 1024 * 1024


class CountingSink:
    def __init__(self) -> None:
        self.total = 0

    def write(self, chunk: memoryview) -> None:
        self.total += len(chunk)

    def finish(self) -> DimseStatus:
        return SUCCESS

    def abort(self) -> None:
        pass


class Counting:
    def __init__(self) -> None:
        self.sinks: list[CountingSink] = []

    def begin_store(self, request: StoreRequest) -> CountingSink:
        self.sinks.append(CountingSink())
        return self.sinks[-1]


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ds = dcmread(PYDICOM_TEST_FILES / "CT_small.dcm")
    ds.Rows, ds.Columns = 4096, SIZE // (4096 * 2)
    ds.PixelData = bytes(SIZE)
    path = tmp_path_factory.mktemp("big") / "big.dcm"
    ds.save_as(path)
    return path


def test_send_and_receive_large_file_flat_memory(big_file: Path) -> None:
    handler = Counting()
    registry = ServiceRegistry()
    registry.add_store(handler)
    srv = start_server(registry, AcceptorPolicy(artim_timeout=2))
    info = read_file_info(big_file)

    async def run() -> int:
        async with associate(
            "127.0.0.1", srv.port, called_ae="DICOMVAULT", contexts=contexts_for_files([info])
        ) as assoc:
            return (await assoc.send_file(big_file)).status

    tracemalloc.start()
    try:
        status = asyncio.run(run())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        srv.close()
    assert status == 0
    assert handler.sinks[0].total == info.data_length
    # Both ends in this process: a few read blocks and socket buffers, not the 48 MB.
    assert peak < 12 * 1024 * 1024, peak


@needs_dcmtk
def test_storescu_large_file_flat_memory(big_file: Path) -> None:
    handler = Counting()
    registry = ServiceRegistry()
    registry.add_store(handler)
    srv = start_server(registry, AcceptorPolicy(artim_timeout=2))
    tracemalloc.start()
    try:
        result = dcmtk("storescu", "-aec", "DICOMVAULT", "127.0.0.1", srv.port, big_file)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        srv.close()
    assert result.returncode == 0, result.stderr
    assert handler.sinks[0].total >= SIZE
    assert peak < 8 * 1024 * 1024, peak
