"""The association requestor: ``async with associate(...) as assoc`` (PS3.8 7.1, 9.2).

A :class:`RequestorAssociation` invokes C-ECHO, C-STORE, C-FIND, C-MOVE and C-GET
(PS3.7 9.1; the operations are in :mod:`dicomvault.net.service_user`). Files are
streamed from disk in PDUs of the peer's maximum length, as they are stored.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as _ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import dicomvault
from dicomvault.net.errors import AssociationAborted, AssociationRejected
from dicomvault.net.fileio import FileInfo
from dicomvault.net.handlers import AcceptedContext, ServiceRegistry
from dicomvault.net.items import (
    ACCEPTANCE,
    PresentationContextRQ,
    RoleSelection,
    UserIdentity,
    UserInformation,
)
from dicomvault.net.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from dicomvault.net.service_user import ServiceUser
from dicomvault.net.uids import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
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


class RequestorAssociation(ServiceUser):
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
        roles = {role.sop_class_uid: role for role in pdu.user_information.roles}
        for accepted in self.info.contexts.values():
            role = roles.get(accepted.abstract_syntax)
            if role is not None:
                accepted.scu_role, accepted.scp_role = role.scu_role, role.scp_role
        self.info.extended_negotiation = dict(pdu.user_information.extended_negotiation)
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
    extended_negotiation: dict[str, bytes] | None = None,
    registry: ServiceRegistry | None = None,
    logger: logging.Logger | None = None,
    ssl: _ssl.SSLContext | None = None,
    server_hostname: str | None = None,
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
    extended_negotiation
        SOP Class Extended Negotiation (PS3.7 D.3.3.5): SOP class UID -> application
        information, e.g. ``{STUDY_ROOT_FIND: b"\\x01"}`` for relational queries.
    registry
        Services we answer on this association: the store handler receiving the
        C-STORE sub-operations of a C-GET (PS3.4 C.4.3).
    ssl, server_hostname
        Associate over TLS (PS3.15 B.12) with this client context; the acceptor's
        certificate must name ``server_hostname`` (default ``host``) when the context
        checks host names. The handshake is bounded by ``timeout``.

    Raises
    ------
    AssociationRejected
        The acceptor answered A-ASSOCIATE-RJ.
    AssociationAborted
        The acceptor aborted or closed the connection.
    OSError, TimeoutError
        The connection failed or the acceptor did not answer in time; a failed TLS
        handshake is an :class:`ssl.SSLError` (an OSError).

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
            extended_negotiation=dict(extended_negotiation or {}),
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
            ssl=ssl,
            server_hostname=(server_hostname or host) if ssl is not None else None,
            ssl_handshake_timeout=timeout if ssl is not None else None,
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
