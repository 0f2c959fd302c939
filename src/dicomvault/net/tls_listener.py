"""DICOM over TLS (PS3.15 B.12) on the acceptor side: the listener that runs each TLS
handshake before an association sees the connection (used by
:func:`dicomvault.net.acceptor.serve` when given an SSL context)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dicomvault.net.acceptor import AcceptorAssociation, ServerState


class TlsListener:
    """DICOM over TLS (PS3.15 B.12): accepts TCP connections itself and runs each TLS
    handshake as the server before an :class:`AcceptorAssociation` sees the connection.

    A failed handshake (an old protocol version, no shared cipher suite, no or an untrusted
    client certificate, plain DICOM on the TLS port, a timeout) is one warning naming the
    peer and OpenSSL's reason; the server keeps serving. (Accepting here rather than in
    ``loop.create_server(ssl=...)``, which drops handshake failures silently.)
    """

    def __init__(
        self,
        sock: socket.socket,
        state: ServerState,
        context: ssl.SSLContext,
        make: type[AcceptorAssociation],
    ) -> None:
        self._make = make
        self.sockets = [sock]
        self.state = state
        self.context = context
        self._pending: set[asyncio.Task[None]] = set()
        self._accepting = asyncio.get_running_loop().create_task(self._accept(sock))

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, address = await loop.sock_accept(sock)
            except OSError as exc:  # EMFILE and friends: say so, breathe, go on
                self.state.log.error("accept failed on the TLS port: %s", exc)
                await asyncio.sleep(0.1)
                continue
            task = loop.create_task(self._handshake(conn, address))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _handshake(self, conn: socket.socket, address: object) -> None:
        state = self.state
        peer = (str(address[0]), int(address[1])) if isinstance(address, tuple) else ("?", 0)
        made: list[AcceptorAssociation] = []

        def factory() -> AcceptorAssociation:
            made.append(self._make(state))
            return made[-1]

        conn.setblocking(False)
        try:
            transport, _ = await asyncio.get_running_loop().connect_accepted_socket(
                factory,
                conn,
                ssl=self.context,
                ssl_handshake_timeout=state.policy.artim_timeout,
            )
        except asyncio.CancelledError:
            conn.close()
            raise
        except (OSError, TimeoutError, EOFError) as exc:
            state.log.warning(
                "assoc=%s TLS handshake with %s:%d failed: %s",
                made[-1].info.id if made else "-",
                *peer,
                _tls_reason(exc),
            )
            observer = state.policy.observer
            if observer is not None:
                try:
                    observer.tls_failed(peer[0], peer[1], _tls_reason(exc))
                except Exception:
                    state.log.exception("association observer failed")
            conn.close()
            return
        if made and state.log.isEnabledFor(logging.INFO):
            cipher = transport.get_extra_info("cipher")
            cert = transport.get_extra_info("peercert")
            subject = (
                ", ".join(f"{k}={v}" for rdn in cert.get("subject", ()) for k, v in rdn)
                if cert
                else "none"
            )
            state.log.info(
                "assoc=%s TLS from %s:%d: %s %s, client certificate: %s",
                made[-1].info.id,
                *peer,
                cipher[1] if cipher else "?",
                cipher[0] if cipher else "?",
                subject,
            )

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
