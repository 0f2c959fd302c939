"""MLLP: the Minimal Lower Layer Protocol that carries HL7 v2 over TCP.

HL7 Version 3 Standard: Transport Specification — MLLP, Release 2 (HL7 v2.5.1
Appendix C.4): each message travels as a block ``<VT> message <FS><CR>`` (0x0B … 0x1C
0x0D); the receiver answers each block with one acknowledgement block on the same
connection, and a connection carries any number of messages one after another.

:class:`MllpDecoder` is the framing alone — bytes in, frames and framing events out, no
I/O — so the raw-byte tests and the server share it. :class:`MllpServer` is the asyncio
listener: TCP_NODELAY, one message at a time per connection, in order; a maximum message
size (a larger block is answered with the handler's rejection and the connection closed:
reading on would mean buffering what we refused); an idle timeout; a log line per message
with the peer and the MSH-10 control id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger("dicomvault.hl7")

#: Start Block and End Block characters (MLLP Release 2, 3.2).
START_BLOCK = 0x0B
END_BLOCK = 0x1C
CARRIAGE_RETURN = 0x0D

_READ_SIZE = 65536


def frame(message: bytes) -> bytes:
    """``<VT> message <FS><CR>``: one MLLP block."""
    return b"\x0b" + message + b"\x1c\x0d"


@dataclass(frozen=True)
class Frame:
    """A complete message block's content (without VT, FS, CR)."""

    data: bytes


@dataclass(frozen=True)
class Oversized:
    """A block grew past the maximum size; ``head`` is its first bytes (for the MSH)."""

    head: bytes


class MllpDecoder:
    """Incremental MLLP Release 2 block decoder.

    Bytes outside a block are not part of any message: a CR or LF after an end block is
    the tail a sender may add and is skipped silently; anything else is garbage and is
    counted in :attr:`discarded` (the server logs it) and dropped, so the next start
    block still begins a message. A start block inside a block abandons the partial
    message (the sender restarted it); :attr:`abandoned` counts those. ``FS`` ends a
    block; the ``CR`` that must follow it is then the skipped tail.

    Parameters
    ----------
    max_size
        Largest message content in bytes; a longer block yields :class:`Oversized` and the
        decoder stops (the connection must be closed).
    """

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.discarded = 0
        self.abandoned = 0
        self._buffer = bytearray()
        self._inside = False
        self._failed = False

    @property
    def in_block(self) -> bool:
        """True while a started block has not ended (a disconnect now loses a message)."""
        return self._inside

    def feed(self, data: bytes) -> list[Frame | Oversized]:
        """The blocks completed by ``data``, in order."""
        events: list[Frame | Oversized] = []
        view = memoryview(data)
        pos = 0
        while pos < len(view) and not self._failed:
            if not self._inside:
                start = data.find(b"\x0b", pos)
                junk = view[pos : len(view) if start < 0 else start]
                self.discarded += len(bytes(junk).strip(b"\r\n"))
                if start < 0:
                    break
                self._inside = True
                self._buffer.clear()
                pos = start + 1
                continue
            end = data.find(b"\x1c", pos)
            restart = data.find(b"\x0b", pos, len(data) if end < 0 else end)
            if restart >= 0:
                self.abandoned += 1
                self._buffer.clear()
                pos = restart + 1
                continue
            stop = len(data) if end < 0 else end
            self._buffer += view[pos:stop]
            if len(self._buffer) > self.max_size:
                self._failed = True
                self._inside = False
                events.append(Oversized(bytes(self._buffer[:4096])))
                self._buffer.clear()
                break
            if end < 0:
                break
            self._inside = False
            events.append(Frame(bytes(self._buffer)))
            self._buffer.clear()
            pos = end + 1
        return events


@dataclass(frozen=True)
class Reply:
    """What a handler answers: the acknowledgement message (unframed) and, for the log,
    the request's control id and a one-line outcome."""

    message: bytes
    control_id: str
    outcome: str
    #: False for a negative acknowledgement (logged as a warning).
    accepted: bool = True


