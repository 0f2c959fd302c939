"""Zero-copy file bodies: ``os.sendfile`` from the blob store straight to the client's
socket, under uvicorn, for WADO-RS answers sent as stored.

ASGI has no portable way to send a file without reading it through the application (the
``http.response.zerocopysend`` extension exists, uvicorn does not offer it). Measured on a
50 × 0.53 MB study: reading each file into a buffer and writing it to uvicorn's transport
cost 0.50 ms of CPU per instance, two copies and a zeroing of the buffer among it; the
kernel's ``sendfile`` does it in one copy without the interpreter.

How: the outermost middleware keeps the server's own ``send`` in the scope; when it is
uvicorn's HTTP/1.1 cycle on a plain TCP transport (not TLS), the application writes the
part heads through ASGI as usual, waits until the transport's buffer is empty, then
``sendfile``\\ s the file range from a pool thread (``poll`` for writability, bounded by a
timeout) and tells the cycle how many body bytes went out so its Content-Length check
holds. Anything else — another server, TLS, a HEAD request, an attribute uvicorn renamed —
and :func:`zero_copy` answers ``None``: the caller streams the usual way.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO

from starlette.types import Scope

#: The scope key under which web/app.py's outermost middleware keeps the server's send.
SERVER_SEND = "dicomvault.server_send"

#: A client that takes nothing for this long is given up on (the response is cut).
STALL_TIMEOUT_S = 60.0


class ZeroCopy:
    """File ranges sent with ``sendfile`` on the response's socket."""

    def __init__(self, cycle: Any, transport: asyncio.WriteTransport, sock: Any) -> None:
        self._cycle = cycle
        self._transport = transport
        self._socket = sock

    async def _drained(self) -> None:
        # The heads written through ASGI must reach the socket before the file does.
        for _ in range(10_000):
            if not self._transport.get_write_buffer_size():
                return
            await asyncio.sleep(0.0005)
        raise OSError("the client does not read: response cut")

    async def send_parts(self, parts: Sequence[Part10]) -> None:
        """Send each part's ``lead`` (its head), 128 zero bytes in place of the file's
        preamble (CVE-2019-11687), then the stored Part 10 file from byte 128 on — all
        from one pool thread (one hop for the whole answer), each file checked first to
        still be the indexed one."""
        count = sum(len(part.lead) + part.size for part in parts)
        if self._cycle.chunked_encoding or self._cycle.expected_content_length < count:
            raise OSError("zero-copy needs a declared Content-Length covering the files")
        # Our own descriptor of the connection's socket, taken on the loop while the
        # transport is open (no await in between): if the client goes away and uvicorn
        # closes its descriptor, the number may be reused by another connection at once,
        # and writing to it would send this answer to someone else. The duplicate keeps
        # pointing at this connection (writes then fail with EPIPE).
        if self._transport.is_closing():
            raise ConnectionResetError("the client went away")
        fd = os.dup(self._socket.fileno())
        try:
            await self._drained()  # what went through ASGI (the response head) goes first
            loop = asyncio.get_running_loop()
            for batch in _batches(parts):
                # A thread waits on the client while a batch goes out: batches keep a slow
                # client from holding one for the whole study, and the pool is this
                # module's own so downloads never queue searches or stores behind them.
                await loop.run_in_executor(_pool(), _send_parts, fd, batch)
        finally:
            os.close(fd)
        self._cycle.expected_content_length -= count


@dataclass(frozen=True, slots=True)
class Part10:
    """One part of a zero-copy answer: its head, how to open the stored file, its
    indexed size, and what to call it in errors."""

    lead: bytes
    open_file: Callable[[], BinaryIO]
    size: int
    what: str


#: Bytes of files per pool call (see :meth:`ZeroCopy.send_parts`).
BATCH_BYTES = 64 << 20
#: Threads sending files; more simultaneous downloads wait their turn.
SENDFILE_THREADS = 8
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        with _POOL_LOCK:
            if _POOL is None:
                _POOL = ThreadPoolExecutor(
                    SENDFILE_THREADS, thread_name_prefix="dicomvault-sendfile"
                )
    return _POOL


def _batches(parts: Sequence[Part10]) -> list[list[Part10]]:
    batches: list[list[Part10]] = [[]]
    size = 0
    for part in parts:
        if batches[-1] and size + part.size > BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(part)
        size += part.size
    return batches


def _send_parts(sock_fd: int, parts: Sequence[Part10]) -> None:
    poller = select.poll()
    poller.register(sock_fd, select.POLLOUT)
    for part in parts:
        with part.open_file() as fp:
            fd = fp.fileno()
            actual = os.fstat(fd).st_size
            if actual != part.size or os.pread(fd, 4, 128) != b"DICM":
                # The Content-Length promised the indexed file: cut the response rather
                # than send something else; `dicomvault verify` reports the blob.
                raise OSError(
                    f"blob of {part.what} is {actual} bytes, the index says {part.size}"
                )
            view = memoryview(part.lead + bytes(128))
            while view:
                try:
                    view = view[os.write(sock_fd, view) :]
                except BlockingIOError:
                    _wait(poller)
            _sendfile_all(sock_fd, fd, 128, part.size - 128, poller)


def _wait(poller: select.poll) -> None:
    if not poller.poll(int(STALL_TIMEOUT_S * 1000)):
        raise TimeoutError("the client stopped reading: response cut")


def _sendfile_all(
    sock_fd: int, file_fd: int, offset: int, count: int, poller: select.poll
) -> None:
    while count:
        try:
            sent = os.sendfile(sock_fd, file_fd, offset, count)
        except BlockingIOError:
            _wait(poller)
            continue
        if sent == 0:
            raise OSError("the file ended before its indexed size: response cut")
        offset += sent
        count -= sent


def zero_copy(scope: Scope) -> ZeroCopy | None:
    """A :class:`ZeroCopy` for this request's connection, or ``None`` when it cannot be
    used (see the module docstring)."""
    if scope.get("method") != "GET" or not hasattr(os, "sendfile"):
        return None
    send = scope.get(SERVER_SEND)
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if (
        transport is None
        or not isinstance(getattr(cycle, "expected_content_length", None), int)
        or not hasattr(cycle, "chunked_encoding")
        or transport.get_extra_info("sslcontext") is not None
        or not hasattr(transport, "get_write_buffer_size")
    ):
        return None
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    return ZeroCopy(cycle, transport, sock)
