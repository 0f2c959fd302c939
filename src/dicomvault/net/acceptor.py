"""The association acceptor: negotiation policy (PS3.8 7.1, PS3.7 D.3.3) and the server.

:func:`negotiate` is pure: it turns an A-ASSOCIATE-RQ into an A-ASSOCIATE-AC or -RJ
according to an :class:`AcceptorPolicy` and the services registered. :func:`serve` runs
an asyncio server whose connections are :class:`AcceptorAssociation` instances.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import dicomvault
from dicomvault.net.handlers import (
    AcceptedContext,
    AccessPolicy,
    AssociationInfo,
    ContextFilter,
    RejectAssociation,
    ServiceRegistry,
    UserIdentityPolicy,
)
from dicomvault.net.items import (
    ABSTRACT_SYNTAX_NOT_SUPPORTED,
    ACCEPTANCE,
    NO_REASON,
    TRANSFER_SYNTAXES_NOT_SUPPORTED,
    USER_REJECTION,
    PresentationContextAC,
    RoleSelection,
    UserInformation,
)
from dicomvault.net.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from dicomvault.net.service_user import ServiceUser
from dicomvault.net.tls_listener import TlsListener
from dicomvault.net.uids import (
    APPLICATION_CONTEXT_NAME,
    DEFAULT_TRANSFER_SYNTAXES,
    IMPLICIT_VR_LITTLE_ENDIAN,
    uid_name,
)

# A-ASSOCIATE-RJ fields (PS3.8 Table 9-21).
REJECTED_PERMANENT = 1
REJECTED_TRANSIENT = 2
SOURCE_SERVICE_USER = 1
SOURCE_SERVICE_PROVIDER_ACSE = 2
SOURCE_SERVICE_PROVIDER_PRESENTATION = 3
REASON_NO_REASON_GIVEN = 1
REASON_APPLICATION_CONTEXT_NOT_SUPPORTED = 2
REASON_CALLING_AE_NOT_RECOGNIZED = 3
REASON_CALLED_AE_NOT_RECOGNIZED = 7
REASON_LOCAL_LIMIT_EXCEEDED = 2  # with source 3


class AssociationObserver(Protocol):
    """Hooks an application (the audit trail) may attach to an acceptor."""

    def rejected(self, info: AssociationInfo, result: int, source: int, reason: int) -> None:
        """An A-ASSOCIATE-RJ was sent (PS3.8 Table 9-21 result, source, reason)."""

    def closed(self, info: AssociationInfo) -> None:
        """An accepted association ended (released or aborted)."""

    def tls_failed(self, host: str, port: int, reason: str) -> None:
        """A TLS handshake on the DICOM-over-TLS port failed (PS3.15 B.12)."""

    def refused(self, info: AssociationInfo, abstract_syntax: str, command: str) -> None:
        """A request was answered 0x0124 Refused: Not Authorized (PS3.7 C.5)."""


def notify(log: logging.Logger, hook: Callable[..., None] | None, *args: object) -> None:
    """Call an observer hook; its failure is logged, never raised."""
    if hook is None:
        return
    try:
        hook(*args)
    except Exception:
        log.exception("association observer failed")


@dataclass(slots=True)
class AcceptorPolicy:
    """What an acceptor agrees to (PS3.8 7.1.1, PS3.7 D.3.3).

    Attributes
    ----------
    ae_title
        Our AE title; with ``check_called_ae`` a request to another title is rejected
        with A-ASSOCIATE-RJ 1/1/7.
    calling_ae_allowed
        Hook deciding on the Calling AE Title; ``None`` allows any. A refusal is
        A-ASSOCIATE-RJ 1/1/3.
    transfer_syntaxes
        Accepted transfer syntaxes; for each context the first one *the peer* proposed
        that is in this set is chosen, so nothing is transcoded on the way in.
    max_pdu
        The Maximum Length we advertise (PS3.8 D.1).
    max_associations
        Beyond this many simultaneous associations: A-ASSOCIATE-RJ 2/3/2.
    idle_timeout, artim_timeout
        Seconds of silence before an established association is aborted; ARTIM (9.1.5).
    user_identity
        Hook for User Identity Negotiation (PS3.7 D.3.3.7), see
        :data:`~dicomvault.net.handlers.UserIdentityPolicy`.
    extended_negotiation
        Hook answering SOP Class Extended Negotiation (PS3.7 D.3.3.5): given the SOP
        class and the proposed application information, the reply or ``None`` (no reply).
    access
        Access control, see :data:`~dicomvault.net.handlers.AccessPolicy`: consulted once
        per association before negotiation; it may reject the association (A-ASSOCIATE-RJ
        1/1/3) or refuse presentation contexts (result 1, user-rejection, PS3.8 Table
        9-18), and requests that still arrive for a refused service are answered 0x0124.
    """

    ae_title: str = "DICOMVAULT"
    check_called_ae: bool = True
    calling_ae_allowed: Callable[[str], bool] | None = None
    transfer_syntaxes: tuple[str, ...] = DEFAULT_TRANSFER_SYNTAXES
    max_pdu: int = 262144
    max_associations: int = 64
    idle_timeout: float = 60.0
    artim_timeout: float = 30.0
    user_identity: UserIdentityPolicy | None = None
    extended_negotiation: Callable[[str, bytes], bytes | None] | None = None
    access: AccessPolicy | None = None
    #: Told of rejected associations, ended ones and failed TLS handshakes (the audit
    #: trail, PS3.15 A.5.3.11 / A.5.3.4); a failing observer is logged, never fatal.
    observer: AssociationObserver | None = None
    _syntax_set: frozenset[str] = field(default=frozenset(), init=False, repr=False)

    def __post_init__(self) -> None:
        self._syntax_set = frozenset(self.transfer_syntaxes)


def negotiate(
    rq: A_ASSOCIATE_RQ,
    policy: AcceptorPolicy,
    registry: ServiceRegistry,
    info: AssociationInfo,
    *,
    active_associations: int = 0,
    access: ContextFilter | None = None,
    calling_ae_refused: bool = False,
) -> A_ASSOCIATE_AC | A_ASSOCIATE_RJ:
    """Decide on an association request (PS3.8 7.1.1, PS3.7 D.3.3).

    Fills ``info`` (AE titles, accepted contexts, peer maximum, user identity, extended
    negotiation) and returns the PDU to send. ``access`` and ``calling_ae_refused`` are
    what :attr:`AcceptorPolicy.access` decided: a refused calling AE is rejected 1/1/3
    (after the application context and called AE checks); contexts ``access`` refuses
    get result 1, user-rejection (PS3.8 Table 9-18). An association whose contexts are
    all refused is still accepted (PS3.8 7.1.1.13 leaves it to the requestor, which
    usually releases or aborts it).
    """
    info.access = access
    info.calling_ae_title = rq.calling_ae_title
    info.called_ae_title = rq.called_ae_title
    user = rq.user_information
    info.peer_max_pdu = user.max_length or 0
    info.peer_implementation_class_uid = user.implementation_class_uid
    info.peer_implementation_version_name = user.implementation_version_name
    info.user_identity = user.user_identity
    info.extended_negotiation = dict(user.extended_negotiation)
    if rq.application_context_name != APPLICATION_CONTEXT_NAME:
        return A_ASSOCIATE_RJ(
            REJECTED_PERMANENT, SOURCE_SERVICE_USER, REASON_APPLICATION_CONTEXT_NOT_SUPPORTED
        )
    if policy.check_called_ae and rq.called_ae_title != policy.ae_title:
        return A_ASSOCIATE_RJ(
            REJECTED_PERMANENT, SOURCE_SERVICE_USER, REASON_CALLED_AE_NOT_RECOGNIZED
        )
    if calling_ae_refused or (
        policy.calling_ae_allowed is not None and not policy.calling_ae_allowed(rq.calling_ae_title)
    ):
        return A_ASSOCIATE_RJ(
            REJECTED_PERMANENT, SOURCE_SERVICE_USER, REASON_CALLING_AE_NOT_RECOGNIZED
        )
    if active_associations >= policy.max_associations:
        return A_ASSOCIATE_RJ(
            REJECTED_TRANSIENT, SOURCE_SERVICE_PROVIDER_PRESENTATION, REASON_LOCAL_LIMIT_EXCEEDED
        )
    reply = UserInformation(
        max_length=policy.max_pdu,
        implementation_class_uid=dicomvault.IMPLEMENTATION_CLASS_UID,
        implementation_version_name=dicomvault.IMPLEMENTATION_VERSION_NAME,
    )
    if user.user_identity is not None and policy.user_identity is not None:
        verdict = policy.user_identity(user.user_identity, info)
        if verdict is False:
            return A_ASSOCIATE_RJ(REJECTED_PERMANENT, SOURCE_SERVICE_USER, REASON_NO_REASON_GIVEN)
        if user.user_identity.positive_response_requested:
            # PS3.7 D.3.3.7.2: the server response is empty for username (and passcode);
            # Kerberos, SAML and JWT carry what the policy returned.
            if user.user_identity.type in (1, 2):
                reply.user_identity_response = b""
            elif isinstance(verdict, bytes):
                reply.user_identity_response = verdict
    elif (
        user.user_identity is not None
        and user.user_identity.positive_response_requested
        and info.user_identity_response is not None
    ):
        # The access hook accepted the identity (PS3.7 D.3.3.7.2).
        reply.user_identity_response = info.user_identity_response
    if user.async_ops_window is not None:
        reply.async_ops_window = (1, 1)  # operations are performed one at a time
    roles = {role.sop_class_uid: role for role in user.roles}
    results: list[PresentationContextAC] = []
    seen: set[int] = set()
    for ctx in rq.presentation_contexts:
        fallback = ctx.transfer_syntaxes[0] if ctx.transfer_syntaxes else IMPLICIT_VR_LITTLE_ENDIAN
        if ctx.id in seen or ctx.id % 2 == 0:
            results.append(PresentationContextAC(ctx.id, NO_REASON, fallback))
            continue
        seen.add(ctx.id)
        role = roles.get(ctx.abstract_syntax)
        # A C-GET SCP takes any SOP class the requestor will store as SCP (PS3.4 C.4.3.1).
        scp_role = (
            role is not None
            and role.scp_role
            and (registry.get_role or ctx.abstract_syntax in registry.scu_of)
        )
        supported = registry.supports(ctx.abstract_syntax)
        if not supported and not scp_role:
            results.append(PresentationContextAC(ctx.id, ABSTRACT_SYNTAX_NOT_SUPPORTED, fallback))
            continue
        if access is not None:
            scp_role = scp_role and access(ctx.abstract_syntax, True)
            if not scp_role and not access(ctx.abstract_syntax, False):
                results.append(PresentationContextAC(ctx.id, USER_REJECTION, fallback))
                continue
        chosen = next((ts for ts in ctx.transfer_syntaxes if ts in policy._syntax_set), None)
        if chosen is None:
            results.append(PresentationContextAC(ctx.id, TRANSFER_SYNTAXES_NOT_SUPPORTED, fallback))
            continue
        results.append(PresentationContextAC(ctx.id, ACCEPTANCE, chosen))
        accepted = AcceptedContext(ctx.id, ctx.abstract_syntax, chosen)
        if role is not None:
            # PS3.7 D.3.3.4: the requestor keeps the SCU role it asks for where we are
            # SCP; it gets the SCP role (we send C-STOREs) when a C-GET SCP is registered.
            accepted.scu_role = (
                role.scu_role
                and supported
                and (access is None or access(ctx.abstract_syntax, False))
            )
            accepted.scp_role = scp_role
        info.contexts[ctx.id] = accepted
    for uid, role in roles.items():
        if any(a.abstract_syntax == uid for a in info.contexts.values()):
            reply.roles.append(
                RoleSelection(
                    uid,
                    role.scu_role
                    and registry.supports(uid)
                    and (access is None or access(uid, False)),
                    role.scp_role
                    and (registry.get_role or uid in registry.scu_of)
                    and (access is None or access(uid, True)),
                )
            )
    if policy.extended_negotiation is not None:
        for uid, app_info in user.extended_negotiation.items():
            answer = policy.extended_negotiation(uid, app_info)
            if answer is not None:
                reply.extended_negotiation[uid] = answer
    return A_ASSOCIATE_AC(
        rq.called_ae_title, rq.calling_ae_title, results, reply, APPLICATION_CONTEXT_NAME
    )


class ServerState:
    """Shared by the connections of one server: counts, settings, shutdown."""

    def __init__(
        self, policy: AcceptorPolicy, registry: ServiceRegistry, logger: logging.Logger
    ) -> None:
        self.policy = policy
        self.registry = registry
        self.log = logger
        self.active = 0
        self.connections: set[AcceptorAssociation] = set()
        #: Handlers still running for associations already closed (see serve()).
        self.leftover: set[asyncio.Task[None]] = set()
        self.stopping = False
        self._ids = itertools.count(1)
        self._prefix = f"{os.getpid():x}"

    def new_id(self) -> str:
        return f"{self._prefix}-{next(self._ids)}"


class AcceptorAssociation(ServiceUser):
    """The acceptor side of one connection (PS3.8 9.2, states Sta2, Sta3, Sta6 ...)."""

    def __init__(self, state: ServerState) -> None:
        policy = state.policy
        super().__init__(
            requestor=False,
            max_pdu=policy.max_pdu,
            artim_timeout=policy.artim_timeout,
            registry=state.registry,
            logger=state.log,
            assoc_id=state.new_id(),
        )
        self.server = state
        self.timeout = policy.idle_timeout
        self._counted = False
        self._idle: asyncio.TimerHandle | None = None
        self._last_activity = 0.0

    def refused(self, abstract_syntax: str, command: str) -> None:
        observer = self.server.policy.observer
        if observer is not None:
            notify(self.log, observer.refused, self.info, abstract_syntax, command)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.info.peer_host, self.info.peer_port = self.peer
        self.server.connections.add(self)
        self.log.debug("assoc=%s connection from %s:%d", self.info.id, *self.peer)

    def associate_indication(self, rq: A_ASSOCIATE_RQ) -> None:
        server = self.server
        if server.stopping:
            self.reject(A_ASSOCIATE_RJ(REJECTED_TRANSIENT, SOURCE_SERVICE_PROVIDER_ACSE, 1))
            return
        hook = server.policy.access
        if hook is None:
            self._decide(rq, None, False)
            return
        self.info.calling_ae_title = rq.calling_ae_title
        self.info.called_ae_title = rq.called_ae_title
        self.info.user_identity = rq.user_information.user_identity
        try:
            verdict = hook(self.info)
        except RejectAssociation as exc:
            self._rejected_by_access(rq, exc)
            return
        except Exception:
            self.log.exception("assoc=%s access policy failed", self.info.id)
            self.reject(A_ASSOCIATE_RJ(REJECTED_TRANSIENT, SOURCE_SERVICE_USER, 1))
            return
        if inspect.isawaitable(verdict):
            task = self._loop.create_task(self._decide_later(rq, verdict))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        self._decide(rq, verdict, verdict is None)

    async def _decide_later(
        self, rq: A_ASSOCIATE_RQ, verdict: Awaitable[ContextFilter | None]
    ) -> None:
        """Finish :meth:`associate_indication` once an asynchronous access policy has
        answered (in Sta3, PS3.8 9.2: the ARTIM timer's duration bounds the wait)."""
        try:
            access = await asyncio.wait_for(verdict, self.server.policy.artim_timeout)
        except RejectAssociation as exc:
            if self.fsm.state == "Sta3":
                self._rejected_by_access(rq, exc)
            return
        except Exception as exc:
            self.log.warning(
                "assoc=%s access policy failed for %s:%d calling=%s: %s",
                self.info.id,
                *self.peer,
                rq.calling_ae_title,
                "timed out" if isinstance(exc, TimeoutError) else repr(exc),
            )
            if self.fsm.state == "Sta3":
                self.reject(A_ASSOCIATE_RJ(REJECTED_TRANSIENT, SOURCE_SERVICE_USER, 1))
            return
        if self.fsm.state == "Sta3":  # the peer may have gone meanwhile
            self._decide(rq, access, access is None)

    def _rejected_by_access(self, rq: A_ASSOCIATE_RQ, exc: RejectAssociation) -> None:
        self.log.warning(
            "assoc=%s rejected %s:%d calling=%s called=%s result=%d source=%d reason=%d: %s",
            self.info.id,
            *self.peer,
            rq.calling_ae_title,
            rq.called_ae_title,
            exc.result,
            exc.source,
            exc.reason,
            exc.why or "by the access policy",
        )
        self._observe_rejection(exc.result, exc.source, exc.reason)
        self.reject(A_ASSOCIATE_RJ(exc.result, exc.source, exc.reason))

    def _observe_rejection(self, result: int, source: int, reason: int) -> None:
        observer = self.server.policy.observer
        if observer is not None:
            notify(self.log, observer.rejected, self.info, result, source, reason)

    def _decide(self, rq: A_ASSOCIATE_RQ, access: ContextFilter | None, refused: bool) -> None:
        server = self.server
        try:
            decision: A_ASSOCIATE_AC | A_ASSOCIATE_RJ = negotiate(
                rq,
                server.policy,
                server.registry,
                self.info,
                active_associations=server.active,
                access=access,
                calling_ae_refused=refused,
            )
        except Exception:  # a policy hook failed: refuse, transiently, and say why in the log
            self.log.exception("assoc=%s negotiation failed", self.info.id)
            decision = A_ASSOCIATE_RJ(
                REJECTED_TRANSIENT, SOURCE_SERVICE_USER, REASON_NO_REASON_GIVEN
            )
        if isinstance(decision, A_ASSOCIATE_RJ):
            self.log.warning(
                "assoc=%s rejected %s:%d calling=%s called=%s result=%d source=%d reason=%d",
                self.info.id,
                *self.peer,
                rq.calling_ae_title,
                rq.called_ae_title,
                decision.result,
                decision.source,
                decision.reason,
            )
            self._observe_rejection(decision.result, decision.source, decision.reason)
            self.reject(decision)
            return
        server.active += 1
        self._counted = True
        self.started = time.monotonic()
        self.accept(decision)
        if self.log.isEnabledFor(logging.INFO):
            self._log_accepted(rq)
        self._touch()
        self._idle = self._loop.call_later(server.policy.idle_timeout, self._idle_check)

    def _log_accepted(self, rq: A_ASSOCIATE_RQ) -> None:
        contexts = sorted(
            {
                f"{uid_name(a.abstract_syntax)} / {uid_name(a.transfer_syntax)}"
                for a in self.info.contexts.values()
            }
        )
        # A few contexts are listed at INFO; storescu-style requests (100+) at DEBUG only.
        listed = "; ".join(contexts) if len(contexts) <= 8 else "listed at DEBUG"
        self.log.info(
            "assoc=%s accepted %s:%d calling=%s called=%s max_pdu=%d contexts=%d/%d [%s]",
            self.info.id,
            *self.peer,
            rq.calling_ae_title,
            rq.called_ae_title,
            self.info.peer_max_pdu,
            len(self.info.contexts),
            len(rq.presentation_contexts),
            listed,
        )
        if len(contexts) > 8:
            self.log.debug("assoc=%s contexts: %s", self.info.id, "; ".join(contexts))

    def _touch(self) -> None:
        self._last_activity = self._loop.time()

    def _pdu_header(
        self, pdu_type: int, length: int, header: bytes | bytearray | memoryview
    ) -> None:
        self._last_activity = self._loop.time()
        super()._pdu_header(pdu_type, length, header)

    def _idle_check(self) -> None:
        self._idle = None
        if self.fsm.state not in ("Sta6", "Sta8"):
            return
        timeout = self.server.policy.idle_timeout
        remaining = self._last_activity + timeout - self._loop.time()
        # Silence counts unless we are the ones working (a data set fully received and
        # being stored); a peer stalling in the middle of a data set is idle too.
        if (self._inflight and self._incoming is None) or remaining > 0:
            self._idle = self._loop.call_later(max(remaining, 0.5), self._idle_check)
            return
        self.log.warning("assoc=%s idle for %.0f s: aborting", self.info.id, timeout)
        self.abort(f"idle for {timeout:.0f} s")

    def response_sent(self) -> None:
        self._touch()
        super().response_sent()
        if self.server.stopping and not self.busy:
            self.abort("server shutting down")

    def transport_closed(self) -> None:
        super().transport_closed()
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self.server.connections.discard(self)
        for task in self.handler_tasks:
            self.server.leftover.add(task)
            task.add_done_callback(self.server.leftover.discard)
        if self._counted:
            self._counted = False
            self.server.active -= 1
            if self.server.policy.observer is not None:
                notify(self.log, self.server.policy.observer.closed, self.info)
            self.log.info(
                "assoc=%s closed calling=%s messages=%d duration=%.3f s%s",
                self.info.id,
                self.info.calling_ae_title,
                self.messages,
                time.monotonic() - self.started,
                f" ({self.abort_reason})" if self.abort_reason else "",
            )
        elif self.abort_reason:
            self.log.warning(
                "assoc=%s connection from %s:%d closed: %s",
                self.info.id,
                *self.peer,
                self.abort_reason,
            )

    def shutdown(self) -> None:
        """Server stopping: abort now if idle, else after the message in flight."""
        if not self.busy:
            self.abort("server shutting down")


async def serve(
    registry: ServiceRegistry,
    policy: AcceptorPolicy,
    *,
    host: str = "0.0.0.0",
    port: int = 11112,
    sock: socket.socket | None = None,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    logger: logging.Logger | None = None,
    grace: float = 30.0,
    ssl: ssl.SSLContext | None = None,
) -> None:
    """Accept associations until ``stop`` is set (forever when ``stop`` is ``None``).

    Parameters
    ----------
    registry, policy
        The services offered and the negotiation rules.
    host, port
        Where to listen, unless ``sock`` (an already bound socket, e.g. SO_REUSEPORT
        per worker process) is given.
    ready
        Set once the socket listens.
    stop
        When set: stop accepting, let messages in flight finish (at most ``grace``
        seconds), abort the remaining associations, and return.
    logger
        Association log lines (default ``dicomvault.net``).
    ssl
        Serve DICOM over TLS (PS3.15 B.12) with this server context: each connection
        completes its handshake (bounded by the ARTIM timeout) before the association
        starts; failed handshakes are logged with the peer's address.
    """
    log = logger or logging.getLogger("dicomvault.net")
    state = ServerState(policy, registry, log)
    loop = asyncio.get_running_loop()
    server: asyncio.Server | TlsListener
    if ssl is not None:
        if sock is None:
            sock = socket.create_server((host, port), backlog=1024)
        sock.setblocking(False)
        server = TlsListener(sock, state, ssl, AcceptorAssociation)
    elif sock is not None:
        server = await loop.create_server(
            lambda: AcceptorAssociation(state), sock=sock, backlog=1024
        )
    else:
        server = await loop.create_server(
            lambda: AcceptorAssociation(state),
            host=host,
            port=port,
            backlog=1024,
            reuse_address=True,
        )
    addresses = ", ".join(str(s.getsockname()) for s in server.sockets)
    log.info(
        "listening on %s as %s%s", addresses, policy.ae_title, " (TLS)" if ssl is not None else ""
    )
    if ready is not None:
        ready.set()
    try:
        if stop is None:
            await asyncio.Future()  # run until cancelled
        else:
            await stop.wait()
    finally:
        server.close()
        state.stopping = True
        for assoc in list(state.connections):
            assoc.shutdown()
        deadline = loop.time() + grace
        while state.connections and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for assoc in list(state.connections):
            assoc.abort("server shutting down (grace period over)")
            if assoc.transport is not None:
                assoc.transport.abort()
        await server.wait_closed()
        # A handler of an association already gone that is still running (blocked, and
        # not looking at request.cancelled) is cancelled, not left for the loop's close
        # to destroy mid-await.
        await asyncio.sleep(0)  # the aborted transports' connection_lost
        if state.leftover:
            for task in state.leftover:
                task.cancel()
            await asyncio.wait(set(state.leftover), timeout=5)
        log.info("stopped listening on %s", addresses)