#: A message handler: the message content → its acknowledgement.
Handler = Callable[[bytes], Awaitable[Reply]]
#: Answers a block that exceeded the maximum size (its first bytes given).
OversizeHandler = Callable[[bytes], Reply]


class MllpServer:
    """An asyncio MLLP listener calling ``handler`` once per message.

    Parameters
    ----------
    handler
        Turns a message into its :class:`Reply`; must not raise (every message is
        answered).
    on_oversize
        Builds the rejection of a block larger than ``max_message_bytes``.
    max_message_bytes
        Largest message accepted.
    idle_timeout
        Seconds a connection may stay silent (between or inside messages) before we close it.
    """

    def __init__(
        self,
        handler: Handler,
        on_oversize: OversizeHandler,
        *,
        max_message_bytes: int,
        idle_timeout: float,
    ) -> None:
        self.handler = handler
        self.on_oversize = on_oversize
        self.max_message_bytes = max_message_bytes
        self.idle_timeout = idle_timeout
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(
        self, host: str = "0.0.0.0", port: int = 0, *, sock: socket.socket | None = None
    ) -> tuple[str, int]:
        """Listen (on ``sock`` if given, else ``host:port``); the bound address.

        Raises
        ------
        OSError
            The address cannot be bound: left to propagate, a feed that silently does not
            listen is worse than a server that does not start.
        """
        if sock is not None:
            self._server = await asyncio.start_server(self._accept, sock=sock)
        else:
            self._server = await asyncio.start_server(self._accept, host, port, reuse_address=True)
        bound = self._server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    async def close(self) -> None:
        """Stop listening and close every open connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def serve_until(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then close (connections included)."""
        try:
            await stop.wait()
        finally:
            await self.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._connection(reader, writer)
        finally:
            self._connections.discard(task)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer_addr = writer.get_extra_info("peername")
        peer = f"{peer_addr[0]}:{peer_addr[1]}" if peer_addr else "?"
        raw = writer.get_extra_info("socket")
        if raw is not None:
            # Each ACK is one small write the sender waits for: Nagle would only delay it.
            with contextlib.suppress(OSError):
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        decoder = MllpDecoder(self.max_message_bytes)
        reported = 0
        try:
            while True:
                try:
                    data = await asyncio.wait_for(reader.read(_READ_SIZE), self.idle_timeout)
                except TimeoutError:
                    log.info("HL7 %s: idle for %.0f s, closing", peer, self.idle_timeout)
                    return
                if not data:
                    if decoder.in_block:
                        log.warning(
                            "HL7 %s: disconnected in the middle of a message; nothing applied",
                            peer,
                        )
                    return
                events = decoder.feed(data)
                if decoder.discarded > reported:
                    log.warning(
                        "HL7 %s: %d bytes outside MLLP blocks discarded",
                        peer,
                        decoder.discarded - reported,
                    )
                    reported = decoder.discarded
                for event in events:
                    if isinstance(event, Oversized):
                        reply = self.on_oversize(event.head)
                        log.warning(
                            "HL7 %s: message %s larger than %d bytes: %s; closing",
                            peer,
                            reply.control_id or "(no MSH-10)",
                            self.max_message_bytes,
                            reply.outcome,
                        )
                        writer.write(frame(reply.message))
                        await writer.drain()
                        return
                    reply = await self.handler(event.data)
                    log.log(
                        logging.INFO if reply.accepted else logging.WARNING,
                        "HL7 %s: message %s: %s",
                        peer,
                        reply.control_id or "(no MSH-10)",
                        reply.outcome,
                    )
                    writer.write(frame(reply.message))
                    await writer.drain()
        except (ConnectionError, OSError) as exc:
            log.info("HL7 %s: connection lost: %s", peer, exc)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError, asyncio.CancelledError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
