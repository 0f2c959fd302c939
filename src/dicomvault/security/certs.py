"""Development certificates for trying DIMSE over TLS and HTTPS (PS3.15 B.12).

:func:`make_dev_certs` writes a private CA, a server certificate (host names
``localhost``, ``127.0.0.1``, ``::1`` and any given) and a client certificate, as PEM,
with the private keys readable by their owner only (0600). RSA 2048 keys, SHA-256
signatures (RFC 9325 4.3 minimums). For tests and evaluation, never for production: the
CA key sits next to the certificates.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Days the development certificates are valid (825: what browsers accept at most).
VALID_DAYS = 825


@dataclass(frozen=True, slots=True)
class DevCerts:
    """The files :func:`make_dev_certs` wrote."""

    ca_certificate: Path
    ca_key: Path
    server_certificate: Path
    server_key: Path
    client_certificate: Path
    client_key: Path
    server_names: tuple[str, ...]

    def files(self) -> list[Path]:
        return [
            self.ca_certificate,
            self.ca_key,
            self.server_certificate,
            self.server_key,
            self.client_certificate,
            self.client_key,
        ]


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dicomvault development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _san(names: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, mode)  # O_CREAT's mode is filtered by the umask, and ignored if it existed


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_dev_certs(
    directory: Path, hostnames: Sequence[str] = (), *, overwrite: bool = False
) -> DevCerts:
    """Write ``ca.pem``, ``ca-key.pem``, ``server.pem``, ``server-key.pem``, ``client.pem``
    and ``client-key.pem`` into ``directory`` (created when missing).

    The server certificate names ``localhost``, ``127.0.0.1``, ``::1`` and ``hostnames``
    (DNS names or IP addresses) and may authenticate a server or a client (we are a TLS
    client too, as C-MOVE SCU and storage commitment SCP); the client certificate
    authenticates a client (a modality, DCMTK).

    Raises
    ------
    FileExistsError
        A file to write exists and ``overwrite`` is false.
    OSError
        The directory cannot be created or written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    out = DevCerts(
        directory / "ca.pem",
        directory / "ca-key.pem",
        directory / "server.pem",
        directory / "server-key.pem",
        directory / "client.pem",
        directory / "client-key.pem",
        tuple(dict.fromkeys(["localhost", "127.0.0.1", "::1", *hostnames])),
    )
    if not overwrite:
        existing = [str(p) for p in out.files() if p.exists()]
        if existing:
            raise FileExistsError(", ".join(existing))
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    until = now + dt.timedelta(days=VALID_DAYS)

    ca_key = _key()
    ca_name = _name("dicomvault development CA")
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(
        common_name: str, usages: list[x509.ObjectIdentifier], names: Sequence[str]
    ) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
        key = _key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(until)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                critical=False,
            )
        )
        if names:
            builder = builder.add_extension(_san(names), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    server_cert, server_key = leaf(
        out.server_names[0],
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        out.server_names,
    )
    client_cert, client_key = leaf(
        "dicomvault development client", [ExtendedKeyUsageOID.CLIENT_AUTH], []
    )

    pem = serialization.Encoding.PEM
    _write(out.ca_certificate, ca_cert.public_bytes(pem), 0o644)
    _write(out.ca_key, _pem_key(ca_key), 0o600)
    _write(out.server_certificate, server_cert.public_bytes(pem), 0o644)
    _write(out.server_key, _pem_key(server_key), 0o600)
    _write(out.client_certificate, client_cert.public_bytes(pem), 0o644)
    _write(out.client_key, _pem_key(client_key), 0o600)
    return out


__all__ = ["VALID_DAYS", "DevCerts", "make_dev_certs"]
