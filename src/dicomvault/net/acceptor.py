"""The association acceptor: the server whose connections negotiate with
:func:`~dicomvault.net.negotiation.negotiate` and then serve the registered services.

:func:`serve` runs an asyncio server whose connections are :class:`AcceptorAssociation`
instances; :class:`ServerState` is what they share (counts, the policy, shutdown).
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
from collections.abc import Awaitable

from dicomvault.net.handlers import (
    ContextFilter,
    RejectAssociation,
    ServiceRegistry,
)
from dicomvault.net.negotiation import (
    REASON_NO_REASON_GIVEN,
    REJECTED_TRANSIENT,
    SOURCE_SERVICE_PROVIDER_ACSE,
    SOURCE_SERVICE_USER,
    AcceptorPolicy,
    negotiate,
    notify,
)
from dicomvault.net.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from dicomvault.net.service_user import ServiceUser
from dicomvault.net.tls_listener import TlsListener
from dicomvault.net.uids import uid_name


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
