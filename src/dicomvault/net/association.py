"""DIMSE message exchange over an association (PS3.7 8, 9.3; PS3.8 9.3.5).

:class:`Association` turns the PDV stream of :class:`~dicomvault.net.dul.UpperLayer` into
DIMSE messages: command fragments (message control header bit 0 set) are reassembled
(they are small), data set fragments are handed to the current :class:`DataSink` as they
arrive. It answers C-ECHO, routes C-STORE to the :class:`ServiceRegistry`, keeps track of
message IDs both ways, and fragments outgoing messages into PDUs of the peer's maximum
length (PS3.8 9.3.5, Annex E).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from dicomvault.net import commands as c
from dicomvault.net.dul import UpperLayer
from dicomvault.net.errors import AssociationAborted, CommandDecodeError, DecodeError
from dicomvault.net.handlers import (
    SUCCESS,
    AssociationInfo,
    DataSink,
    DimseStatus,
    ServiceRegistry,
    StoreRequest,
)
from dicomvault.net.pdu import encode_pdata_header

#: Message control header bits (PS3.8 E.2): bit 0 command, bit 1 last fragment.
MCH_COMMAND = 0x01
MCH_LAST = 0x02
#: A command set larger than this is refused: real ones are a few hundred bytes.
MAX_COMMAND_LENGTH = 1 << 16
#: Outgoing PDVs when the peer sets no maximum (PS3.8 D.1: 0 means unlimited).
DEFAULT_SEND_PDU = 1 << 20

#: Status values used by the engine itself (PS3.7 C, PS3.4 B.2.3).
STATUS_UNRECOGNIZED_OPERATION = 0x0211
STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122
STATUS_PROCESSING_FAILURE = 0x0110
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_STORE_HANDLER_FAILED = 0xC211

_COMMAND_NAMES = {
    c.C_STORE_RQ: "C-STORE",
    c.C_ECHO_RQ: "C-ECHO",
    c.C_FIND_RQ: "C-FIND",
    c.C_MOVE_RQ: "C-MOVE",
    c.C_GET_RQ: "C-GET",
    c.C_CANCEL_RQ: "C-CANCEL",
}


def truncate_comment(text: str) -> str:
    """Error Comment (0000,0902) is LO in the default repertoire: ASCII, at most 64
    characters (PS3.7 C.4.2.1.4, PS3.5 6.1.2)."""
    text = " ".join(text.encode("ascii", "replace").decode("ascii").split())
    return text if len(text) <= 64 else text[:61] + "..."


class _DiscardSink:
    """Swallows a data set nobody will store, then answers a fixed status."""

    def __init__(self, status: DimseStatus) -> None:
        self.status = status

    def write(self, chunk: memoryview) -> None:
        pass

    def finish(self) -> DimseStatus:
        return self.status

    def abort(self) -> None:
        pass


class _Incoming:
    """A request whose response is not yet sent."""

    __slots__ = ("command", "context_id", "message_id", "name", "sink", "started", "subject")

    def __init__(self, command: c.CommandSet, context_id: int, name: str) -> None:
        self.command = command
        self.context_id = context_id
        self.message_id = int(command.get(c.MessageID, 0))
        self.name = name
        self.sink: DataSink | None = None
        self.started = time.perf_counter()
        self.subject = str(command.get(c.AffectedSOPInstanceUID, ""))


class Association(UpperLayer):
    """One association, either side, exchanging DIMSE messages (PS3.7 7, 8).

    Parameters
    ----------
    requestor, max_pdu, artim_timeout
        See :class:`~dicomvault.net.dul.UpperLayer`.
    registry
        The services answered on this association (requests from the peer).
    logger
        Where association and message lines go; each carries ``assoc=<id>``.
    assoc_id
        A short identifier put in every log line.
    """

    def __init__(
        self,
        *,
        requestor: bool,
        max_pdu: int,
        artim_timeout: float,
        registry: ServiceRegistry | None = None,
        logger: logging.Logger | None = None,
        assoc_id: str = "",
    ) -> None:
        super().__init__(requestor=requestor, max_pdu=max_pdu, artim_timeout=artim_timeout)
        self.registry = registry or ServiceRegistry()
        self.log = logger or logging.getLogger("dicomvault.net")
        self.info = AssociationInfo(assoc_id, "", 0, "", "")
        self._log_messages = self.log.isEnabledFor(logging.INFO)
        self._cmd = bytearray()
        self._incoming: _Incoming | None = None  # the request whose data set streams in
        self._inflight: dict[int, _Incoming] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._responses: dict[int, asyncio.Future[c.CommandSet]] = {}
        self._next_message_id = 0
        self._release_pending = False
        self.started = time.monotonic()
        self.messages = 0

    # -- message IDs ---------------------------------------------------------------------

    def next_message_id(self) -> int:
        """A Message ID (0000,0110) not used by any outstanding request (PS3.7 9.1.1.1)."""
        for _ in range(0x10000):
            self._next_message_id = (self._next_message_id % 0xFFFF) + 1
            if self._next_message_id not in self._responses:
                return self._next_message_id
        raise RuntimeError("no free message ID")  # pragma: no cover - 65535 outstanding

    @property
    def busy(self) -> bool:
        """Whether a request is being received or its response is not yet sent."""
        return bool(self._inflight) or self._incoming is not None or bool(self._cmd)

    # -- receiving -----------------------------------------------------------------------

    def pdv_fragment(self, ctx: int, mch: int, value: memoryview, end: bool) -> None:
        incoming = self._incoming
        if mch & MCH_COMMAND:
            if incoming is not None:
                raise DecodeError("command fragment while a data set was expected", 5)
            self._cmd += value
            if len(self._cmd) > MAX_COMMAND_LENGTH:
                raise CommandDecodeError("command set longer than 64 KiB")
            if end and mch & MCH_LAST:
                raw = bytes(self._cmd)
                self._cmd.clear()
                self._command_received(ctx, raw)
            return
        if incoming is None or ctx != incoming.context_id:
            raise DecodeError("data set fragment without a command on its context", 5)
        sink = incoming.sink
        assert sink is not None
        try:
            sink.write(value)
        except Exception as exc:  # the handler's failure becomes a status, not an abort
            self._sink_failed(incoming, exc)
        if end and mch & MCH_LAST:
            self._incoming = None
            self._data_set_received(incoming)

    def _sink_failed(self, incoming: _Incoming, exc: Exception) -> None:
        self.log.warning("assoc=%s handler failed: %r", self.info.id, exc)
        if incoming.sink is not None:
            try:
                incoming.sink.abort()
            except Exception:  # pragma: no cover - double fault in a handler
                self.log.exception("assoc=%s handler abort failed", self.info.id)
        incoming.sink = _DiscardSink(
            DimseStatus(STATUS_STORE_HANDLER_FAILED, truncate_comment(f"{exc}"))
        )

    def _command_received(self, ctx: int, raw: bytes) -> None:
        context = self.info.contexts.get(ctx)
        if context is None:
            raise DecodeError(f"PDV on presentation context {ctx}, which is not accepted", 6)
        command = c.decode_command(raw)
        field = int(command[c.CommandField])
        if field & c.RESPONSE_BIT:
            self._response_received(ctx, command)
            return
        incoming = _Incoming(command, ctx, _COMMAND_NAMES.get(field, f"0x{field:04X}"))
        if field == c.C_CANCEL_RQ:
            target = int(command.get(c.MessageIDBeingRespondedTo, 0))
            self.log.info("assoc=%s C-CANCEL for message %d", self.info.id, target)
            return
        self._inflight[incoming.message_id] = incoming
        with_data = c.has_data_set(command)
        if field == c.C_ECHO_RQ and self.registry.verification:
            status = SUCCESS
        elif field == c.C_STORE_RQ:
            status = self._begin_store(incoming, context.transfer_syntax, with_data)
        else:
            status = DimseStatus(STATUS_UNRECOGNIZED_OPERATION)
        if with_data:
            if incoming.sink is None:
                incoming.sink = _DiscardSink(status)
            self._incoming = incoming
        else:
            self._respond(incoming, status)

    def _begin_store(self, incoming: _Incoming, syntax: str, with_data: bool) -> DimseStatus:
        command = incoming.command
        sop_class = str(command.get(c.AffectedSOPClassUID, ""))
        if not with_data:
            return DimseStatus(STATUS_CANNOT_UNDERSTAND, "C-STORE-RQ without a data set")
        handler = self.registry.store_handler(sop_class)
        if handler is None:
            return DimseStatus(STATUS_SOP_CLASS_NOT_SUPPORTED)
        origin = command.get(c.MoveOriginatorMessageID)
        request = StoreRequest(
            association=self.info,
            context_id=incoming.context_id,
            message_id=incoming.message_id,
            sop_class_uid=sop_class,
            sop_instance_uid=incoming.subject,
            transfer_syntax_uid=syntax,
            priority=int(command.get(c.Priority, 0)),
            move_originator_ae_title=(
                str(command[c.MoveOriginatorApplicationEntityTitle])
                if c.MoveOriginatorApplicationEntityTitle in command
                else None
            ),
            move_originator_message_id=int(origin) if origin is not None else None,
        )
        try:
            incoming.sink = handler.begin_store(request)
        except Exception as exc:
            self._sink_failed(incoming, exc)
        return SUCCESS

    def _data_set_received(self, incoming: _Incoming) -> None:
        sink = incoming.sink
        assert sink is not None
        if incoming.message_id < 0:  # the data set of a response: nothing to answer
            return
        try:
            result = sink.finish()
        except Exception as exc:
            self.log.exception("assoc=%s store handler failed", self.info.id)
            result = DimseStatus(STATUS_STORE_HANDLER_FAILED, truncate_comment(str(exc)))
        if isinstance(result, tuple):
            self._respond(incoming, result)
            return
        task = self._loop.create_task(self._await_status(incoming, result))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _await_status(self, incoming: _Incoming, pending: Any) -> None:
        try:
            status = await pending
        except Exception as exc:
            self.log.exception("assoc=%s store handler failed", self.info.id)
            status = DimseStatus(STATUS_STORE_HANDLER_FAILED, truncate_comment(str(exc)))
        self._respond(incoming, status)

    def _respond(self, incoming: _Incoming, status: DimseStatus) -> None:
        """Send the response to a request (PS3.7 9.3.1.2 C-STORE-RSP, 9.3.5.2 C-ECHO-RSP)."""
        self._inflight.pop(incoming.message_id, None)
        command = incoming.command
        field = int(command[c.CommandField])
        response: c.CommandSet = {
            c.CommandField: field | c.RESPONSE_BIT,
            c.MessageIDBeingRespondedTo: incoming.message_id,
            c.CommandDataSetType: c.NO_DATA_SET,
            c.Status: status.status,
        }
        sop_class = command.get(c.AffectedSOPClassUID)
        if sop_class is not None:
            response[c.AffectedSOPClassUID] = sop_class
        if field == c.C_STORE_RQ:
            response[c.AffectedSOPInstanceUID] = incoming.subject
        if status.error_comment:
            response[c.ErrorComment] = truncate_comment(status.error_comment)
        self.messages += 1
        if self.fsm.state in ("Sta6", "Sta8"):
            self.send_message(incoming.context_id, response)
        if self._log_messages:
            self.log.info(
                "assoc=%s %s msg=%d%s status=0x%04X%s %.2f ms",
                self.info.id,
                incoming.name,
                incoming.message_id,
                f" {incoming.subject}" if incoming.subject else "",
                status.status,
                f" ({status.error_comment})" if status.error_comment else "",
                (time.perf_counter() - incoming.started) * 1000,
            )
        self.response_sent()

    def response_sent(self) -> None:
        """A response went out; answer a pending A-RELEASE once nothing is in flight."""
        if self._release_pending and not self.busy:
            self._release_pending = False
            self.respond_release()

    def release_indication(self) -> None:
        if self.busy:
            self._release_pending = True
        else:
            self.respond_release()

    def _response_received(self, ctx: int, command: c.CommandSet) -> None:
        message_id = int(command.get(c.MessageIDBeingRespondedTo, -1))
        future = self._responses.pop(message_id, None)
        if c.has_data_set(command):
            # Responses with data sets (C-FIND etc.) are not used by this engine yet.
            self._incoming = _Incoming(command, ctx, "response")
            self._incoming.sink = _DiscardSink(SUCCESS)
            self._incoming.message_id = -1
        if future is None:
            self.log.warning("assoc=%s response to unknown message %d", self.info.id, message_id)
            return
        if not future.done():
            future.set_result(command)

    def abort_indication(self, reason: str) -> None:
        incoming = self._incoming
        self._incoming = None
        if incoming is not None and incoming.sink is not None:
            try:
                incoming.sink.abort()
            except Exception:  # pragma: no cover - double fault in a handler
                self.log.exception("assoc=%s handler abort failed", self.info.id)
        for future in self._responses.values():
            if not future.done():
                future.set_exception(AssociationAborted(reason))
        self._responses.clear()
        self.log.info("assoc=%s aborted: %s", self.info.id, reason)

    def transport_closed(self) -> None:
        if self._incoming is not None or self._responses:
            self.abort_indication(self.abort_reason or "transport connection closed")

    # -- sending -------------------------------------------------------------------------

    @property
    def max_send_value(self) -> int:
        """Largest PDV value we may put in one P-DATA-TF PDU (peer maximum minus 6)."""
        peer = self.info.peer_max_pdu
        return (peer if peer else DEFAULT_SEND_PDU) - 6

    def send_message(
        self, ctx: int, command: c.CommandSet, data_set: bytes | memoryview | None = None
    ) -> None:
        """Encode and send a DIMSE message, fragmenting to the peer's maximum (PS3.7 8.1)."""
        raw = c.encode_command(command)
        self._send_fragments(ctx, memoryview(raw), MCH_COMMAND)
        if data_set is not None:
            self._send_fragments(ctx, memoryview(data_set), 0)

    def _send_fragments(self, ctx: int, value: memoryview, mch: int) -> None:
        limit = self.max_send_value
        total = len(value)
        if total <= limit:
            # One write per small PDU: a single segment on the wire.
            self.send(encode_pdata_header(ctx, mch | MCH_LAST, total) + value)
            return
        pos = 0
        while pos < total:
            piece = value[pos : pos + limit]
            pos += len(piece)
            flags = mch | (MCH_LAST if pos >= total else 0)
            self.send_parts([encode_pdata_header(ctx, flags, len(piece)), piece])

    def expect_response(self, message_id: int) -> asyncio.Future[c.CommandSet]:
        """Register interest in the response to ``message_id``."""
        future: asyncio.Future[c.CommandSet] = self._loop.create_future()
        self._responses[message_id] = future
        return future
