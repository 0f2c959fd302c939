"""P-DATA-TF PDUs whose PDV values go from a file to the socket with ``sendfile``.

A C-STORE sub-operation of a C-GET or C-MOVE sends a stored instance as it is (PS3.7
9.1.1, P-DATA-TF PDUs of PS3.8 9.3.5). Read through the interpreter, each 0.5 MB
instance was a fresh 1 MB buffer (mapped and faulted in, then unmapped), a copy from the
page cache into it and a copy from it into the socket — about half of the server's CPU
per sub-operation. ``os.sendfile`` copies from the page cache into the socket once; only
the 12-byte PDU and PDV headers go through Python (``MSG_MORE``: they leave in the same
segment as the value that follows).

The transport owns the socket, so the PDUs go through a duplicate of its descriptor,
only when the transport has nothing buffered (what it was given first goes first), and
anything the association writes meanwhile (an A-ABORT) is held until the file is out
(:meth:`dicomvault.net.dul.UpperLayer.hold_writes`). Not for TLS (the transport
encrypts) nor for PDVs smaller than :data:`MIN_VALUE` (two system calls per PDU then
cost more than the copy saved): :func:`send_file_pdus` answers False and the caller
sends the usual way. A failure half-way leaves the peer a truncated PDU: the connection
is then aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from typing import TYPE_CHECKING, Final

from dicomvault.net.outgoing import MCH_LAST
from dicomvault.net.pdu import encode_pdata_header

if TYPE_CHECKING:
    from dicomvault.net.dul import UpperLayer

#: Smallest PDV value (the peer's maximum PDU length less 6) sent with ``sendfile``.
MIN_VALUE: Final = 32768


async def send_file_pdus(
    dul: UpperLayer,
    context_id: int,
    file: int,
    offset: int,
    length: int,
    max_value: int,
    timeout: float,
    *,
    lead: bytes = b"",
) -> bool:
    """Send ``lead`` (the message's command PDUs), then ``length`` bytes of the open file
    ``file`` from ``offset`` as the data set fragments of the message on ``context_id``,
    ``max_value`` bytes per PDV.

    Returns False, having sent nothing, when this transport cannot (see the module
    docstring). Raises OSError or TimeoutError (the peer took nothing for ``timeout``
    seconds) after aborting the connection.
    """
    transport = dul.transport
    if (
        transport is None
        or transport.is_closing()
        or max_value < MIN_VALUE
        or length == 0
        or transport.get_extra_info("ssl_object") is not None
        or transport.get_write_buffer_size()
    ):
        return False
    sock = dul.sendfile_socket()
    if sock is None:
        return False
    dul.hold_writes()
    done = False
    try:
        loop = asyncio.get_running_loop()
        sent = 0
        while sent < length:
            size = min(max_value, length - sent)
            last = sent + size == length
            header = encode_pdata_header(context_id, MCH_LAST if last else 0, size)
            await _send(loop, sock, lead + header if sent == 0 else header, timeout)
            await _sendfile(loop, sock, file, offset + sent, size, timeout)
            sent += size
        done = True
    finally:
        if done:
            dul.release_writes()
        else:  # the peer has part of a PDU: nothing more can make sense to it
            dul.release_writes(discard=True)
            transport.abort()
    return True


async def _send(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, data: bytes, timeout: float
) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view, socket.MSG_MORE) :]
        except BlockingIOError:
            await _writable(loop, sock, timeout)


async def _sendfile(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    file: int,
    offset: int,
    count: int,
    timeout: float,
) -> None:
    while count:
        try:
            sent = os.sendfile(sock.fileno(), file, offset, count)
        except BlockingIOError:
            await _writable(loop, sock, timeout)
            continue
        if sent == 0:
            raise OSError("the stored file ended before its data set was sent")
        offset += sent
        count -= sent


async def _writable(loop: asyncio.AbstractEventLoop, sock: socket.socket, timeout: float) -> None:
    ready = loop.create_future()
    loop.add_writer(sock.fileno(), _set, ready)
    try:
        async with asyncio.timeout(timeout):
            await ready
    finally:
        with contextlib.suppress(Exception):
            loop.remove_writer(sock.fileno())


def _set(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
