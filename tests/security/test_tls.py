"""DICOM over TLS and HTTPS (PS3.15 B.12, BCP 195): real peers (DCMTK, openssl s_client,
httpx, our own CLI) against real listeners on 127.0.0.1."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "net"))

from peers import PYDICOM_TEST_FILES, ServerThread, dcmtk

from dicomvault.archive import Archive, audit
from dicomvault.config import RemoteAE, Settings, load_settings
from dicomvault.dimse.server import serve_dicom
from dicomvault.model.errors import ConfigError
from dicomvault.net.tls_listener import TlsAcceptor
from dicomvault.security.certs import DevCerts, make_dev_certs
from dicomvault.security.tls import client_context, server_context
from dicomvault.web.http import serve_http

DV = str(Path(sys.executable).with_name("dicomvault"))
CT = PYDICOM_TEST_FILES / "CT_small.dcm"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    return make_dev_certs(tmp_path_factory.mktemp("certs"), ["pacs.example", "10.1.2.3"])


def tls_settings(tmp_path: Path, certs: DevCerts, mode: str = "required") -> Settings:
    return load_settings(
        None,
        {
            "storage": {"path": tmp_path / "data", "fsync": False},
            "dicom": {"host": "127.0.0.1", "port": 0, "idle_timeout": 10, "artim_timeout": 3},
            "http": {"host": "127.0.0.1", "port": 0},
            "tls": {
                "enabled": True,
                "https": True,
                "certificate": certs.server_certificate,
                "private_key": certs.server_key,
                "ca_certificates": certs.ca_certificate,
                "client_certificates": mode,
            },
        },
    )


class TlsServer:
    def __init__(self, archive: Archive, settings: Settings, thread: ServerThread) -> None:
        self.archive = archive
        self.settings = settings
        self.thread = thread
        self.port = thread.port


@pytest.fixture
def tls_server(tmp_path: Path, certs: DevCerts) -> Iterator[TlsServer]:
    settings = tls_settings(tmp_path, certs)
    archive = Archive.open(settings)
    context = server_context(settings.tls)

    async def make(sock: socket.socket, ready: asyncio.Event, stop: asyncio.Event) -> None:
        await serve_dicom(archive, settings, ready=ready, stop=stop, sock=sock, ssl=context)

    thread = ServerThread(make).start()
    try:
        yield TlsServer(archive, settings, thread)
    finally:
        thread.close()
        archive.close()
        assert thread.error is None, thread.error


def dcmtk_tls(certs: DevCerts) -> list[str]:
    return [
        "--enable-tls", str(certs.client_key), str(certs.client_certificate),
        "--add-cert-file", str(certs.ca_certificate),
    ]  # fmt: skip


def s_client(port: int, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *map(str, args)],
        input="",
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def negotiated(proc: subprocess.CompletedProcess[str]) -> str:
    """The cipher openssl s_client negotiated, '(NONE)' when the handshake failed."""
    for line in proc.stdout.splitlines():
        if ", Cipher is " in line:
            return line.rsplit(" ", 1)[-1]
    return "(NONE)"


# --- make-dev-certs --------------------------------------------------------------------


def test_dev_certs_verify_and_name_the_server(certs: DevCerts) -> None:
    for key in (certs.ca_key, certs.server_key, certs.client_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    server = x509.load_pem_x509_certificate(certs.server_certificate.read_bytes())
    ca = x509.load_pem_x509_certificate(certs.ca_certificate.read_bytes())
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "pacs.example"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
        ipaddress.ip_address("10.1.2.3"),
    }
    files = type("F", (), {})()
    files.certificate = certs.server_certificate
    files.private_key = certs.server_key
    files.ca_certificates = certs.ca_certificate
    files.client_certificates = "required"
    ctx = server_context(files)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    tls12 = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12 and all("ECDHE" in n and "GCM" in n for n in tls12), tls12
    assert client_context(files).check_hostname


def test_make_dev_certs_cli(tmp_path: Path) -> None:
    proc = subprocess.run(
        [DV, "tls", "make-dev-certs", str(tmp_path / "c"), "--hostname", "pacs.local"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "[tls]" in proc.stdout and "server-key.pem" in proc.stdout
    assert "pacs.local" in proc.stdout
    again = subprocess.run(
        [DV, "tls", "make-dev-certs", str(tmp_path / "c")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert again.returncode == 1 and "--force" in again.stderr


def test_tls_settings_errors_name_the_key(tmp_path: Path, certs: DevCerts) -> None:
    settings = tls_settings(tmp_path, certs)
    settings.tls.private_key = None
    with pytest.raises(ConfigError, match=r"tls\.private_key"):
        server_context(settings.tls)
    settings.tls.private_key = tmp_path / "missing.pem"
    with pytest.raises(ConfigError, match=r"missing\.pem"):
        server_context(settings.tls)
    settings.tls.private_key = certs.client_key  # not the certificate's key
    with pytest.raises(ConfigError, match="matching private key"):
        server_context(settings.tls)
    config = tmp_path / "bad.toml"
    config.write_text('[tls]\nenabled = true\n[storage]\npath = "%s"\n' % (tmp_path / "d"))
    proc = subprocess.run(
        [DV, "serve", "--config", str(config), "--dicom-port", "0", "--http-port", "0"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "tls.certificate" in proc.stderr and "tls.private_key" in proc.stderr


# --- DIMSE over TLS ----------------------------------------------------------------------


@pytest.mark.dcmtk
def test_dcmtk_echo_and_store_over_tls(
    tls_server: TlsServer, certs: DevCerts, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "dicomvault")
    port = str(tls_server.port)
    echo = dcmtk("echoscu", *dcmtk_tls(certs), "-aec", "DICOMVAULT", "localhost", port)
    assert echo.returncode == 0, echo.stderr
    store = dcmtk("storescu", *dcmtk_tls(certs), "-aec", "DICOMVAULT", "localhost", port, CT)
    assert store.returncode == 0, store.stderr
    assert tls_server.archive.stats().instances == 1
    assert "client certificate: organizationName=dicomvault development" in caplog.text


@pytest.mark.dcmtk
def test_refused_handshakes_are_logged_and_serving_goes_on(
    tls_server: TlsServer, certs: DevCerts, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "dicomvault")
    port = str(tls_server.port)
    # Anonymous TLS: no client certificate while one is required.
    anon = dcmtk(
        "echoscu", "--anonymous-tls", "--add-cert-file", certs.ca_certificate,
        "-aec", "DICOMVAULT", "localhost", port,
    )  # fmt: skip
    assert anon.returncode != 0
    # Plain DICOM on the TLS port.
    plain = dcmtk("echoscu", "-to", "5", "-aec", "DICOMVAULT", "127.0.0.1", port)
    assert plain.returncode != 0
    # Plain TCP garbage.
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert sock.recv(100) == b""
    # asyncio closes the connection before the failed handshake reaches our coroutine,
    # so the last line may be logged just after the peer saw the close.
    deadline = time.monotonic() + 5
    while True:
        failures = [
            r.getMessage() for r in caplog.records if "TLS handshake with" in r.getMessage()
        ]
        if len(failures) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(failures) == 3, failures
    assert all("127.0.0.1:" in line for line in failures)
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in failures[0]
    assert "Traceback" not in caplog.text
    ok = dcmtk("echoscu", *dcmtk_tls(certs), "-aec", "DICOMVAULT", "localhost", port)
    assert ok.returncode == 0, ok.stderr


def test_openssl_protocol_versions_and_suites(
    tls_server: TlsServer, certs: DevCerts, caplog: pytest.LogCaptureFixture
) -> None:
    cert = ("-cert", certs.client_certificate, "-key", certs.client_key)
    for version in ("-tls1", "-tls1_1"):
        old = s_client(tls_server.port, version, "-cipher", "DEFAULT:@SECLEVEL=0", *cert)
        assert negotiated(old) == "(NONE)", old.stdout
    cbc = s_client(tls_server.port, "-tls1_2", "-cipher", "AES128-SHA", *cert)
    assert negotiated(cbc) == "(NONE)", cbc.stdout
    rsa_kx = s_client(tls_server.port, "-tls1_2", "-cipher", "AES128-GCM-SHA256", *cert)
    assert negotiated(rsa_kx) == "(NONE)", rsa_kx.stdout
    good = s_client(
        tls_server.port, "-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256",
        "-CAfile", certs.ca_certificate, *cert,
    )  # fmt: skip
    assert negotiated(good) == "ECDHE-RSA-AES128-GCM-SHA256", good.stdout + good.stderr
    assert "Verify return code: 0 (ok)" in good.stdout
    tls13 = s_client(tls_server.port, "-tls1_3", "-CAfile", certs.ca_certificate, *cert)
    assert negotiated(tls13).startswith("TLS_"), tls13.stdout
    reasons = caplog.text
    assert "UNSUPPORTED_PROTOCOL" in reasons or "WRONG_VERSION" in reasons
    assert "NO_SHARED_CIPHER" in reasons


def write_config(tmp_path: Path, certs: DevCerts, port: int, **remote: Any) -> Path:
    config = tmp_path / "scu.toml"
    lines = [
        "[tls]",
        f'certificate = "{certs.server_certificate}"',
        f'private_key = "{certs.server_key}"',
        f'ca_certificates = "{certs.ca_certificate}"',
        "[remotes.vault]",
        'ae_title = "DICOMVAULT"',
        'host = "localhost"',
        f"port = {port}",
        *(f"{key} = {str(value).lower()}" for key, value in remote.items()),
    ]
    config.write_text("\n".join(lines) + "\n")
    return config


def dv(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DV, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def test_our_scu_uses_tls_for_remotes_configured_so(
    tls_server: TlsServer, certs: DevCerts, tmp_path: Path
) -> None:
    config = write_config(tmp_path, certs, tls_server.port, tls=True)
    echo = dv("echo", "vault", "--config", config)
    assert echo.returncode == 0, echo.stderr
    assert "over TLS" in echo.stdout
    store = dv("store", CT, "--to", "vault", "--config", config)
    assert store.returncode == 0, store.stdout + store.stderr
    adhoc = dv("echo", f"DICOMVAULT@127.0.0.1:{tls_server.port}", "--tls", "--config", config)
    assert adhoc.returncode == 0, adhoc.stderr
    find = dv(
        "find", "vault", "-k", "PatientID", "--config", config, "--data-dir", tmp_path / "scu"
    )
    assert find.returncode == 0, find.stdout + find.stderr
    assert "1 match" in find.stdout
    # Without tls = true the SCU speaks plain DICOM, which the TLS port refuses.
    plain = dv("echo", "vault", "--config", write_config(tmp_path, certs, tls_server.port))
    assert plain.returncode == 1


def test_scu_refuses_a_server_it_cannot_verify(
    tls_server: TlsServer, certs: DevCerts, tmp_path: Path
) -> None:
    other = make_dev_certs(tmp_path / "other")
    config = write_config(tmp_path, certs, tls_server.port, tls=True)
    text = config.read_text().replace(str(certs.ca_certificate), str(other.ca_certificate))
    config.write_text(text)
    proc = dv("echo", "vault", "--config", config)
    assert proc.returncode == 1
    assert "certificate verification failed" in " ".join(proc.stderr.split())


# --- HTTPS -------------------------------------------------------------------------------


def test_https_healthz(tmp_path: Path, certs: DevCerts) -> None:
    settings = tls_settings(tmp_path, certs, mode="optional")
    archive = Archive.open(settings)

    async def make(sock: socket.socket, ready: asyncio.Event, stop: asyncio.Event) -> None:
        await serve_http(archive, settings, ready=ready, stop=stop, sock=sock)

    thread = ServerThread(make).start()
    try:
        verify = ssl.create_default_context(cafile=str(certs.ca_certificate))
        with httpx.Client(verify=verify, timeout=10) as client:
            answer = client.get(f"https://localhost:{thread.port}/healthz")
        assert answer.status_code == 200
        with httpx.Client(timeout=10) as plain, pytest.raises(httpx.HTTPError):
            plain.get(f"http://127.0.0.1:{thread.port}/healthz")
    finally:
        thread.close()
        archive.close()
    assert os.path.exists(settings.storage.path)


def test_https_refused_handshakes_are_security_alerts(
    tmp_path: Path, certs: DevCerts, caplog: pytest.LogCaptureFixture
) -> None:
    """TLS 1.1, plain HTTP and a client certificate from another CA on the HTTPS port:
    each refused, logged with the peer and audited as a Security Alert (PS3.15
    A.5.3.11); HTTPS keeps serving."""
    caplog.set_level(logging.INFO, "dicomvault")
    settings = tls_settings(tmp_path, certs, mode="required")
    archive = Archive.open(settings)
    other = make_dev_certs(tmp_path / "other-ca", ["elsewhere.example"])

    async def make(sock: socket.socket, ready: asyncio.Event, stop: asyncio.Event) -> None:
        await serve_http(
            archive, settings, ready=ready, stop=stop, sock=sock, tls_acceptor=TlsAcceptor
        )

    thread = ServerThread(make).start()
    try:
        old = s_client(thread.port, "-tls1_1", "-cert", certs.client_certificate,
                       "-key", certs.client_key)  # fmt: skip
        assert negotiated(old) == "(NONE)"
        with httpx.Client(timeout=10) as plain, pytest.raises(httpx.HTTPError):
            plain.get(f"http://127.0.0.1:{thread.port}/healthz")
        foreign = s_client(thread.port, "-cert", other.client_certificate,
                           "-key", other.client_key, "-CAfile", certs.ca_certificate)  # fmt: skip
        assert "HTTP/1.1 200" not in foreign.stdout
        deadline = time.monotonic() + 10
        while True:
            failures = [
                r.getMessage() for r in caplog.records if "HTTPS: TLS handshake" in r.getMessage()
            ]
            if len(failures) >= 3 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(failures) == 3, failures
        assert all("127.0.0.1:" in line for line in failures)
        verify = ssl.create_default_context(cafile=str(certs.ca_certificate))
        verify.load_cert_chain(str(certs.client_certificate), str(certs.client_key))
        with httpx.Client(verify=verify, timeout=10) as client:
            assert client.get(f"https://localhost:{thread.port}/healthz").status_code == 200
        assert audit.trail_of(archive).flush()
    finally:
        thread.close()
        archive.close()
    log = audit.audit_log_path(settings).read_text()
    alerts = [line for line in log.splitlines() if "TLS handshake from 127.0.0.1" in line]
    assert len(alerts) == 3, log[-2000:]
    assert all('csd-code="110113"' in line for line in alerts)  # Security Alert


@pytest.mark.dcmtk
def test_c_move_sub_association_over_tls(
    tls_server: TlsServer, certs: DevCerts, tmp_path: Path
) -> None:
    """The C-MOVE SCP's sub-association to a ``tls = true`` destination uses TLS, with our
    certificate (the destination requires one)."""
    import pydicom

    settings = load_settings(
        None,
        {
            "storage": {"path": tmp_path / "source", "fsync": False},
            "dicom": {"host": "127.0.0.1", "port": 0, "idle_timeout": 10, "artim_timeout": 3},
            "tls": {
                "certificate": certs.server_certificate,
                "private_key": certs.server_key,
                "ca_certificates": certs.ca_certificate,
            },
        },
    )
    settings.remotes["dest"] = RemoteAE(
        ae_title="DICOMVAULT", host="localhost", port=tls_server.port, tls=True
    )
    source = Archive.open(settings)

    async def make(sock: socket.socket, ready: asyncio.Event, stop: asyncio.Event) -> None:
        await serve_dicom(source, settings, ready=ready, stop=stop, sock=sock)

    thread = ServerThread(make).start()
    try:
        store = dcmtk("storescu", "-aec", "DICOMVAULT", "127.0.0.1", str(thread.port), CT)
        assert store.returncode == 0, store.stderr
        study = pydicom.dcmread(CT, stop_before_pixels=True).StudyInstanceUID
        move = dv(
            "move", f"DICOMVAULT@127.0.0.1:{thread.port}", "--dest", "DICOMVAULT",
            "-k", f"StudyInstanceUID={study}", "--data-dir", tmp_path / "scu",
        )  # fmt: skip
        assert move.returncode == 0, move.stdout + move.stderr
    finally:
        thread.close()
        source.close()
    assert tls_server.archive.stats().instances == 1


@pytest.mark.dcmtk
def test_a_tls_remote_must_call_over_tls(tmp_path: Path, certs: DevCerts) -> None:
    """A ``[remotes]`` entry with ``tls = true`` is recognized on the TLS port only: over
    plain TCP its AE title is refused (A-ASSOCIATE-RJ 1/1/3), so the title alone does not
    carry its rights (PS3.15 B.12)."""
    settings = tls_settings(tmp_path, certs)
    settings.security.trust_loopback = False
    settings.security.unknown_ae_permissions = []
    settings.remotes["ct"] = RemoteAE(ae_title="CT1", host="127.0.0.1", port=104, tls=True)
    archive = Archive.open(settings)
    context = server_context(settings.tls)
    plain_sock = socket.socket()
    plain_sock.bind(("127.0.0.1", 0))
    plain_sock.listen(16)
    plain_sock.setblocking(False)
    plain_port = plain_sock.getsockname()[1]

    async def make(sock: socket.socket, ready: asyncio.Event, stop: asyncio.Event) -> None:
        both = asyncio.Event()
        await asyncio.gather(
            serve_dicom(archive, settings, ready=ready, stop=stop, sock=sock, ssl=context),
            serve_dicom(archive, settings, ready=both, stop=stop, sock=plain_sock),
        )

    thread = ServerThread(make).start()
    try:
        over_tls = dcmtk(
            "echoscu", *dcmtk_tls(certs), "-aet", "CT1", "-aec", "DICOMVAULT", "localhost",
            str(thread.port),
        )  # fmt: skip
        assert over_tls.returncode == 0, over_tls.stderr
        plain = dcmtk("echoscu", "-aet", "CT1", "-aec", "DICOMVAULT", "127.0.0.1", str(plain_port))
        assert plain.returncode != 0
        assert "Calling AE Title Not Recognized" in plain.stdout + plain.stderr
    finally:
        thread.close()
        archive.close()
        plain_sock.close()


def _served_serial(port: int) -> int:
    """The serial number of the certificate a TLS server presents (no verification)."""
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        probe.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


@pytest.mark.dcmtk
def test_sighup_reloads_the_certificates(tmp_path: Path) -> None:
    """``kill -HUP``: renewed certificates are served to new connections without a
    restart; broken files leave the loaded ones in use (and say why)."""
    from tests.core.test_serve import Server, free_port

    first = make_dev_certs(tmp_path / "first")
    live = tmp_path / "live"
    live.mkdir()
    cert, key, ca = live / "server.pem", live / "server-key.pem", live / "ca.pem"
    cert.write_bytes(first.server_certificate.read_bytes())
    key.write_bytes(first.server_key.read_bytes())
    ca.write_bytes(first.ca_certificate.read_bytes())
    tls_port = free_port()
    config = tmp_path / "dv.toml"
    config.write_text(
        f'[tls]\nenabled = true\nhttps = true\ndicom_port = {tls_port}\ncertificate = "{cert}"\n'
        f'private_key = "{key}"\nca_certificates = "{ca}"\nclient_certificates = "optional"\n'
    )
    server = Server(tmp_path / "data", "--config", str(config))
    try:
        # The HTTPS listener of `serve` runs its handshakes in our acceptor: a TLS 1.1
        # client is refused and logged (and audited) as on the DICOM TLS port.
        assert negotiated(s_client(server.http_port, "-tls1_1")) == "(NONE)"
        server.wait_for_log("HTTPS: TLS handshake with 127.0.0.1", timeout=20)
        before = _served_serial(tls_port)
        second = make_dev_certs(tmp_path / "second")
        cert.write_bytes(second.server_certificate.read_bytes())
        key.write_bytes(second.server_key.read_bytes())
        ca.write_bytes(second.ca_certificate.read_bytes())
        server.proc.send_signal(signal.SIGHUP)
        server.wait_for_log("TLS certificate, key and CA bundle reloaded", timeout=20)
        after = _served_serial(tls_port)
        assert after != before
        assert after == x509.load_pem_x509_certificate(cert.read_bytes()).serial_number
        key.write_text("not a key")  # broken: the loaded certificate stays
        server.proc.send_signal(signal.SIGHUP)
        server.wait_for_log("TLS files not reloaded", timeout=20)
        assert _served_serial(tls_port) == after
    finally:
        assert server.stop() == 0
