"""TLS contexts for DIMSE and HTTPS (PS3.15 B.12, "BCP 195 TLS Secure Transport
Connection Profile"; BCP 195 = RFC 8996 and RFC 9325).

What every context built here enforces:

- TLS 1.2 and TLS 1.3 only (RFC 8996 deprecates TLS 1.0 and 1.1; RFC 9325 4.1).
- TLS 1.2 cipher suites ``ECDHE+AESGCM`` only: forward secrecy through ECDHE and AEAD
  encryption (RFC 9325 4.2): ECDHE-ECDSA/RSA-AES128-GCM-SHA256 and -AES256-GCM-SHA384.
  No CBC suite, no static RSA key exchange, no SHA-1 MAC.
- TLS 1.3 with OpenSSL's default suites (TLS_AES_256_GCM_SHA384,
  TLS_CHACHA20_POLY1305_SHA256, TLS_AES_128_GCM_SHA256): every TLS 1.3 suite is AEAD
  with forward secrecy, which is what RFC 9325 4.2 asks for.
- No TLS compression (RFC 9325 3.3), no renegotiation.

A server context presents our certificate and asks for the peer's according to
``tls.client_certificates`` (``none`` / ``optional`` / ``required``), verified against
``tls.ca_certificates``. A client context verifies the remote's certificate and host name
against ``tls.ca_certificates`` (the system's CAs when unset) and presents our certificate.
"""

from __future__ import annotations

import ssl
import weakref
from pathlib import Path
from typing import Protocol

from dicomvault.model.errors import ConfigError

#: OpenSSL cipher string for TLS 1.2 (TLS 1.3 suites are configured separately).
TLS12_CIPHERS = "ECDHE+AESGCM"

_VERIFY_MODES = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}


class TlsFiles(Protocol):
    """What the builders read: the ``[tls]`` settings section satisfies it."""

    @property
    def certificate(self) -> Path | None: ...

    @property
    def private_key(self) -> Path | None: ...

    @property
    def ca_certificates(self) -> Path | None: ...

    @property
    def client_certificates(self) -> str: ...


def _readable(path: Path, key: str) -> str:
    """``path`` as a string after checking it can be read; ConfigError naming it if not."""
    try:
        with path.open("rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise ConfigError(f"{key} = {str(path)!r}: cannot read: {exc.strerror or exc}") from None
    return str(path)


def _base(protocol: ssl._SSLMethod) -> ssl.SSLContext:
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return ctx


def _load_chain(ctx: ssl.SSLContext, certificate: Path, private_key: Path) -> None:
    cert = _readable(certificate, "tls.certificate")
    key = _readable(private_key, "tls.private_key")
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"tls.certificate = {cert!r} / tls.private_key = {key!r}: not a PEM certificate "
            f"and its matching private key ({exc.reason or exc})"
        ) from None


def _load_cas(ctx: ssl.SSLContext, ca_certificates: Path) -> None:
    path = _readable(ca_certificates, "tls.ca_certificates")
    try:
        ctx.load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"tls.ca_certificates = {path!r}: not a PEM certificate bundle ({exc.reason or exc})"
        ) from None


def server_context(tls: TlsFiles) -> ssl.SSLContext:
    """The context of our DIMSE-over-TLS and HTTPS listeners (PS3.15 B.12).

    ``client_certificates``: ``none`` asks for no certificate; ``optional`` verifies one
    when the peer sends it (and asks for none when no ``ca_certificates`` is set);
    ``required`` refuses the handshake without a certificate signed by a CA of
    ``ca_certificates``.

    Raises
    ------
    ConfigError
        ``certificate`` or ``private_key`` unset, unreadable or not PEM; ``required``
        without ``ca_certificates``; an unreadable CA bundle. The message names the key.
    """
    if tls.certificate is None or tls.private_key is None:
        missing = [
            key
            for key, value in (
                ("tls.certificate", tls.certificate),
                ("tls.private_key", tls.private_key),
            )
            if value is None
        ]
        raise ConfigError(
            "TLS is enabled (tls.enabled or tls.https) but "
            + " and ".join(missing)
            + (" is" if len(missing) == 1 else " are")
            + " not set: give the PEM files of our certificate and its private key "
            "(`dicomvault tls make-dev-certs DIR` writes a set for trying it out)"
        )
    mode = tls.client_certificates
    if mode not in _VERIFY_MODES:
        raise ConfigError(f"tls.client_certificates: {mode!r} is not none, optional or required")
    ctx = _base(ssl.PROTOCOL_TLS_SERVER)
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    _load_chain(ctx, tls.certificate, tls.private_key)
    if tls.ca_certificates is not None:
        _load_cas(ctx, tls.ca_certificates)
        ctx.verify_mode = _VERIFY_MODES[mode]
    elif mode == "required":
        raise ConfigError(
            "tls.client_certificates = 'required' needs tls.ca_certificates: the CA bundle "
            "client certificates are verified against"
        )
    else:
        ctx.verify_mode = ssl.CERT_NONE
    _SERVING[ctx] = tls
    return ctx


#: Every live server context with the settings it was made from, for
#: :func:`reload_server_contexts` (weak: a closed listener's context goes).
_SERVING: weakref.WeakKeyDictionary[ssl.SSLContext, TlsFiles] = weakref.WeakKeyDictionary()


def reload_server_contexts() -> int:
    """Load the certificate, private key and CA bundle again into every live server
    context (``dicomvault serve`` does it on SIGHUP): renewed certificates are served to
    new connections at once, without a restart; connections already open keep theirs.
    CA certificates are added to those already trusted (OpenSSL cannot drop one from a
    live context: removing a CA needs a restart).

    Each context is checked first with a throw-away context made from the same files, so
    a broken file changes nothing.

    Returns
    -------
    int
        How many contexts were reloaded.

    Raises
    ------
    ConfigError
        A file is unreadable or not PEM, or the key does not match the certificate (the
        message names the setting); nothing was changed.
    """
    live = list(_SERVING.items())
    for _, tls in live:
        trial = _base(ssl.PROTOCOL_TLS_SERVER)
        assert tls.certificate is not None and tls.private_key is not None
        _load_chain(trial, tls.certificate, tls.private_key)
        if tls.ca_certificates is not None:
            _load_cas(trial, tls.ca_certificates)
    for ctx, tls in live:
        assert tls.certificate is not None and tls.private_key is not None
        _load_chain(ctx, tls.certificate, tls.private_key)
        if tls.ca_certificates is not None:
            _load_cas(ctx, tls.ca_certificates)
    return len(live)


def client_context(tls: TlsFiles) -> ssl.SSLContext:
    """The context for associating with a remote AE over TLS (PS3.15 B.12), as SCU.

    The remote's certificate must chain to ``ca_certificates`` (the system's trusted CAs
    when unset) and name the host we connect to; we present our certificate when
    ``certificate`` and ``private_key`` are set.

    Raises
    ------
    ConfigError
        A file is unreadable or not PEM; the message names the key and the file.
    """
    ctx = _base(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    if tls.ca_certificates is not None:
        _load_cas(ctx, tls.ca_certificates)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if tls.certificate is not None and tls.private_key is not None:
        _load_chain(ctx, tls.certificate, tls.private_key)
    return ctx


def describe_tls_error(exc: BaseException) -> str:
    """A one-line reason for a failed handshake: the OpenSSL reason when there is one."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verification failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return f"TLS error {exc.reason}"
    return str(exc) or type(exc).__name__


__all__ = [
    "TLS12_CIPHERS",
    "TlsFiles",
    "client_context",
    "describe_tls_error",
    "server_context",
]
