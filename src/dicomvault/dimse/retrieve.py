"""C-STORE sub-operations of a C-MOVE or C-GET (PS3.4 C.4.2.2, C.4.3.2), shared by
:mod:`dicomvault.dimse.move` and :mod:`dicomvault.dimse.get`.

Each instance is sent as stored, streamed from its blob in PDUs of the peer's maximum
length, when the receiver accepted its SOP class in its stored transfer syntax; else it
is transcoded (:mod:`dicomvault.dicom.transcode`, in a worker thread) to a syntax the
receiver accepted for the class. A pending response (0xFF00) with the Number of
Remaining/Completed/Failed/Warning Sub-operations follows each C-MOVE sub-operation, and
a C-GET sub-operation at most every ``dicom.get_pending_interval`` seconds (optional,
PS3.4 C.4.3.3.1); the final response carries the Failed SOP Instance UID List
(0008,0058) when any failed (PS3.4 C.4.2.1.4.1, C.4.3.1.3.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import BinaryIO

from dicomvault.archive import Archive
from dicomvault.dicom.deidentify import Deidentified
from dicomvault.dicom.part10 import read_file_meta
from dicomvault.dicom.transcode import TranscodeError, transcode
from dicomvault.dimse.find import decode_request
from dicomvault.dimse.status import (
    CANCEL,
    PENDING,
    PROCESSING_FAILURE,
    SUB_OPERATIONS_WARNING,
    UNABLE_TO_PERFORM_SUB_OPERATIONS,
    status_for_query_error,
)
from dicomvault.model.errors import DicomVaultError
from dicomvault.model.records import StoredInstance
from dicomvault.net.commands import C_GET_RQ
from dicomvault.net.errors import NetError, NoPresentationContext
from dicomvault.net.fileio import NotDicomFile, parse_file_meta
from dicomvault.net.handlers import SUCCESS, DimseStatus, QueryRequest, Response
from dicomvault.net.service_user import ServiceUser
from dicomvault.net.uids import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
)

log = logging.getLogger("dicomvault.dimse")

_HEAD = 1 << 16
#: Read first to find the data set: the file meta of nearly every file fits.
_META_HEAD = 4096


def failed_uid_list(uids: Sequence[str], transfer_syntax_uid: str) -> bytes:
    """An Identifier holding only Failed SOP Instance UID List (0008,0058), UI, encoded
    in ``transfer_syntax_uid`` (PS3.4 C.4.2.1.4.1; PS3.5 7.1). Cut to 64 KiB of value."""
    value = "\\".join(uids).encode("ascii")
    if len(value) > 0xFFFE:
        value = value[: value.rfind(b"\\", 0, 0xFFFE)]
    if len(value) & 1:
        value += b"\x00"
    if transfer_syntax_uid == IMPLICIT_VR_LITTLE_ENDIAN:
        return struct.pack("<HHI", 0x0008, 0x0058, len(value)) + value
    order = ">" if transfer_syntax_uid == EXPLICIT_VR_BIG_ENDIAN else "<"
    encoded = struct.pack(f"{order}HH2sH", 0x0008, 0x0058, b"UI", len(value)) + value
    if transfer_syntax_uid == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:  # PS3.5 A.5: raw deflate
        compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
        encoded = compressor.compress(encoded) + compressor.flush()
    return encoded


async def select_instances(
    archive: Archive, request: QueryRequest
) -> list[StoredInstance] | Response:
    """The instances a C-MOVE / C-GET Identifier selects (PS3.4 C.4.2.2.1, C.4.3.2.1),
    or the final response when there is nothing to send: the error status of a bad
    Identifier, or Success with zero sub-operations."""
    try:
        query = decode_request(request)
        instances = await asyncio.get_running_loop().run_in_executor(
            None, archive.retrieve_instances, query
        )
    except Exception as exc:
        return Response(status_for_query_error(exc))
    if not instances:
        return Response(SUCCESS, None, None, 0, 0, 0)
    return instances


def open_stored(archive: Archive, instance: StoredInstance) -> tuple[BinaryIO, int, str]:
    """Open an instance's blob positioned at its data set: (file, data set length,
    stored transfer syntax)."""
    fh = archive.store.open(instance.blob_name, buffered=False)
    try:
        fd = fh.fileno()
        size = os.fstat(fd).st_size
        head = os.pread(fd, _META_HEAD, 0)
        try:
            meta, offset = parse_file_meta(head)
            if offset + 8 > len(head) and size > len(head):  # group 2 may go on past it
                raise NotDicomFile("file meta information is longer than read")
        except NotDicomFile:
            if size <= len(head):
                raise
            meta, offset = parse_file_meta(os.pread(fd, _HEAD, 0))
        fh.seek(offset)
    except BaseException:
        fh.close()
        raise
    return fh, size - offset, meta.get(0x0010, instance.transfer_syntax_uid)


class SubOperations:
    """Counts of one C-MOVE/C-GET (PS3.7 9.3.3.2, 9.3.4.2)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.remaining = total
        self.last_error: str | None = None
        self.completed = 0
        self.failed = 0
        self.warning = 0
        self.failed_uids: list[str] = []

    def response(self, status: DimseStatus, syntax: str, *, final: bool) -> Response:
        identifier = (
            failed_uid_list(self.failed_uids, syntax) if final and self.failed_uids else None
        )
        return Response(
            status,
            identifier,
            None if final and status.status in (0x0000, 0xB000) else self.remaining,
            self.completed,
            self.failed,
            self.warning,
        )

    def final(self, syntax: str, comment: str | None = None) -> Response:
        """The final response (PS3.4 C.4.2.1.5): Success, 0xB000, or 0xA702 when every
        sub-operation failed. Failures always carry an Error Comment."""
        if comment is None and self.failed:
            comment = f"{self.failed} of {self.total} sub-operations failed"
            if self.last_error:
                comment += f": {self.last_error}"
        if self.failed and not (self.completed or self.warning):
            status = DimseStatus(UNABLE_TO_PERFORM_SUB_OPERATIONS, comment)
        elif self.failed or self.warning:
            status = DimseStatus(SUB_OPERATIONS_WARNING, comment)
        else:
            status = SUCCESS
        return self.response(status, syntax, final=True)

    def fail_rest(self, instances: Sequence[StoredInstance], start: int) -> None:
        for inst in instances[start:]:
            self.failed += 1
            self.failed_uids.append(inst.sop_instance_uid)
        self.remaining = 0


