"""TLS on the server side (PS3.15 B.12): a listener that runs each TLS handshake itself
before the protocol sees the connection, so that failures are reported — DICOM over TLS
(:func:`dicomvault.net.acceptor.serve` with an SSL context) and HTTPS (``web/http.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dicomvault.net.acceptor import AcceptorAssociation, ServerState


Peer = tuple[str, int]


class TlsAcceptor:
    """A TLS server socket that runs each handshake itself (PS3.15 B.12, BCP 195), for
    any asyncio protocol: DICOM associations here, HTTPS (``web/http.py``) too.

    ``loop.create_server(ssl=...)`` drops a failed handshake silently; accepting here
    lets ``on_failure(peer, reason)`` log and audit it (an old protocol version, no
    shared cipher suite, no or an untrusted client certificate, plain text on the TLS
    port, a timeout), while the server keeps serving. Quacks like an ``asyncio.Server``
    for those who close it: ``sockets``, ``close()``, ``wait_closed()``.
    """

    def __init__(
        self,
        sock: socket.socket,
        context: ssl.SSLContext,
        factory: Callable[[], asyncio.BaseProtocol],
        *,
        handshake_timeout: float,
        on_failure: Callable[[Peer, str], None],
        on_success: Callable[[asyncio.BaseTransport, Peer], None] | None = None,
        log: logging.Logger,
    ) -> None:
        sock.setblocking(False)
        self.sockets = [sock]
        self.context = context
        self._factory = factory
        self._timeout = handshake_timeout
        self._on_failure = on_failure
        self._on_success = on_success
        self._log = log
        self._pending: set[asyncio.Task[None]] = set()
        self._accepting = asyncio.get_running_loop().create_task(self._accept(sock))

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, address = await loop.sock_accept(sock)
            except OSError as exc:  # EMFILE and friends: say so, breathe, go on
                self._log.error("accept failed on the TLS port: %s", exc)
                await asyncio.sleep(0.1)
                continue
            task = loop.create_task(self._handshake(conn, address))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _handshake(self, conn: socket.socket, address: object) -> None:
        peer = (str(address[0]), int(address[1])) if isinstance(address, tuple) else ("?", 0)
        conn.setblocking(False)
        try:
            transport, _ = await asyncio.get_running_loop().connect_accepted_socket(
                self._factory, conn, ssl=self.context, ssl_handshake_timeout=self._timeout
            )
        except asyncio.CancelledError:
            conn.close()
            raise
        except (OSError, TimeoutError, EOFError) as exc:
            conn.close()
            try:
                self._on_failure(peer, _tls_reason(exc))
            except Exception:
                self._log.exception("TLS handshake failure handler failed")
            return
        if self._on_success is not None:
            self._on_success(transport, peer)

    def close(self) -> None:
        """Stop accepting, drop connections still in their handshake, close the socket."""
        self._accepting.cancel()
        for task in list(self._pending):
            task.cancel()
        for sock in self.sockets:
            sock.close()

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self._accepting


class TlsListener(TlsAcceptor):
    """DICOM over TLS (PS3.15 B.12) on the acceptor side: an :class:`AcceptorAssociation`
    starts once the handshake is done; a failed handshake is a warning naming the peer
    and OpenSSL's reason, and goes to the policy's observer (the audit trail)."""

    def __init__(
        self,
        sock: socket.socket,
        state: ServerState,
        context: ssl.SSLContext,
        make: type[AcceptorAssociation],
    ) -> None:
        self.state = state
        self._made: dict[int, AcceptorAssociation] = {}
        super().__init__(
            sock,
            context,
            lambda: make(state),
            handshake_timeout=state.policy.artim_timeout,
            on_failure=self._failed,
            on_success=self._succeeded,
            log=state.log,
        )

    def _failed(self, peer: Peer, reason: str) -> None:
        state = self.state
        state.log.warning("TLS handshake with %s:%d failed: %s", *peer, reason)
        observer = state.policy.observer
        if observer is not None:
            try:
                observer.tls_failed(peer[0], peer[1], reason)
            except Exception:
                state.log.exception("association observer failed")

    def _succeeded(self, transport: asyncio.BaseTransport, peer: Peer) -> None:
        log = self.state.log
        if not log.isEnabledFor(logging.INFO):
            return
        association = transport.get_protocol()
        cipher = transport.get_extra_info("cipher")
        cert = transport.get_extra_info("peercert")
        subject = (
            ", ".join(f"{k}={v}" for rdn in cert.get("subject", ()) for k, v in rdn)
            if cert
            else "none"
        )
        log.info(
            "assoc=%s TLS from %s:%d: %s %s, client certificate: %s",
            getattr(getattr(association, "info", None), "id", "-"),
            *peer,
            cipher[1] if cipher else "?",
            cipher[0] if cipher else "?",
            subject,
        )


def _tls_reason(exc: BaseException) -> str:
    """OpenSSL's reason for a failed handshake (e.g. UNSUPPORTED_PROTOCOL, NO_SHARED_CIPHER,
    PEER_DID_NOT_RETURN_A_CERTIFICATE, WRONG_VERSION_NUMBER for plain TCP)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verification failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionResetError):
        return "connection reset by the peer (does it trust our certificate?)"
    return str(exc) or type(exc).__name__
