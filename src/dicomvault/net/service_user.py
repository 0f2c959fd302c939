"""DIMSE-C operations we invoke on an association (PS3.7 9.1, 9.3): C-ECHO, C-STORE,
C-FIND, C-MOVE, C-GET, C-CANCEL.

:class:`ServiceUser` is the base of both sides: a requestor invokes every operation, an
acceptor invokes C-STORE sub-operations of a C-GET on the association it accepted
(PS3.4 C.4.3; only on contexts where SCP/SCU Role Selection gave the requestor the SCP
role). C-STORE streams a stored file from disk in PDUs of the peer's maximum length: the
data set is never loaded whole unless it has to be re-encoded.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, NamedTuple

from dicomvault.net import commands as c
from dicomvault.net.association import Association
from dicomvault.net.errors import AssociationAborted, NoPresentationContext
from dicomvault.net.fileio import FileInfo, read_file_info
from dicomvault.net.handlers import AcceptedContext, DimseStatus, Response
from dicomvault.net.messages import ResponseQueue, time_out
from dicomvault.net.outgoing import MCH_LAST
from dicomvault.net.pdu import encode_pdata_header
from dicomvault.net.sendfile import send_file_pdus
from dicomvault.net.uids import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    UNCOMPRESSED_TRANSFER_SYNTAXES,
    VERIFICATION,
)

_READ_BLOCK = 1 << 20
FALLBACK_SYNTAXES = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)


def status_of(response: c.CommandSet) -> DimseStatus:
    """The status (0000,0900) and Error Comment (0000,0902) of a response."""
    comment = response.get(c.ErrorComment)
    return DimseStatus(int(response.get(c.Status, 0xC000)), str(comment) if comment else None)


def response_of(command: c.CommandSet, data_set: bytes | None) -> Response:
    """A received C-FIND/C-MOVE/C-GET response as a :class:`Response`."""

    def count(element: int) -> int | None:
        value = command.get(element)
        return int(value) if isinstance(value, int) else None

    return Response(
        status_of(command),
        data_set,
        count(c.NumberOfRemainingSuboperations),
        count(c.NumberOfCompletedSuboperations),
        count(c.NumberOfFailedSuboperations),
        count(c.NumberOfWarningSuboperations),
    )


class ResponseStream:
    """The responses to one C-FIND/C-MOVE/C-GET request, as an async iterator.

    Iteration ends after the final (non-pending) response. :meth:`cancel` sends
    C-CANCEL-RQ (PS3.7 9.3.2.3); the peer then ends with 0xFE00 (or completes first).
    """

    def __init__(
        self,
        assoc: ServiceUser,
        context_id: int,
        message_id: int,
        queue: ResponseQueue,
        timeout: float,
    ) -> None:
        self.assoc = assoc
        self.context_id = context_id
        self.message_id = message_id
        self._queue = queue
        self._timeout = timeout
        self._done = False

    def __aiter__(self) -> ResponseStream:
        return self

    async def __anext__(self) -> Response:
        if self._done:
            raise StopAsyncIteration
        try:
            item = await self._queue.get(self._timeout)
        except TimeoutError:
            self._finish()
            self.assoc.abort("DIMSE timeout")
            raise
        if isinstance(item, BaseException):
            self._finish()
            raise item
        response = response_of(*item)
        if not response.pending:
            self._finish()
        return response

    def _finish(self) -> None:
        self._done = True
        self.assoc.end_responses(self.message_id)

    def cancel(self) -> None:
        """Send C-CANCEL-RQ for this request (PS3.7 9.3.2.3, 9.3.3.3, 9.3.4.3)."""
        if not self._done and self.assoc.fsm.state == "Sta6":
            self.assoc.send_message(
                self.context_id,
                {
                    c.CommandField: c.C_CANCEL_RQ,
                    c.MessageIDBeingRespondedTo: self.message_id,
                    c.CommandDataSetType: c.NO_DATA_SET,
                },
            )


class ServiceUser(Association):
    """An association on which we invoke DIMSE-C operations (PS3.7 9.1)."""

    @property
    def accepted_contexts(self) -> list[AcceptedContext]:
        """The presentation contexts the acceptor accepted."""
        return list(self.info.contexts.values())

    def find_context(
        self, sop_class_uid: str, transfer_syntax_uid: str | None = None
    ) -> AcceptedContext | None:
        """An accepted context for ``sop_class_uid`` (and ``transfer_syntax_uid`` if given)
        on which we may invoke operations: as acceptor, only where the requestor took
        the SCP role (PS3.7 D.3.3.4)."""
        for ctx in self.info.contexts.values():
            if (
                ctx.abstract_syntax == sop_class_uid
                and (transfer_syntax_uid is None or ctx.transfer_syntax == transfer_syntax_uid)
                and (self.requestor or ctx.scp_role)
            ):
                return ctx
        return None

    def _check_open(self) -> None:
        if self.fsm.state not in ("Sta6", "Sta8") or (self.requestor and self.fsm.state != "Sta6"):
            raise AssociationAborted(
                self.abort_reason or f"association not established ({self.fsm.state})"
            )

    async def _wait(
        self, future: asyncio.Future[c.CommandSet], timeout: float | None
    ) -> DimseStatus:
        # A timer on the future itself, not wait_for or asyncio.timeout: the task wakes
        # as soon as the response is set (wait_for relays it through a callback and a
        # second future: two event loop turns), and a C-GET sub-operation's round trip
        # is short enough for asyncio.timeout's own bookkeeping to show.
        timer = self._loop.call_later(timeout or self.timeout, time_out, future)
        try:
            response = await future
        except TimeoutError:
            self.abort("DIMSE timeout")
            raise
        finally:
            timer.cancel()
        return status_of(response)

    # -- C-ECHO --------------------------------------------------------------------------

    async def echo(self, timeout: float | None = None) -> DimseStatus:
        """Send C-ECHO-RQ (PS3.7 9.1.5) and return the response status."""
        ctx = self.find_context(VERIFICATION)
        if ctx is None:
            raise NoPresentationContext("Verification was not accepted")
        self._check_open()
        message_id = self.next_message_id()
        future = self.expect_response(message_id)
        self.send_message(
            ctx.id,
            {
                c.AffectedSOPClassUID: VERIFICATION,
                c.CommandField: c.C_ECHO_RQ,
                c.MessageID: message_id,
                c.CommandDataSetType: c.NO_DATA_SET,
            },
        )
        return await self._wait(future, timeout)

    # -- C-STORE -------------------------------------------------------------------------

    def _store_command(
        self,
        message_id: int,
        sop_class: str,
        sop_instance: str,
        move_originator: tuple[str, int] | None = None,
    ) -> c.CommandSet:
        command: c.CommandSet = {
            c.AffectedSOPClassUID: sop_class,
            c.CommandField: c.C_STORE_RQ,
            c.MessageID: message_id,
            c.Priority: c.PRIORITY_MEDIUM,
            c.CommandDataSetType: 0x0000,
            c.AffectedSOPInstanceUID: sop_instance,
        }
        if move_originator is not None:
            command[c.MoveOriginatorApplicationEntityTitle] = move_originator[0]
            command[c.MoveOriginatorMessageID] = move_originator[1]
        return command

    async def send_data_set(
        self,
        data_set: bytes | memoryview,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
        timeout: float | None = None,
        *,
        move_originator: tuple[str, int] | None = None,
    ) -> DimseStatus:
        """C-STORE an encoded data set held in memory (PS3.7 9.1.1).

        Raises
        ------
        NoPresentationContext
            No accepted context for this SOP class and transfer syntax.
        """
        ctx = self.find_context(sop_class_uid, transfer_syntax_uid)
        if ctx is None:
            raise NoPresentationContext(f"no context for {sop_class_uid} in {transfer_syntax_uid}")
        self._check_open()
        message_id = self.next_message_id()
        future = self.expect_response(message_id)
        command = self._store_command(message_id, sop_class_uid, sop_instance_uid, move_originator)
        self.send_message(ctx.id, command, data_set)
        await self.drain()
        return await self._wait(future, timeout)

    async def send_file(
        self, path: str | os.PathLike[str], timeout: float | None = None
    ) -> DimseStatus:
        """C-STORE a DICOM file as it is stored, streamed from disk (PS3.7 9.1.1, PS3.10).

        The context is the one accepted for the file's SOP class and own transfer
        syntax; when only Explicit or Implicit VR Little Endian was accepted and the
        file is uncompressed, the data set is re-encoded in memory.

        Raises
        ------
        NoPresentationContext
            No usable accepted context.
        NotDicomFile
            The file is not DICOM.
        AssociationAborted
            The association ended before the response.
        """
        info = read_file_info(path)
        ctx = self.find_context(info.sop_class_uid, info.transfer_syntax_uid)
        if ctx is None:
            return await self._send_converted(info, timeout)
        with open(info.path, "rb") as fh:
            fh.seek(info.data_offset)
            return await self.store_stream(
                fh,
                info.data_length,
                info.sop_class_uid,
                info.sop_instance_uid,
                info.transfer_syntax_uid,
                timeout,
            )

    async def store_stream(
        self,
        fh: BinaryIO,
        length: int,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
        timeout: float | None = None,
        *,
        move_originator: tuple[str, int] | None = None,
        while_waiting: Callable[[], object] | None = None,
    ) -> DimseStatus:
        """C-STORE ``length`` data set bytes read from ``fh`` at its position, as they
        are (PS3.7 9.1.1): one P-DATA-TF PDU per peer maximum length, read in blocks.

        ``move_originator`` is the (AE title, Message ID) of the C-MOVE this store is a
        sub-operation of (PS3.7 9.1.1.1, 0000,1030-1031). ``while_waiting`` is called
        once the data set is sent, before the response comes: work the caller can do
        while the peer takes it (the next sub-operation's file opened).

        Raises
        ------
        NoPresentationContext
            No accepted context for the SOP class in that transfer syntax.
        AssociationAborted
            The association ended before the response, or the file shrank.
        """
        ctx = self.find_context(sop_class_uid, transfer_syntax_uid)
        if ctx is None:
            raise NoPresentationContext(f"no context for {sop_class_uid} in {transfer_syntax_uid}")
        self._check_open()
        message_id = self.next_message_id()
        future = self.expect_response(message_id)
        command = self._store_command(message_id, sop_class_uid, sop_instance_uid, move_originator)
        limit = self.max_send_value
        # The command leaves with the data set's first PDU, in one segment: the peer wakes
        # once for both.
        lead = self.message_lead(ctx.id, command)
        if await self._sendfile(fh, ctx.id, length, limit, lead, timeout or self.timeout):
            if while_waiting is not None:
                while_waiting()
            return await self._wait(future, timeout)
        self.send(lead)
        remaining = length
        if remaining == 0:
            self.send_parts([encode_pdata_header(ctx.id, MCH_LAST, 0)])
        while remaining > 0:
            block = fh.read(min(max(limit, _READ_BLOCK), remaining))
            if not block:
                self.abort("file shrank while being sent")
                raise AssociationAborted(f"{sop_instance_uid}: file shrank while being sent")
            view = memoryview(block)
            for pos in range(0, len(view), limit):
                piece = view[pos : pos + limit]
                remaining -= len(piece)
                self._check_open()
                self.send_parts(
                    [
                        encode_pdata_header(ctx.id, MCH_LAST if remaining == 0 else 0, len(piece)),
                        piece,
                    ]
                )
            await self.drain()
        if while_waiting is not None:
            while_waiting()
        return await self._wait(future, timeout)

    async def _sendfile(
        self, fh: BinaryIO, context_id: int, length: int, limit: int, lead: bytes, timeout: float
    ) -> bool:
        """``lead`` then the data set PDUs straight from ``fh``'s file, when the transport
        allows it (:mod:`dicomvault.net.sendfile`); False, nothing sent, when not. The
        file's position is left as it was."""
        try:
            file, offset = fh.fileno(), fh.tell()
        except (OSError, ValueError):  # not a file of its own (io.UnsupportedOperation)
            return False
        return await send_file_pdus(
            self, context_id, file, offset, length, limit, timeout, lead=lead
        )

    async def _send_converted(self, info: FileInfo, timeout: float | None) -> DimseStatus:
        target = next(
            (
                ctx
                for ctx in self.info.contexts.values()
                if ctx.abstract_syntax == info.sop_class_uid
                and ctx.transfer_syntax in FALLBACK_SYNTAXES
                and (self.requestor or ctx.scp_role)
            ),
            None,
        )
        if target is None or info.transfer_syntax_uid not in UNCOMPRESSED_TRANSFER_SYNTAXES:
            raise NoPresentationContext(
                f"no accepted context for {info.sop_class_uid} in {info.transfer_syntax_uid}"
            )
        data = await asyncio.to_thread(_reencode, info.path, target.transfer_syntax)
        return await self.send_data_set(
            data, info.sop_class_uid, info.sop_instance_uid, target.transfer_syntax, timeout
        )

    # -- C-FIND, C-MOVE, C-GET -----------------------------------------------------------

    def _query(
        self,
        field: int,
        sop_class_uid: str,
        identifier: bytes,
        *,
        priority: int,
        move_destination: str | None,
        timeout: float | None,
    ) -> ResponseStream:
        ctx = self.find_context(sop_class_uid)
        if ctx is None:
            raise NoPresentationContext(f"{sop_class_uid} was not accepted")
        self._check_open()
        message_id = self.next_message_id()
        queue = self.expect_responses(message_id)
        command: c.CommandSet = {
            c.AffectedSOPClassUID: sop_class_uid,
            c.CommandField: field,
            c.MessageID: message_id,
            c.Priority: priority,
            c.CommandDataSetType: 0x0000,
        }
        if move_destination is not None:
            command[c.MoveDestination] = move_destination
        self.send_message(ctx.id, command, identifier)
        return ResponseStream(self, ctx.id, message_id, queue, timeout or self.timeout)

    def find(
        self,
        sop_class_uid: str,
        identifier: bytes,
        *,
        priority: int = 0,
        timeout: float | None = None,
    ) -> ResponseStream:
        """C-FIND-RQ (PS3.7 9.1.2): iterate the returned stream for the responses.

        ``identifier`` is encoded in the transfer syntax of the accepted context
        (``find_context(sop_class_uid).transfer_syntax``).
        """
        return self._query(
            c.C_FIND_RQ,
            sop_class_uid,
            identifier,
            priority=priority,
            move_destination=None,
            timeout=timeout,
        )

    def move(
        self,
        sop_class_uid: str,
        identifier: bytes,
        destination: str,
        *,
        priority: int = 0,
        timeout: float | None = None,
    ) -> ResponseStream:
        """C-MOVE-RQ (PS3.7 9.1.4) to Move Destination ``destination``."""
        return self._query(
            c.C_MOVE_RQ,
            sop_class_uid,
            identifier,
            priority=priority,
            move_destination=destination,
            timeout=timeout,
        )

    def get(
        self,
        sop_class_uid: str,
        identifier: bytes,
        *,
        priority: int = 0,
        timeout: float | None = None,
    ) -> ResponseStream:
        """C-GET-RQ (PS3.7 9.1.3); the C-STOREs arrive on this association and go to the
        store handler of the ``registry`` given to :func:`associate`."""
        return self._query(
            c.C_GET_RQ,
            sop_class_uid,
            identifier,
            priority=priority,
            move_destination=None,
            timeout=timeout,
        )

    # -- DIMSE-N (PS3.7 10) ----------------------------------------------------------------

    async def n_request(
        self,
        command_field: int,
        sop_class_uid: str,
        sop_instance_uid: str | None,
        data_set: bytes | None = None,
        *,
        type_id: int | None = None,
        timeout: float | None = None,
    ) -> NResult:
        """Send a DIMSE-N request and wait for its response (PS3.7 10.1, 10.3).

        The SOP class and instance go in the Affected (N-EVENT-REPORT, N-CREATE) or
        Requested (N-GET, N-SET, N-ACTION, N-DELETE) UID elements; ``sop_instance_uid``
        ``None`` lets an N-CREATE SCP choose. ``type_id`` is the Event/Action Type ID.
        ``data_set`` is encoded in the transfer syntax of the context used
        (:meth:`normalized_context`). The roles are the service's: an N-EVENT-REPORT
        is invoked by the SCP, so the acceptor may send it on the requestor's context.

        Raises
        ------
        NoPresentationContext
            No context was accepted for ``sop_class_uid``.
        AssociationAborted, TimeoutError
            The association ended, or no response came in time (the association is
            then aborted).
        """
        ctx = self.normalized_context(sop_class_uid)
        if ctx is None:
            raise NoPresentationContext(f"{sop_class_uid} was not accepted")
        self._check_open()
        message_id = self.next_message_id()
        queue = self.expect_responses(message_id)
        requested = command_field in (c.N_GET_RQ, c.N_SET_RQ, c.N_ACTION_RQ, c.N_DELETE_RQ)
        command: c.CommandSet = {
            (c.RequestedSOPClassUID if requested else c.AffectedSOPClassUID): sop_class_uid,
            c.CommandField: command_field,
            c.MessageID: message_id,
            c.CommandDataSetType: c.NO_DATA_SET if data_set is None else 0x0000,
        }
        if sop_instance_uid:
            element = c.RequestedSOPInstanceUID if requested else c.AffectedSOPInstanceUID
            command[element] = sop_instance_uid
        if type_id is not None:
            element = c.EventTypeID if command_field == c.N_EVENT_REPORT_RQ else c.ActionTypeID
            command[element] = type_id
        try:
            self.send_message(ctx.id, command, data_set)
            try:
                item = await queue.get(timeout or self.timeout)
            except TimeoutError:
                self.abort("DIMSE timeout")
                raise
        finally:
            self.end_responses(message_id)
        if isinstance(item, BaseException):
            raise item
        response, answer = item
        instance = response.get(c.AffectedSOPInstanceUID)
        error_id = response.get(c.ErrorID)
        return NResult(
            status_of(response),
            answer,
            str(instance) if instance else (sop_instance_uid or ""),
            int(error_id) if isinstance(error_id, int) else None,
            ctx.transfer_syntax,
        )

    def normalized_context(self, sop_class_uid: str) -> AcceptedContext | None:
        """An accepted context for a DIMSE-N SOP class (either side may invoke on it:
        which operation belongs to which role is the service's business, PS3.4)."""
        for ctx in self.info.contexts.values():
            if ctx.abstract_syntax == sop_class_uid:
                return ctx
        return None


class NResult(NamedTuple):
    """A DIMSE-N response: status, data set (in ``transfer_syntax``), Affected SOP
    Instance UID (the one an N-CREATE SCP chose), Error ID."""

    status: DimseStatus
    data_set: bytes | None
    sop_instance_uid: str
    error_id: int | None
    transfer_syntax: str


def _reencode(path: Path, syntax: str) -> bytes:
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ds = dcmread(path, force=True)
    out = DicomBytesIO()
    out.is_little_endian = True
    out.is_implicit_VR = syntax == IMPLICIT_VR_LITTLE_ENDIAN
    write_dataset(out, ds)
    return out.getvalue()