#: Makes the de-identified copy of a stored instance (``archive.anonymize.served_copies``).
Deidentifier = Callable[[StoredInstance], Deidentified]


def _accepted_syntaxes(sender: ServiceUser, sop_class_uid: str) -> list[str]:
    """The transfer syntaxes the receiver accepted ``sop_class_uid`` in (for transcoding).

    Raises
    ------
    NoPresentationContext
        It accepted the SOP class in none.
    """
    targets = [
        ctx.transfer_syntax
        for ctx in sender.accepted_contexts
        if ctx.abstract_syntax == sop_class_uid
        and sender.find_context(ctx.abstract_syntax, ctx.transfer_syntax) is not None
    ]
    if not targets:
        raise NoPresentationContext(f"{sop_class_uid} not accepted by the receiver")
    return targets


async def _transcoded(data: bytes, syntax: str, targets: list[str]) -> tuple[str, bytes]:
    """``data`` in the first of ``targets`` it can be encoded in, off the event loop."""
    try:
        return await asyncio.to_thread(transcode, data, syntax, targets)
    except TranscodeError as exc:
        raise NoPresentationContext(str(exc)) from exc


async def send_deidentified(
    sender: ServiceUser,
    instance: StoredInstance,
    copy: Deidentifier,
    move_originator: tuple[str, int] | None,
) -> DimseStatus:
    """One C-STORE sub-operation with the de-identified copy of ``instance`` (PS3.15
    Annex E): its own, new SOP Instance UID; transcoded when the receiver needs it.

    Raises
    ------
    NoPresentationContext
        The receiver accepted the SOP class in no syntax we can produce.
    """
    try:
        made = await asyncio.to_thread(copy, instance)
    except DicomVaultError as exc:  # burned-in annotation refused, unreadable: this one fails
        return DimseStatus(PROCESSING_FAILURE, str(exc)[:64])
    offset = read_file_meta(made.data[:_HEAD]).dataset_offset
    data, syntax = memoryview(made.data)[offset:], made.transfer_syntax_uid
    if sender.find_context(made.sop_class_uid, syntax) is None:
        targets = _accepted_syntaxes(sender, made.sop_class_uid)
        syntax, encoded = await _transcoded(bytes(data), syntax, targets)
        data = memoryview(encoded)
    return await sender.send_data_set(
        data, made.sop_class_uid, made.sop_instance_uid, syntax, move_originator=move_originator
    )


#: An instance's blob opened at its data set (:func:`open_stored`), or why it could not be.
Opened = tuple[BinaryIO, int, str] | Exception


async def send_instance(
    archive: Archive,
    sender: ServiceUser,
    instance: StoredInstance,
    move_originator: tuple[str, int] | None,
    *,
    opened: Opened | None = None,
    while_waiting: Callable[[], object] | None = None,
) -> DimseStatus:
    """One C-STORE sub-operation: as stored when possible, else transcoded.

    ``opened`` is the instance's blob when the caller opened it ahead;
    ``while_waiting`` runs while the receiver takes the data set (see
    :meth:`ServiceUser.store_stream`).

    Raises
    ------
    NoPresentationContext
        The receiver accepted the SOP class in no syntax we can produce.
    """
    if opened is None:
        opened = open_stored(archive, instance)
    if isinstance(opened, Exception):
        raise opened
    fh, length, syntax = opened
    with fh:
        if sender.find_context(instance.sop_class_uid, syntax) is not None:
            return await sender.store_stream(
                fh,
                length,
                instance.sop_class_uid,
                instance.sop_instance_uid,
                syntax,
                move_originator=move_originator,
                while_waiting=while_waiting,
            )
        targets = _accepted_syntaxes(sender, instance.sop_class_uid)
        data = fh.read(length)
    target, encoded = await _transcoded(data, syntax, targets)
    return await sender.send_data_set(
        encoded,
        instance.sop_class_uid,
        instance.sop_instance_uid,
        target,
        move_originator=move_originator,
    )


