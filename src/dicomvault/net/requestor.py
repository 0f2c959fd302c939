"""The association requestor: ``async with associate(...) as assoc`` (PS3.8 7.1, 9.2).

A :class:`RequestorAssociation` sends C-ECHO (PS3.7 9.1.5) and C-STORE (PS3.7 9.1.1)
requests. Files are streamed from disk in PDUs of the peer's maximum length, as they are
stored: the data set is never loaded whole unless the peer accepted only a fall-back
transfer syntax and the file must be re-encoded (uncompressed syntaxes only).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import dicomvault
from dicomvault.net import commands as c
from dicomvault.net.association import MCH_LAST, Association
from dicomvault.net.errors import AssociationAborted, AssociationRejected, NoPresentationContext
from dicomvault.net.fileio import FileInfo, read_file_info
from dicomvault.net.handlers import AcceptedContext, DimseStatus, ServiceRegistry
from dicomvault.net.items import (
    ACCEPTANCE,
    PresentationContextRQ,
    RoleSelection,
    UserIdentity,
    UserInformation,
)
from dicomvault.net.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ, encode_pdata_header
from dicomvault.net.uids import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    UNCOMPRESSED_TRANSFER_SYNTAXES,
    VERIFICATION,
)

#: A context to propose: an abstract syntax (with Explicit and Implicit VR Little Endian),
#: an (abstract syntax, transfer syntaxes) pair, or a full item.
ContextSpec = str | tuple[str, Sequence[str]] | PresentationContextRQ

_READ_BLOCK = 1 << 20
_FALLBACK_SYNTAXES = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)


def build_contexts(specs: Sequence[ContextSpec]) -> list[PresentationContextRQ]:
    """Number proposed contexts 1, 3, 5 ... (PS3.8 9.3.2.2: odd IDs, at most 128).

    Raises
    ------
    ValueError
        More than 128 contexts.
    """
    if len(specs) > 128:
        raise ValueError(f"{len(specs)} presentation contexts proposed (at most 128)")
    out: list[PresentationContextRQ] = []
    for index, spec in enumerate(specs):
        ctx_id = 2 * index + 1
        if isinstance(spec, PresentationContextRQ):
            out.append(
                PresentationContextRQ(ctx_id, spec.abstract_syntax, list(spec.transfer_syntaxes))
            )
        elif isinstance(spec, str):
            out.append(PresentationContextRQ(ctx_id, spec, list(_FALLBACK_SYNTAXES)))
        else:
            out.append(PresentationContextRQ(ctx_id, spec[0], list(spec[1])))
    return out


def contexts_for_files(infos: Sequence[FileInfo]) -> list[tuple[str, list[str]]]:
    """Contexts to send ``infos`` as stored (PS3.4 B.2.1).

    One context per (SOP class, transfer syntax) with that syntax alone, so that the
    acceptor can pick the file's own encoding whatever its preferences, plus one
    fall-back context per SOP class proposing Explicit and Implicit VR Little Endian.
    """
    own: dict[tuple[str, str], None] = {}
    classes: dict[str, None] = {}
    for info in infos:
        own[(info.sop_class_uid, info.transfer_syntax_uid)] = None
        classes[info.sop_class_uid] = None
    out = [(sop, [syntax]) for sop, syntax in own]
    out += [(sop, list(_FALLBACK_SYNTAXES)) for sop in classes]
    return out


def status_of(response: c.CommandSet) -> DimseStatus:
    """The status (0000,0900) and Error Comment (0000,0902) of a response."""
    comment = response.get(c.ErrorComment)
    return DimseStatus(int(response.get(c.Status, 0xC000)), str(comment) if comment else None)


class RequestorAssociation(Association):
    """The requestor side of an association; create it with :func:`associate`."""

    def __init__(
        self,
        rq: A_ASSOCIATE_RQ,
        *,
        max_pdu: int,
        timeout: float,
        registry: ServiceRegistry | None,
        logger: logging.Logger | None,
    ) -> None:
        super().__init__(
            requestor=True,
            max_pdu=max_pdu,
            artim_timeout=timeout,
            registry=registry,
            logger=logger,
        )
        self.rq = rq
        self.timeout = timeout
        self.info.calling_ae_title = rq.calling_ae_title
        self.info.called_ae_title = rq.called_ae_title
        self.established: asyncio.Future[None] = self._loop.create_future()
        self.released: asyncio.Future[None] = self._loop.create_future()
        for future in (self.established, self.released):
            future.add_done_callback(_consume)
        self.ac: A_ASSOCIATE_AC | None = None

    def build_associate_rq(self) -> A_ASSOCIATE_RQ:
        return self.rq

    def associate_confirmation(self, pdu: A_ASSOCIATE_AC | A_ASSOCIATE_RJ) -> None:
        if self.established.done():
            return
        if isinstance(pdu, A_ASSOCIATE_RJ):
            self.established.set_exception(AssociationRejected(pdu.result, pdu.source, pdu.reason))
            return
        self.ac = pdu
        self.info.peer_max_pdu = pdu.user_information.max_length or 0
        self.info.peer_implementation_class_uid = pdu.user_information.implementation_class_uid
        self.info.peer_implementation_version_name = (
            pdu.user_information.implementation_version_name
        )
        proposed = {ctx.id: ctx for ctx in self.rq.presentation_contexts}
        for result in pdu.presentation_contexts:
            ctx = proposed.get(result.id)
            if ctx is not None and result.result == ACCEPTANCE:
                self.info.contexts[result.id] = AcceptedContext(
                    result.id, ctx.abstract_syntax, result.transfer_syntax
                )
        self.established.set_result(None)

    def release_confirmation(self) -> None:
        if not self.released.done():
            self.released.set_result(None)

    def abort_indication(self, reason: str) -> None:
        super().abort_indication(reason)
        for future in (self.established, self.released):
            if not future.done():
                future.set_exception(AssociationAborted(reason))

    def transport_closed(self) -> None:
        super().transport_closed()
        reason = self.abort_reason or "transport connection closed"
        for future in (self.established, self.released):
            if not future.done():
                future.set_exception(AssociationAborted(reason))

    # -- the user's API ------------------------------------------------------------------

    @property
    def accepted_contexts(self) -> list[AcceptedContext]:
        """The presentation contexts the acceptor accepted."""
        return list(self.info.contexts.values())

    def find_context(
        self, sop_class_uid: str, transfer_syntax_uid: str | None = None
    ) -> AcceptedContext | None:
        """An accepted context for ``sop_class_uid`` (and ``transfer_syntax_uid`` if given)."""
        for ctx in self.info.contexts.values():
            if ctx.abstract_syntax == sop_class_uid and (
                transfer_syntax_uid is None or ctx.transfer_syntax == transfer_syntax_uid
            ):
                return ctx
        return None

    def _check_open(self) -> None:
        if self.fsm.state != "Sta6":
            raise AssociationAborted(
                self.abort_reason or f"association not established ({self.fsm.state})"
            )

    async def _wait(
        self, future: asyncio.Future[c.CommandSet], timeout: float | None
    ) -> DimseStatus:
        try:
            response = await asyncio.wait_for(future, timeout or self.timeout)
        except TimeoutError:
            self.abort("DIMSE timeout")
            raise
        return status_of(response)

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

    def _store_command(self, message_id: int, sop_class: str, sop_instance: str) -> c.CommandSet:
        return {
            c.AffectedSOPClassUID: sop_class,
            c.CommandField: c.C_STORE_RQ,
            c.MessageID: message_id,
            c.Priority: c.PRIORITY_MEDIUM,
            c.CommandDataSetType: 0x0000,
            c.AffectedSOPInstanceUID: sop_instance,
        }

    async def send_data_set(
        self,
        data_set: bytes | memoryview,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
        timeout: float | None = None,
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
        self.send_message(
            ctx.id, self._store_command(message_id, sop_class_uid, sop_instance_uid), data_set
        )
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
        self._check_open()
        message_id = self.next_message_id()
        future = self.expect_response(message_id)
        self.send_message(
            ctx.id, self._store_command(message_id, info.sop_class_uid, info.sop_instance_uid)
        )
        limit = self.max_send_value
        remaining = info.data_length
        with open(info.path, "rb") as fh:
            fh.seek(info.data_offset)
            if remaining == 0:
                self.send_parts([encode_pdata_header(ctx.id, MCH_LAST, 0)])
            while remaining > 0:
                block = fh.read(min(max(limit, _READ_BLOCK), remaining))
                if not block:
                    self.abort("file shrank while being sent")
                    raise AssociationAborted(f"{info.path} shrank while being sent")
                view = memoryview(block)
                for pos in range(0, len(view), limit):
                    piece = view[pos : pos + limit]
                    remaining -= len(piece)
                    self._check_open()
                    self.send_parts(
                        [
                            encode_pdata_header(
                                ctx.id, MCH_LAST if remaining == 0 else 0, len(piece)
                            ),
                            piece,
                        ]
                    )
                await self.drain()
        return await self._wait(future, timeout)

    async def _send_converted(self, info: FileInfo, timeout: float | None) -> DimseStatus:
        target = next(
            (
                ctx
                for ctx in self.info.contexts.values()
                if ctx.abstract_syntax == info.sop_class_uid
                and ctx.transfer_syntax in _FALLBACK_SYNTAXES
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

    async def release(self) -> None:
        """A-RELEASE (PS3.8 7.2): wait for the acceptor's A-RELEASE-RP.

        Does nothing when the association is already gone (aborted or closed).
        """
        if self.fsm.state == "Sta6":
            self.request_release()
        elif self.fsm.state in ("Sta1", "Sta13"):
            return
        try:
            await asyncio.wait_for(asyncio.shield(self.released), self.timeout)
        except TimeoutError:
            self.abort("A-RELEASE timeout")
            raise


def _consume(future: asyncio.Future[None]) -> None:
    """Mark a failure as seen: nobody awaits ``released`` after a rejection."""
    if not future.cancelled():
        future.exception()


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


@asynccontextmanager
async def associate(
    host: str,
    port: int,
    *,
    called_ae: str = "ANY-SCP",
    calling_ae: str = "DICOMVAULT",
    contexts: Sequence[ContextSpec] = (VERIFICATION,),
    max_pdu: int = 262144,
    timeout: float = 30.0,
    user_identity: UserIdentity | None = None,
    roles: Sequence[RoleSelection] = (),
    registry: ServiceRegistry | None = None,
    logger: logging.Logger | None = None,
) -> AsyncIterator[RequestorAssociation]:
    """Open an association, yield it, release it on exit (abort it on an exception).

    Parameters
    ----------
    host, port
        The acceptor.
    called_ae, calling_ae
        AE titles (PS3.8 7.1.1.4/5).
    contexts
        Presentation contexts to propose (see :data:`ContextSpec`).
    max_pdu
        The Maximum Length we advertise for what the peer sends us.
    timeout
        Seconds for connecting, negotiating, each DIMSE response and the release.
    user_identity, roles
        Optional User Identity (PS3.7 D.3.3.7) and SCP/SCU Role Selection (D.3.3.4).

    Raises
    ------
    AssociationRejected
        The acceptor answered A-ASSOCIATE-RJ.
    AssociationAborted
        The acceptor aborted or closed the connection.
    OSError, TimeoutError
        The connection failed or the acceptor did not answer in time.

    Examples
    --------
    >>> async with associate("pacs", 104, called_ae="PACS", contexts=[VERIFICATION]) as a:
    ...     await a.echo()
    """
    rq = A_ASSOCIATE_RQ(
        called_ae_title=called_ae,
        calling_ae_title=calling_ae,
        presentation_contexts=build_contexts(contexts),
        user_information=UserInformation(
            max_length=max_pdu,
            implementation_class_uid=dicomvault.IMPLEMENTATION_CLASS_UID,
            implementation_version_name=dicomvault.IMPLEMENTATION_VERSION_NAME,
            roles=list(roles),
            user_identity=user_identity,
        ),
    )
    loop = asyncio.get_running_loop()
    _, assoc = await asyncio.wait_for(
        loop.create_connection(
            lambda: RequestorAssociation(
                rq, max_pdu=max_pdu, timeout=timeout, registry=registry, logger=logger
            ),
            host,
            port,
        ),
        timeout,
    )
    try:
        await asyncio.wait_for(asyncio.shield(assoc.established), timeout)
    except BaseException:
        assoc.abort("association negotiation failed")
        if assoc.transport is not None:
            assoc.transport.close()
        raise
    try:
        yield assoc
    except BaseException:
        assoc.abort("aborted after an error in the requestor")
        if assoc.transport is not None:
            assoc.transport.close()
        raise
    else:
        try:
            await assoc.release()
        finally:
            if assoc.transport is not None:
                assoc.transport.close()
