"""``serve_http``: uvicorn serving the DICOMweb app on the caller's event loop, next to the
DIMSE listener, with the same graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from dicomvault.archive import Archive, audit, users
from dicomvault.config import Settings
from dicomvault.model.errors import ConfigError
from dicomvault.security.tls import server_context
from dicomvault.web.app import create_app
from dicomvault.web.auth import is_loopback
from dicomvault.web.zerocopy import SERVER_SEND

log = logging.getLogger("dicomvault.http")


class KeepServerSend:
    """Keeps the server's own ``send`` in the scope (web/zerocopy.py uses it to send files
    with ``sendfile``) before Starlette's middleware wraps it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[SERVER_SEND] = send
        await self.app(scope, receive, send)


#: Seconds a client has to complete the TLS handshake on the HTTPS port.
HANDSHAKE_TIMEOUT = 30.0


#: Makes the TLS server of a socket: ``(sock, context, protocol_factory, *,
#: handshake_timeout, on_failure, log)`` → an object with ``close()`` and
#: ``wait_closed()``. ``dicomvault.net.tls_listener.TlsAcceptor``, passed in by the
#: assembling code (``web/`` does not import ``net/``).
TlsAcceptorFactory = Callable[..., Any]


class _Server(uvicorn.Server):
    """uvicorn, with HTTPS accepted by ``acceptor`` when ``tls`` and ``acceptor`` are
    given: ``loop.create_server(ssl=...)`` drops failed handshakes silently, and a failed
    TLS handshake is a Security Alert (PS3.15 A.5.3.11) the audit trail must record."""

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        tls: ssl.SSLContext | None = None,
        acceptor: TlsAcceptorFactory | None = None,
        on_tls_failure: Callable[[tuple[str, int], str], None] | None = None,
    ) -> None:
        super().__init__(config)
        self._tls = tls
        self._acceptor = acceptor
        self._on_tls_failure = on_tls_failure

    # The process installs its own SIGTERM/SIGINT handlers (cli/serve.py) and stops both
    # listeners together; uvicorn must not replace them.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if self._tls is None or self._acceptor is None or sockets is None:
            await super().startup(sockets)
            return
        await self.lifespan.startup()  # lifespan is off: returns at once
        config = self.config

        def create_protocol() -> asyncio.Protocol:
            # What uvicorn's own startup makes for each connection.
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state
            )

        def failed(peer: tuple[str, int], reason: str) -> None:
            log.warning("HTTPS: TLS handshake with %s:%d failed: %s", *peer, reason)
            if self._on_tls_failure is not None:
                self._on_tls_failure(peer, reason)

        self.servers = [
            self._acceptor(
                sock,
                self._tls,
                create_protocol,
                handshake_timeout=HANDSHAKE_TIMEOUT,
                on_failure=failed,
                log=log,
            )
            for sock in sockets
        ]
        self.started = True


def refuse_if_exposed(host: str, have_users: bool) -> None:
    """Refuse to serve HTTP on an address other machines can reach while no HTTP user
    exists: anyone reaching the port could read, store and delete (Orthanc shipped that
    default and earned CVE-2025-0896). Loopback needs no user.

    Raises
    ------
    ConfigError
        ``host`` is not loopback and there is no user; the message says how to add one.
    """
    if have_users or is_loopback(host):
        return
    raise ConfigError(
        f"http.host = {host!r} would let anyone on the network read, store and delete, "
        "and no HTTP user exists: add one first with "
        "'dicomvault user add admin --role admin' (then 'dicomvault token create admin' "
        "for programs), or keep http.host = \"127.0.0.1\""
    )


async def serve_http(
    archive: Archive,
    settings: Settings,
    *,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    sock: socket.socket | None = None,
    tls_acceptor: TlsAcceptorFactory | None = None,
) -> None:
    """Serve the DICOMweb app for ``archive`` until ``stop`` is set.

    Requests in flight get up to ``dicom.idle_timeout`` seconds (at least 5) to finish.
    With ``tls.https`` the app is served over TLS (HTTPS, PS3.15 B.12 / BCP 195) with the
    context of :func:`dicomvault.security.tls.server_context`; with ``tls_acceptor``
    (``dicomvault serve`` passes ``net.tls_listener.TlsAcceptor``) each handshake runs in
    it, and a failed one is logged and audited (PS3.15 A.5.3.11).

    Raises
    ------
    ConfigError
        ``tls.https`` without a usable certificate and key (the message names the key);
        a non-loopback address while no HTTP user exists (:func:`refuse_if_exposed`).
    """
    config = uvicorn.Config(
        KeepServerSend(create_app(archive, settings)),
        host=settings.http.host,
        port=settings.http.port,
        log_config=None,
        access_log=False,  # web/app.py RequestLog logs each request with its timing
        lifespan="off",
        server_header=False,
        timeout_graceful_shutdown=int(max(settings.dicom.idle_timeout, 5.0)),
        # Keep-alive connections of viewers (one per browser tab) idle between clicks.
        timeout_keep_alive=30,
    )
    tls: ssl.SSLContext | None = None
    if settings.tls.https:
        # uvicorn builds its context from file names; ours enforces TLS 1.2+, the ECDHE
        # AES-GCM suites and the client certificate mode, and _Server accepts with it.
        config.load()
        tls = config.ssl = server_context(settings.tls)
    host = settings.http.host if sock is None else str(sock.getsockname()[0])
    # Users of an identity provider (``[jwt]``) count: every request must authenticate.
    refuse_if_exposed(host, users.users_exist(archive) or settings.jwt.enabled)
    if sock is None:
        sock = config.bind_socket()
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        # uvicorn writes headers and body separately: with Nagle on, the body waits for
        # the client's delayed ACK, ~40 ms per response (measured 44 ms → 0.9 ms).
        # Accepted connections inherit the option from the listening socket on Linux.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    server = _Server(
        config,
        tls=tls,
        acceptor=tls_acceptor,
        on_tls_failure=lambda peer, reason: audit.tls_failed(archive, *peer, reason),
    )

    async def watch() -> None:
        while not server.started:
            if server.should_exit:
                return
            await asyncio.sleep(0.01)
        if ready is not None:
            ready.set()
        if stop is not None:
            await stop.wait()
            server.should_exit = True

    watcher = asyncio.ensure_future(watch())
    try:
        await server.serve(sockets=[sock])
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    if not server.started:
        raise OSError(f"HTTP server could not start on {settings.http.host}:{settings.http.port}")