async def run_sub_operations(
    archive: Archive,
    sender: ServiceUser,
    instances: Sequence[StoredInstance],
    request: QueryRequest,
    *,
    move_originator: tuple[str, int] | None = None,
    deidentify: Deidentifier | None = None,
) -> AsyncIterator[Response]:
    """Send ``instances`` over ``sender`` (de-identified copies with ``deidentify``);
    yield pending responses (see the module docstring) and the final response (PS3.4
    C.4.2.2, C.4.3.2). C-CANCEL ends with 0xFE00 (PS3.4 C.4.2.3.1); a lost association fails what
    remains."""
    ops = SubOperations(len(instances))
    ahead = _Ahead(archive, instances)
    responses = _sub_operations(
        archive, sender, instances, request, ops, ahead, move_originator, deidentify
    )
    try:
        async with contextlib.aclosing(responses):
            async for response in responses:
                yield response
    finally:
        ahead.close()


class _Ahead:
    """The next instance's blob, opened while the receiver takes the current one: the
    open and the file meta's parsing leave the time between a C-STORE response and the
    next C-STORE request (~60 µs of its ~150 µs)."""

    def __init__(self, archive: Archive, instances: Sequence[StoredInstance]) -> None:
        self.archive = archive
        self.instances = instances
        self.opened: dict[int, Opened] = {}

    def opener(self, index: int) -> Callable[[], object] | None:
        """What opens instance ``index`` (None: there is none)."""
        if index >= len(self.instances):
            return None

        def open_next() -> None:
            try:
                self.opened[index] = open_stored(self.archive, self.instances[index])
            except Exception as exc:  # raised in its own turn, as if opened then
                self.opened[index] = exc

        return open_next

    def take(self, index: int) -> Opened | None:
        return self.opened.pop(index, None)

    def close(self) -> None:
        for opened in self.opened.values():
            if not isinstance(opened, Exception):
                opened[0].close()
        self.opened.clear()


async def _sub_operations(
    archive: Archive,
    sender: ServiceUser,
    instances: Sequence[StoredInstance],
    request: QueryRequest,
    ops: SubOperations,
    ahead: _Ahead,
    move_originator: tuple[str, int] | None,
    deidentify: Deidentifier | None,
) -> AsyncGenerator[Response, None]:
    syntax = request.transfer_syntax_uid
    # A C-GET's pending responses at most every `interval` seconds: each one costs the
    # requester a message to decode between two C-STOREs, and it counts the C-STOREs it
    # receives anyway (dcm4chee sends none for C-GET by default). A C-MOVE's requester
    # sees nothing else of the retrieve: one per sub-operation.
    get = request.command_field == C_GET_RQ
    interval = archive.settings.dicom.get_pending_interval if get else 0.0
    clock = asyncio.get_running_loop().time
    last_pending = clock()
    for index, instance in enumerate(instances):
        if request.cancelled.is_set():
            yield ops.response(DimseStatus(CANCEL), syntax, final=True)
            return
        try:
            if deidentify is None:
                status = await send_instance(
                    archive,
                    sender,
                    instance,
                    move_originator,
                    opened=ahead.take(index),
                    while_waiting=ahead.opener(index + 1),
                )
            else:
                status = await send_deidentified(sender, instance, deidentify, move_originator)
        except NoPresentationContext as exc:
            status = DimseStatus(0xA900, str(exc))
        except (NetError, OSError, TimeoutError) as exc:
            log.warning(
                "assoc=%s sub-operation %s failed: %s; failing the %d remaining",
                request.association.id,
                instance.sop_instance_uid,
                exc or type(exc).__name__,
                len(instances) - index,
            )
            ops.fail_rest(instances, index)
            yield ops.final(syntax, f"receiver lost: {exc or type(exc).__name__}")
            return
        ops.remaining -= 1
        category = status.category
        if category == "success":
            ops.completed += 1
        elif category == "warning":
            ops.warning += 1
        else:
            ops.failed += 1
            ops.failed_uids.append(instance.sop_instance_uid)
            ops.last_error = status.error_comment or f"status 0x{status.status:04X}"
            log.info(
                "assoc=%s sub-operation %s failed: 0x%04X %s",
                request.association.id,
                instance.sop_instance_uid,
                status.status,
                status.error_comment or "",
            )
        now = clock()
        if ops.remaining and now - last_pending >= interval:
            last_pending = now
            yield ops.response(DimseStatus(PENDING), syntax, final=False)
    yield ops.final(syntax)
