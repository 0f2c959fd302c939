"""DIMSE message exchange over an association (PS3.7 8, 9.3; PS3.8 9.3.5).

:class:`Association` turns the PDV stream of :class:`~dicomvault.net.dul.UpperLayer` into
DIMSE messages: command fragments (message control header bit 0 set) are reassembled
(they are small), data set fragments are handed to the current :class:`DataSink` as they
arrive. It answers C-ECHO, routes C-STORE to the :class:`ServiceRegistry` and keeps track
of message IDs both ways. Sending — fragmenting outgoing messages into PDUs of the peer's
maximum length (PS3.8 9.3.5, Annex E) — is its base class's,
:class:`~dicomvault.net.outgoing.MessageSender`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

from dicomvault import metrics
from dicomvault.net import commands as c
from dicomvault.net.errors import AssociationAborted, CommandDecodeError, DecodeError
from dicomvault.net.handlers import (
    SUCCESS,
    AssociationInfo,
    DimseStatus,
    Matches,
    NormalizedHandler,
    NRequest,
    NResponse,
    QueryHandler,
    QueryRequest,
    Response,
    ServiceRegistry,
    StoreRequest,
)
from dicomvault.net.messages import (
    COMMAND_NAMES,
    MAX_IDENTIFIER_LENGTH,
    NORMALIZED_FIELDS,
    REQUESTED_UID_FIELDS,
    BufferSink,
    DiscardSink,
    Incoming,
    ResponseQueue,
    StreamItem,
    truncate_comment,
)
from dicomvault.net.outgoing import MCH_COMMAND, MCH_LAST, MessageSender
from dicomvault.net.responses import PendingCommands, response_command

__all__ = [
    "MAX_IDENTIFIER_LENGTH",
    "MCH_COMMAND",
    "MCH_LAST",
    "Association",
    "StreamItem",
    "truncate_comment",
]

#: A command set larger than this is refused: real ones are a few hundred bytes.
MAX_COMMAND_LENGTH = 1 << 16

#: Status values used by the engine itself (PS3.7 C, PS3.4 B.2.3).
STATUS_UNRECOGNIZED_OPERATION = 0x0211
STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122
#: Refused: Not Authorized (PS3.7 C.5): the peer may not use the service (access control).
STATUS_NOT_AUTHORIZED = 0x0124
STATUS_PROCESSING_FAILURE = 0x0110
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_STORE_HANDLER_FAILED = 0xC211
STATUS_IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
STATUS_CANCEL = 0xFE00
#: "Unable to process" of a failing Query/Retrieve handler, as pynetdicom reports it
#: (PS3.4 C.4.1.1.4 Cxxx).
QUERY_HANDLER_FAILED = {c.C_FIND_RQ: 0xC311, c.C_MOVE_RQ: 0xC511, c.C_GET_RQ: 0xC411}
_QUERY_FIELDS = frozenset(QUERY_HANDLER_FAILED)


def sop_class_of(command: c.CommandSet) -> str:
    """The Affected or, for N-GET/N-SET/N-ACTION/N-DELETE, Requested SOP Class UID."""
    if int(command[c.CommandField]) in REQUESTED_UID_FIELDS:
        return str(command.get(c.RequestedSOPClassUID, ""))
    return str(command.get(c.AffectedSOPClassUID, ""))


class Association(MessageSender):
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
        self._incoming: Incoming | None = None  # the request whose data set streams in
        self._inflight: dict[int, Incoming] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: Query and N-service handlers running (``_tasks`` holds the C-STORE status
        #: waits): a server shutting down cancels those still running after the
        #: association is gone.
        self.handler_tasks: set[asyncio.Task[None]] = set()
        self._responses: dict[int, asyncio.Future[c.CommandSet]] = {}
        self._streams: dict[int, ResponseQueue] = {}
        #: Seconds to wait for a response to a request we send.
        self.timeout = 30.0
        self._next_message_id = 0
        self._release_pending = False
        self.started = time.monotonic()
        self.messages = 0

    # -- message IDs ---------------------------------------------------------------------

    def next_message_id(self) -> int:
        """A Message ID (0000,0110) not used by any outstanding request (PS3.7 9.1.1.1)."""
        for _ in range(0x10000):
            self._next_message_id = (self._next_message_id % 0xFFFF) + 1
            if (
                self._next_message_id not in self._responses
                and self._next_message_id not in self._streams
            ):
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

    def refused(self, abstract_syntax: str, command: str) -> None:
        """A request was answered 0x0124 Refused: Not Authorized (PS3.7 C.5). Nothing
        here; the acceptor tells its observer (the audit trail)."""

    def _sink_failed(self, incoming: Incoming, exc: Exception) -> None:
        self.log.warning("assoc=%s handler failed: %r", self.info.id, exc)
        if incoming.sink is not None:
            try:
                incoming.sink.abort()
            except Exception:  # pragma: no cover - double fault in a handler
                self.log.exception("assoc=%s handler abort failed", self.info.id)
        incoming.sink = DiscardSink(
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
        incoming = Incoming(command, ctx, COMMAND_NAMES.get(field, f"0x{field:04X}"))
        if field == c.C_CANCEL_RQ:
            target = int(command.get(c.MessageIDBeingRespondedTo, 0))
            self.log.info("assoc=%s C-CANCEL for message %d", self.info.id, target)
            cancelled = self._inflight.get(target)
            if cancelled is not None and cancelled.request is not None:
                cancelled.request.cancelled.set()
            return
        self._inflight[incoming.message_id] = incoming
        with_data = c.has_data_set(command)
        access = self.info.access
        if access is not None and not access(context.abstract_syntax, False):
            # Access control (PS3.7 C.5): the context was accepted for another role only.
            self.log.warning(
                "assoc=%s %s from %s on %s refused: not authorized",
                self.info.id,
                incoming.name,
                self.info.calling_ae_title,
                context.abstract_syntax,
            )
            status = DimseStatus(
                STATUS_NOT_AUTHORIZED, f"{self.info.calling_ae_title} may not use this service"
            )
            self.refused(context.abstract_syntax, incoming.name)
        elif field == c.C_ECHO_RQ and self.registry.verification:
            status = SUCCESS
        elif field == c.C_STORE_RQ:
            status = self._begin_store(incoming, context.transfer_syntax, with_data)
        elif field in NORMALIZED_FIELDS and (
            nhandler := self.registry.normalized_handler(field, sop_class_of(command))
        ):
            incoming.nhandler = nhandler
            if not with_data:
                self._start_normalized(incoming, nhandler, None)
                return
            incoming.sink = BufferSink()
            status = SUCCESS
        elif field in _QUERY_FIELDS and (
            handler := self.registry.query_handler(field, str(command.get(c.AffectedSOPClassUID)))
        ):
            status = SUCCESS
            if with_data:
                incoming.handler = handler
                incoming.sink = BufferSink()
            else:
                status = DimseStatus(
                    STATUS_IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "request without an Identifier"
                )
        else:
            status = DimseStatus(STATUS_UNRECOGNIZED_OPERATION)
        if with_data:
            if incoming.sink is None:
                incoming.sink = DiscardSink(status)
            self._incoming = incoming
        else:
            self._respond(incoming, status)

    def _begin_store(self, incoming: Incoming, syntax: str, with_data: bool) -> DimseStatus:
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

    def _data_set_received(self, incoming: Incoming) -> None:
        sink = incoming.sink
        assert sink is not None
        if incoming.message_id < 0:  # the data set of a response: hand it to its stream
            if incoming.queue is not None and isinstance(sink, BufferSink):
                incoming.queue.put_nowait((incoming.command, bytes(sink.data)))
            return
        if incoming.handler is not None and isinstance(sink, BufferSink):
            self._start_query(incoming, incoming.handler, bytes(sink.data))
            return
        if incoming.nhandler is not None and isinstance(sink, BufferSink):
            self._start_normalized(incoming, incoming.nhandler, bytes(sink.data))
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

    async def _await_status(self, incoming: Incoming, pending: Any) -> None:
        try:
            status = await pending
        except Exception as exc:
            self.log.exception("assoc=%s store handler failed", self.info.id)
            status = DimseStatus(STATUS_STORE_HANDLER_FAILED, truncate_comment(str(exc)))
        self._respond(incoming, status)

    def _start_query(self, incoming: Incoming, handler: QueryHandler, identifier: bytes) -> None:
        command = incoming.command
        context = self.info.contexts[incoming.context_id]
        destination = command.get(c.MoveDestination)
        request = QueryRequest(
            association=self.info,
            context_id=incoming.context_id,
            message_id=incoming.message_id,
            command_field=int(command[c.CommandField]),
            sop_class_uid=str(command.get(c.AffectedSOPClassUID, "")),
            transfer_syntax_uid=context.transfer_syntax,
            identifier=identifier,
            priority=int(command.get(c.Priority, 0)),
            move_destination=str(destination) if destination is not None else None,
            channel=self,
        )
        incoming.request = request
        self._start_handler(self._run_query(incoming, handler, request))

    def _start_normalized(
        self, incoming: Incoming, handler: NormalizedHandler, data_set: bytes | None
    ) -> None:
        command = incoming.command
        field = int(command[c.CommandField])
        type_id = command.get(c.EventTypeID if field == c.N_EVENT_REPORT_RQ else c.ActionTypeID)
        identifiers = command.get(c.AttributeIdentifierList)
        request = NRequest(
            association=self.info,
            context_id=incoming.context_id,
            message_id=incoming.message_id,
            command_field=field,
            sop_class_uid=sop_class_of(command),
            sop_instance_uid=incoming.subject,
            transfer_syntax_uid=self.info.contexts[incoming.context_id].transfer_syntax,
            data_set=data_set,
            type_id=int(type_id) if isinstance(type_id, int) else None,
            attribute_identifiers=identifiers if isinstance(identifiers, bytes) else None,
            channel=self,
        )
        self._start_handler(self._run_normalized(incoming, handler, request))

    def _start_handler(self, run: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(run)
        self.handler_tasks.add(task)
        task.add_done_callback(self.handler_tasks.discard)

    async def _run_normalized(
        self, incoming: Incoming, handler: NormalizedHandler, request: NRequest
    ) -> None:
        """Answer a DIMSE-N request with what its handler returns (PS3.7 10.1.x.1.2)."""
        try:
            response = await handler.handle(request)
        except Exception as exc:
            self.log.exception("assoc=%s %s handler failed", self.info.id, incoming.name)
            response = NResponse(DimseStatus(STATUS_PROCESSING_FAILURE, truncate_comment(str(exc))))
        command: c.CommandSet = {
            c.CommandField: request.command_field | c.RESPONSE_BIT,
            c.MessageIDBeingRespondedTo: incoming.message_id,
            c.CommandDataSetType: c.NO_DATA_SET if response.data_set is None else 0x0000,
            c.Status: response.status.status,
        }
        if request.sop_class_uid:
            command[c.AffectedSOPClassUID] = request.sop_class_uid
        instance = response.sop_instance_uid or request.sop_instance_uid
        if instance:
            command[c.AffectedSOPInstanceUID] = instance
        if request.type_id is not None:
            # Echoed in the response (PS3.7 Table 10.3-2, 10.3-8).
            element = (
                c.EventTypeID if request.command_field == c.N_EVENT_REPORT_RQ else c.ActionTypeID
            )
            command[element] = request.type_id
        if response.status.error_comment:
            command[c.ErrorComment] = truncate_comment(response.status.error_comment)
        if response.error_id is not None:
            command[c.ErrorID] = response.error_id
        if not incoming.subject and instance:
            incoming.subject = instance
        self._respond(incoming, response.status, command, response.data_set)

    async def _run_query(
        self, incoming: Incoming, handler: QueryHandler, request: QueryRequest
    ) -> None:
        """Send each response the handler yields (PS3.4 C.4.1.2-C.4.3.2); a C-CANCEL
        ends a C-FIND here with 0xFE00 (PS3.4 C.4.1.2.3), C-MOVE/C-GET handlers answer
        it themselves with their sub-operation counts."""
        field = request.command_field
        final: Response | None = None
        commands = PendingCommands()
        responses = handler.handle(request)
        try:
            async for response in responses:
                if self.fsm.state not in ("Sta6", "Sta8"):
                    break
                if field == c.C_FIND_RQ and request.cancelled.is_set():
                    final = Response(DimseStatus(STATUS_CANCEL))
                    break
                if isinstance(response, Matches):
                    self._send_matches(incoming, response, commands)
                    await self.drain()
                elif response.pending:
                    self.send_response(incoming, response, commands)
                    await self.drain()
                else:
                    final = response
                    break
            else:
                if field == c.C_FIND_RQ and request.cancelled.is_set():
                    final = Response(DimseStatus(STATUS_CANCEL))
        except Exception as exc:
            self.log.exception("assoc=%s %s handler failed", self.info.id, incoming.name)
            final = Response(DimseStatus(QUERY_HANDLER_FAILED[field], truncate_comment(str(exc))))
        finally:
            aclose = getattr(responses, "aclose", None)
            if aclose is not None:
                await aclose()
        self.send_response(incoming, final or Response(SUCCESS))

    def send_response(
        self,
        incoming: Incoming,
        response: Response,
        commands: PendingCommands | None = None,
    ) -> None:
        """Send a C-FIND/C-MOVE/C-GET response (PS3.7 9.3.2.2, 9.3.3.2, 9.3.4.2); a
        final one completes the request.

        *commands* caches the encoded command sets of one request's pending responses
        (:mod:`dicomvault.net.responses`). Pending responses that fit in one PDU each are
        batched into one transport write
        (:meth:`~dicomvault.net.outgoing.MessageSender._queue_pending`).
        """
        if commands is not None and response.pending:
            raw = commands.encoded(incoming, response)
            self._send_pending(incoming.context_id, raw, response.identifier)
            return
        command = response_command(incoming, response)
        if not response.pending:
            self._respond(incoming, response.status, command, response.identifier)
        elif self.fsm.state in ("Sta6", "Sta8"):
            self.send_message(incoming.context_id, command, response.identifier)

    def _send_matches(
        self, incoming: Incoming, matches: Matches, commands: PendingCommands
    ) -> None:
        """Pending C-FIND responses, one per Identifier, their command set encoded once
        (a match's response has no counts: the same bytes for every Identifier)."""
        if not matches.identifiers:
            return
        command = commands.encoded(incoming, Response(matches.status, matches.identifiers[0]))
        for identifier in matches.identifiers:
            self._send_pending(incoming.context_id, command, identifier)

    def _respond(
        self,
        incoming: Incoming,
        status: DimseStatus,
        response: c.CommandSet | None = None,
        data_set: bytes | None = None,
    ) -> None:
        """Send the response to a request (PS3.7 9.3.1.2 C-STORE-RSP, 9.3.5.2 C-ECHO-RSP)."""
        self._inflight.pop(incoming.message_id, None)
        command = incoming.command
        field = int(command[c.CommandField])
        if response is None:
            response = {
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
        if status.status not in (0xFF00, 0xFF01):  # the final response of the request
            metrics.DIMSE_MESSAGES.inc(incoming.name, f"0x{status.status:04X}")
        if self.fsm.state in ("Sta6", "Sta8"):
            self.send_message(incoming.context_id, response, data_set)
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
        queue = self._streams.get(message_id)
        if queue is not None:
            if c.has_data_set(command):
                incoming = self._incoming = Incoming(command, ctx, "response")
                incoming.sink = BufferSink()
                incoming.message_id = -1
                incoming.queue = queue
            else:
                queue.put_nowait((command, None))
            return
        future = self._responses.pop(message_id, None)
        if c.has_data_set(command):
            self._incoming = Incoming(command, ctx, "response")
            self._incoming.sink = DiscardSink(SUCCESS)
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
        for queue in self._streams.values():
            queue.put_nowait(AssociationAborted(reason))
        for pending in self._inflight.values():
            if pending.request is not None:
                pending.request.cancelled.set()
        self.log.info("assoc=%s aborted: %s", self.info.id, reason)

    def transport_closed(self) -> None:
        if self._incoming is not None or self._responses or self._streams:
            self.abort_indication(self.abort_reason or "transport connection closed")

    def expect_responses(self, message_id: int) -> ResponseQueue:
        """Register interest in the (several) responses to ``message_id``; call
        :meth:`end_responses` after the final one."""
        queue = ResponseQueue()
        self._streams[message_id] = queue
        return queue

    def end_responses(self, message_id: int) -> None:
        """Stop routing responses to ``message_id``'s queue."""
        self._streams.pop(message_id, None)

    def expect_response(self, message_id: int) -> asyncio.Future[c.CommandSet]:
        """Register interest in the response to ``message_id``."""
        future: asyncio.Future[c.CommandSet] = self._loop.create_future()
        self._responses[message_id] = future
        return future
