"""A failing handler becomes a status (0xC211 + Error Comment), never an abort."""

from __future__ import annotations

import asyncio

import pytest
from peers import PYDICOM_TEST_FILES, start_server

from dicomvault.net import (
    AcceptorPolicy,
    DimseStatus,
    ServiceRegistry,
    StoreRequest,
    associate,
    contexts_for_files,
    read_file_info,
)

CT = PYDICOM_TEST_FILES / "CT_small.dcm"


class Sink:
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.aborted = False

    def write(self, chunk: memoryview) -> None:
        if self.mode == "write":
            raise OSError("disk on fire")

    async def finish(self) -> DimseStatus:
        if self.mode == "finish":
            raise ValueError("patient 山田 unknown and a very long explanation that goes on and on")
        return DimseStatus(0xB000, "coerced")

    def abort(self) -> None:
        self.aborted = True


class Handler:
    def __init__(self) -> None:
        self.sinks: list[Sink] = []

    def begin_store(self, request: StoreRequest) -> Sink:
        mode = request.association.calling_ae_title.lower()
        if mode == "begin":
            raise RuntimeError("no room")
        self.sinks.append(Sink(mode))
        return self.sinks[-1]


@pytest.mark.parametrize(
    ("mode", "code", "comment"),
    [
        ("begin", 0xC211, "no room"),
        ("write", 0xC211, "disk on fire"),
        ("finish", 0xC211, "patient ?? unknown"),
        ("ok", 0xB000, "coerced"),
    ],
)
def test_handler_failures(mode: str, code: int, comment: str) -> None:
    handler = Handler()
    registry = ServiceRegistry()
    registry.add_store(handler)
    srv = start_server(registry, AcceptorPolicy(artim_timeout=2))

    async def run() -> list[DimseStatus]:
        async with associate(
            "127.0.0.1",
            srv.port,
            called_ae="DICOMVAULT",
            calling_ae=mode.upper(),
            contexts=contexts_for_files([read_file_info(CT)]),
        ) as assoc:
            # Twice: the association survives the failure.
            return [await assoc.send_file(CT), await assoc.send_file(CT)]

    try:
        statuses = asyncio.run(run())
    finally:
        srv.close()
    for status in statuses:
        assert status.status == code
        assert status.error_comment is not None and status.error_comment.startswith(comment)
        assert len(status.error_comment) <= 64
    assert status.category == ("warning" if code == 0xB000 else "failure")
    if mode == "write":
        assert all(sink.aborted for sink in handler.sinks)
