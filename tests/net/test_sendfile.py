"""net/sendfile.py on a real loopback connection: the PDUs it frames, writes made
meanwhile held until the file is out, a file that ends early (the connection aborted,
nothing held written), and when it declines (nothing sent)."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from dicomvault.net import sendfile
from dicomvault.net.dul import UpperLayer


@asynccontextmanager
async def _connected() -> AsyncIterator[tuple[UpperLayer, socket.socket]]:
    """An acceptor-side upper layer on one end of a loopback TCP connection, and the
    other end as a plain blocking socket (read from a thread)."""
    listener = socket.create_server(("127.0.0.1", 0))
    peer = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    listener.close()
    loop = asyncio.get_running_loop()
    dul = UpperLayer(requestor=False, max_pdu=65536, artim_timeout=30)
    transport, _ = await loop.connect_accepted_socket(lambda: dul, sock=accepted)
    try:
        yield dul, peer
    finally:
        transport.abort()
        peer.close()
        await asyncio.sleep(0)


def _read_all(peer: socket.socket) -> bytes:
    peer.settimeout(10)
    out = bytearray()
    while chunk := peer.recv(1 << 16):
        out += chunk
    return bytes(out)


def _pdus(data: bytes) -> list[tuple[int, int, bytes]]:
    """(context, message control header, value) of each one-PDV P-DATA-TF PDU."""
    out = []
    pos = 0
    while pos < len(data):
        kind, length = struct.unpack_from(">BxL", data, pos)
        assert kind == 4
        (pdv_length,) = struct.unpack_from(">L", data, pos + 6)
        assert pdv_length == length - 4
        out.append((data[pos + 10], data[pos + 11], data[pos + 12 : pos + 6 + length]))
        pos += 6 + length
    return out


def _run(body: Callable[[], Any]) -> Any:
    return asyncio.run(body())


def test_pdus_then_what_was_written_meanwhile(tmp_path: Path, monkeypatch: Any) -> None:
    blob = tmp_path / "blob"
    content = bytes(range(256)) * 1000  # 256,000 bytes
    blob.write_bytes(b"HEAD" + content)
    lead = struct.pack(">BxLLBB", 4, 6, 2, 1, 3)  # a one-PDV command PDU with no value

    async def body() -> tuple[bool, bytes]:
        async with _connected() as (dul, peer):
            real = sendfile._sendfile
            calls = 0

            async def writing_meanwhile(*args: Any) -> None:
                nonlocal calls
                calls += 1
                if calls == 2:
                    dul._write(b"LATE")  # an A-ABORT, say: must wait for the file
                await real(*args)

            monkeypatch.setattr(sendfile, "_sendfile", writing_meanwhile)
            reader = asyncio.get_running_loop().run_in_executor(None, _read_all, peer)
            with blob.open("rb") as fh:
                sent = await sendfile.send_file_pdus(
                    dul, 1, fh.fileno(), 4, len(content), 100_000, 10, lead=lead
                )
            assert dul._held is None
            dul.transport.close()  # type: ignore[union-attr]
            return sent, await reader

    sent, received = _run(body)
    assert sent
    assert received.startswith(lead) and received.endswith(b"LATE")
    pdus = _pdus(received[len(lead) : -4])
    assert [(ctx, mch, len(v)) for ctx, mch, v in pdus] == [
        (1, 0, 100_000),
        (1, 0, 100_000),
        (1, 2, 56_000),
    ]
    assert b"".join(v for _, _, v in pdus) == content


def test_a_file_that_ends_early_aborts_the_connection(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"x" * 50_000)

    async def body() -> tuple[bool, bytes]:
        async with _connected() as (dul, peer):
            reader = asyncio.get_running_loop().run_in_executor(None, _read_all, peer)
            with blob.open("rb") as fh, pytest.raises(OSError, match="ended before"):
                await sendfile.send_file_pdus(dul, 1, fh.fileno(), 0, 80_000, 40_000, 10)
            dul._write(b"NEVER")  # after the failure: the transport is gone
            assert dul.transport is not None and dul.transport.is_closing()
            assert dul._held is None
            try:
                return False, await reader
            except ConnectionResetError:
                return True, b""

    reset, received = _run(body)
    assert reset or b"NEVER" not in received


@pytest.mark.parametrize("why", ["small PDVs", "buffered", "empty"])
def test_declines_without_sending_anything(tmp_path: Path, why: str) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"y" * 100_000)

    async def body() -> tuple[bool, bytes]:
        async with _connected() as (dul, peer):
            transport: Any = dul.transport
            max_value, length = 100_000, 100_000
            if why == "small PDVs":
                max_value = sendfile.MIN_VALUE - 1
            elif why == "buffered":
                transport.get_write_buffer_size = lambda: 1
            else:
                length = 0
            with blob.open("rb") as fh:
                sent = await sendfile.send_file_pdus(
                    dul, 1, fh.fileno(), 0, length, max_value, 10, lead=b"LEAD"
                )
            assert dul._held is None
            transport.close()
            return sent, await asyncio.get_running_loop().run_in_executor(None, _read_all, peer)

    assert _run(body) == (False, b"")
