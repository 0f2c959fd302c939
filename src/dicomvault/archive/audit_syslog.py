"""The audit trail's syslog transport: RFC 5424 messages to an audit repository over
UDP (RFC 5426) or TLS (RFC 5425, octet counting), from a thread of its own with a bounded
queue, so that an unreachable repository never delays the archive (issue 7 part 5)."""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from collections import deque
from typing import Final
from urllib.parse import urlsplit

from dicomvault.config import Settings
from dicomvault.model.errors import ConfigError

log = logging.getLogger("dicomvault.audit")

#: Messages waiting for the syslog target at most; the oldest goes first when full.
SYSLOG_QUEUE: Final = 10000
#: Seconds between reconnection attempts to a failing syslog target, at most.
SYSLOG_BACKOFF_MAX: Final = 30.0
SYSLOG_TIMEOUT: Final = 5.0


class SyslogSender:
    """Sends RFC 5424 messages to ``udp://host:port`` or ``tls://host:port`` from its own
    thread. A failing target is retried with growing pauses (at most
    :data:`SYSLOG_BACKOFF_MAX` s); meanwhile messages wait in a bounded queue, the oldest
    dropped first when it is full. Nothing here ever blocks a producer."""

    def __init__(self, url: str, context: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("udp", "tls") or not parts.hostname:
            raise ConfigError(f"audit.syslog: {url!r} is not udp://host:port or tls://host:port")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (514 if parts.scheme == "udp" else 6514)
        self._context = context
        self._pending: deque[bytes] = deque(maxlen=SYSLOG_QUEUE)
        self._wake = threading.Condition()
        self._closed = False
        self._sock: socket.socket | None = None
        self.dropped = 0
        self.sent = 0
        self._thread = threading.Thread(target=self._run, name="audit-syslog", daemon=True)
        self._thread.start()

    def send(self, line: str) -> None:
        data = line.encode("utf-8")
        with self._wake:
            if len(self._pending) == self._pending.maxlen:
                self.dropped += 1
            self._pending.append(data)
            self._wake.notify()

    def close(self, timeout: float = 2.0) -> None:
        """Stop after trying what is queued for at most ``timeout`` seconds."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout)
        self._disconnect()

    def _connect(self) -> socket.socket:
        if self.scheme == "udp":
            info = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)[0]
            sock = socket.socket(info[0], socket.SOCK_DGRAM)
            sock.connect(info[4])
            return sock
        raw = socket.create_connection((self.host, self.port), timeout=SYSLOG_TIMEOUT)
        try:
            assert self._context is not None
            tls = self._context.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise
        tls.settimeout(SYSLOG_TIMEOUT)
        return tls

    def _disconnect(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def _frame(self, data: bytes) -> bytes:
        # RFC 5425 4.3: octet counting, "MSG-LEN SP SYSLOG-MSG"; UDP: one datagram each.
        return f"{len(data)} ".encode() + data if self.scheme == "tls" else data

    def _run(self) -> None:
        backoff = 0.5
        while True:
            with self._wake:
                while not self._pending and not self._closed:
                    self._wake.wait()
                if not self._pending:
                    return
                data = self._pending[0]
            try:
                if self._sock is None:
                    self._sock = self._connect()
                self._sock.sendall(self._frame(data))
            except (OSError, ssl.SSLError, ValueError) as exc:
                self._disconnect()
                log.warning(
                    "audit: syslog %s://%s:%d failed: %s; retrying in %.1f s",
                    self.scheme, self.host, self.port, exc, backoff,
                )  # fmt: skip
                with self._wake:
                    if self._closed:
                        return
                    self._wake.wait(backoff)
                backoff = min(backoff * 2, SYSLOG_BACKOFF_MAX)
                continue
            backoff = 0.5
            with self._wake:
                if self._pending and self._pending[0] is data:
                    self._pending.popleft()
                self.sent += 1


def syslog_sender(settings: Settings) -> SyslogSender | None:
    """The sender of ``audit.syslog`` (``None`` when unset); a TLS target is verified
    against ``tls.ca_certificates`` and gets our certificate when configured."""
    url = settings.audit.syslog
    if not url:
        return None
    context = None
    if url.startswith("tls://"):
        from dicomvault.security.tls import client_context

        context = client_context(settings.tls)
    return SyslogSender(url, context)
