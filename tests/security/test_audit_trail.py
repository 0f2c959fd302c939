"""The audit trail (issue 7 part 5, PS3.15 A.5) fed by real peers over 127.0.0.1 —
pynetdicom and DCMTK (storescu, findscu) — into the audit log file and the index,
syslog to real UDP and TLS listeners, and ``dicomvault audit``."""

from __future__ import annotations

import asyncio
import base64
import secrets
import socket
import ssl
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pynetdicom import AE, build_role, evt

from dicomvault.archive import Archive
from dicomvault.archive import audit as trail_api
from dicomvault.archive.audit import AuditFilter, AuditRow, AuditTrail, audit_log_path, trail_of
from dicomvault.cli.main import cli
from dicomvault.config import Settings, load_settings
from dicomvault.dimse.server import serve_dicom
from dicomvault.security import audit as msg
from dicomvault.security.certs import DevCerts, make_dev_certs
from dicomvault.security.tls import server_context
from tests.core.dicomfiles import make_dataset, write_part10
from tests.net.peers import DCMTK_ENV, ServerThread, pynetdicom_associate
from tests.web.conftest import WebServer, start_web, web_settings

CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_GET = "1.2.840.10008.5.1.4.1.2.2.3"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"


def generate_uid() -> str:
    """A short unique Study Instance UID (its series UID adds ".1")."""
    return f"1.2.826.0.1.3680043.8.498.77.{secrets.randbelow(10**15)}"


def wait_rows(archive: Archive, n: int, timeout: float = 10.0, **where: Any) -> list[AuditRow]:
    """At least ``n`` recorded messages matching ``where`` (bounded wait: the end of an
    association reaches the server after the peer returns)."""
    deadline = time.monotonic() + timeout
    while True:
        trail_of(archive).flush(5)
        rows = trail_api.search(archive, AuditFilter(limit=1000, **where))
        if len(rows) >= n or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def log_lines(settings: Settings) -> list[str]:
    path = audit_log_path(settings)
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def xml_of(row: AuditRow) -> ET.Element:
    return ET.fromstring(row.xml)


def files(tmp_path: Path, studies: dict[str, int], patient: str = "PID-A") -> list[Path]:
    out = []
    for study, count in studies.items():
        for _ in range(count):
            ds = make_dataset(study=study, series=study + ".1")
            ds.PatientID = patient
            out.append(write_part10(ds, tmp_path / f"{ds.SOPInstanceUID}.dcm"))
    return out


def ae(title: str) -> AE:
    peer = AE(ae_title=title)
    peer.acse_timeout = peer.dimse_timeout = peer.network_timeout = 10
    return peer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[WebServer]:
    yield from start_web(web_settings(tmp_path))


def store_pynetdicom(port: int, paths: list[Path], title: str = "STORESCU") -> list[int]:
    from pydicom import dcmread

    peer = ae(title)
    peer.add_requested_context(CT, [EXPLICIT_LE, IMPLICIT_LE])
    assoc = peer.associate("127.0.0.1", port, ae_title="DICOMVAULT")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(dcmread(p)).Status) for p in paths]
    finally:
        assoc.release()


def test_c_store_one_message_per_association_and_study(server: WebServer, tmp_path: Path) -> None:
    """Six C-STOREs of two studies on one association: TWO Instances Transferred
    messages (action C), written when the association ends, in the file and the table."""
    a, b = generate_uid(), generate_uid()
    statuses = store_pynetdicom(server.dimse_port, files(tmp_path, {a: 4, b: 2}))
    assert statuses == [0] * 6
    rows = wait_rows(server.archive, 2, event_id="110104")
    assert len(rows) == 2
    assert {r.study_instance_uid for r in rows} == {a, b}
    for row in rows:
        assert (row.action, row.outcome, row.user, row.peer) == ("C", 0, "STORESCU", "127.0.0.1")
        assert row.patient_id == "PID-A"
        root = xml_of(row)
        study = root.find("ParticipantObjectIdentification")
        assert study is not None and study.get("ParticipantObjectID") == row.study_instance_uid
        counts = [
            s.get("NumberOfInstances")
            for s in study.findall("ParticipantObjectDescription/SOPClass")
        ]
        assert counts == (["4"] if row.study_instance_uid == a else ["2"])
    lines = [line for line in log_lines(server.settings) if 'csd-code="110104"' in line]
    assert len(lines) == 2
    assert all(line.startswith("<85>1 ") and " DICOM+RFC3881 - \ufeff<AuditMessage>" in line
               for line in lines)  # fmt: skip


def test_dcmtk_storescu_evil_ae_title_and_patient_are_escaped(
    server: WebServer, tmp_path: Path
) -> None:
    """storescu with calling AE ``../x`` and a ``<script>`` Patient ID: both appear as
    text in the XML, never as markup, in the file and the table."""
    evil = "<script>x</script>"
    paths = files(tmp_path, {generate_uid(): 1}, patient=evil)
    import subprocess

    result = subprocess.run(
        ["/usr/bin/storescu", "-aet", "../x", "-aec", "DICOMVAULT", "127.0.0.1",
         str(server.dimse_port), str(paths[0])],
        env=DCMTK_ENV, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = wait_rows(server.archive, 1, event_id="110104", user="../x")
    assert len(rows) == 1
    assert rows[0].patient_id == evil
    assert "<script>" not in rows[0].xml
    root = xml_of(rows[0])
    assert root.findall("ActiveParticipant")[0].get("UserID") == "../x"
    patient = root.findall("ParticipantObjectIdentification")[-1]
    assert patient.get("ParticipantObjectID") == evil
    text = "\n".join(log_lines(server.settings))
    assert "../x" in text and "<script>" not in text and "&lt;script&gt;" in text


def test_dcmtk_findscu_is_a_query_message(server: WebServer, tmp_path: Path) -> None:
    """C-FIND from findscu: Query (110112) with the Identifier base64 and its SOP class."""
    import subprocess

    result = subprocess.run(
        ["/usr/bin/findscu", "-S", "-aet", "FINDER", "-aec", "DICOMVAULT",
         "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=PID-Q*", "-k", "StudyInstanceUID",
         "127.0.0.1", str(server.dimse_port)],
        env=DCMTK_ENV, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = wait_rows(server.archive, 1, event_id="110112", user="FINDER")
    assert len(rows) == 1
    obj = xml_of(rows[0]).find("ParticipantObjectIdentification")
    assert obj is not None
    assert obj.get("ParticipantObjectID") == STUDY_FIND
    query = base64.b64decode(obj.findtext("ParticipantObjectQuery", ""))
    assert b"PID-Q*" in query and b"STUDY" in query


def test_pynetdicom_c_get_begin_and_transferred(server: WebServer, tmp_path: Path) -> None:
    """C-GET: Begin Transferring (110102) then Instances Transferred, action R, with the
    requestor as destination."""
    study = generate_uid()
    for path in files(tmp_path, {study: 2}):
        server.archive.store_file(path)
    peer = ae("GETTER")
    peer.add_requested_context(STUDY_GET)
    peer.add_requested_context(CT, [EXPLICIT_LE, IMPLICIT_LE])
    received: list[str] = []

    def on_store(event: Any) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0

    assoc = peer.associate(
        "127.0.0.1", server.dimse_port, ae_title="DICOMVAULT",
        ext_neg=[build_role(CT, scp_role=True)], evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )  # fmt: skip
    assert assoc.is_established
    from pydicom import Dataset

    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study
    try:
        statuses = [int(s.Status) for s, _ in assoc.send_c_get(query, STUDY_GET) if s]
    finally:
        assoc.release()
    assert statuses[-1] == 0 and len(received) == 2
    begin = wait_rows(server.archive, 1, event_id="110102")
    sent = wait_rows(server.archive, 1, event_id="110104", study=study)
    assert len(begin) == 1 and begin[0].study_instance_uid == study
    assert [(r.action, r.outcome, r.user) for r in sent] == [("R", 0, "GETTER")]
    assert sent[0].patient_id == "PID-A"


def test_rejected_association_is_a_security_alert(tmp_path: Path) -> None:
    """An unknown calling AE with no permissions: A-ASSOCIATE-RJ and a Security Alert,
    Node Authentication (110113 / 110126)."""
    settings = web_settings(
        tmp_path, security={"trust_loopback": False, "unknown_ae_permissions": []}
    )
    for server in start_web(settings):
        peer = ae("STRANGER")
        peer.add_requested_context("1.2.840.10008.1.1")
        assoc = pynetdicom_associate(peer, server.dimse_port, ae_title="DICOMVAULT")
        assert assoc.is_rejected
        rows = wait_rows(server.archive, 1, event_id="110113")
        # One alert per rejected attempt (pynetdicom_associate may need a second one).
        assert rows and {(r.event_type, r.outcome, r.user) for r in rows} == {
            ("110126", 4, "STRANGER")
        }
        assert all("rejected" in r.xml for r in rows)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    return make_dev_certs(tmp_path_factory.mktemp("audit-certs"))


def test_failed_tls_handshake_is_a_security_alert(tmp_path: Path, certs: DevCerts) -> None:
    """Plain bytes on the DICOM-over-TLS port: Security Alert, Node Authentication."""
    settings = load_settings(
        None,
        {
            "storage": {"path": tmp_path / "data", "fsync": False},
            "dicom": {"host": "127.0.0.1", "port": 0, "artim_timeout": 3},
            "tls": {
                "enabled": True,
                "certificate": certs.server_certificate,
                "private_key": certs.server_key,
                "ca_certificates": certs.ca_certificate,
            },
        },
    )
    archive = Archive.open(settings)
    context = server_context(settings.tls)

    async def make(sock: socket.socket, ready: asyncio.Event, stop: asyncio.Event) -> None:
        await serve_dicom(archive, settings, ready=ready, stop=stop, sock=sock, ssl=context)

    thread = ServerThread(make).start()
    try:
        with socket.create_connection(("127.0.0.1", thread.port), timeout=5) as plain:
            plain.sendall(b"\x01\x00\x00\x00\x00\xcd" + bytes(200))  # an A-ASSOCIATE-RQ start
            plain.recv(100)
        rows = wait_rows(archive, 1, event_id="110113")
        assert [(r.event_type, r.peer) for r in rows] == [("110126", "127.0.0.1")]
        assert "TLS handshake" in rows[0].xml
    finally:
        thread.close()
        trail_api.close_trail(archive)
        archive.close()


# -- syslog ---------------------------------------------------------------------------


def _trail_settings(tmp_path: Path, **audit: Any) -> Settings:
    settings = web_settings(tmp_path, audit=audit)
    Archive.open(settings).close()  # the index exists
    return settings


def _alert(trail: AuditTrail) -> msg.AuditMessage:
    return msg.security_alert(
        trail.source, trail.archive_participant(), msg.SOFTWARE_CONFIGURATION,
        subject="<script>", description="test",
    )  # fmt: skip


def test_syslog_over_udp(tmp_path: Path) -> None:
    """RFC 5426: one datagram per message, RFC 5424 with facility 10."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.settimeout(10)
        port = listener.getsockname()[1]
        trail = AuditTrail(_trail_settings(tmp_path, syslog=f"udp://127.0.0.1:{port}"))
        try:
            trail.record(_alert(trail))
            data = listener.recv(65536)
        finally:
            trail.close()
    line = data.decode("utf-8")
    assert line.startswith("<84>1 ") and " dicomvault " in line and " DICOM+RFC3881 - " in line
    root = ET.fromstring(line.partition(" - \ufeff")[2])
    assert root.find("EventIdentification/EventID") is not None


def test_syslog_over_tls(tmp_path: Path, certs: DevCerts) -> None:
    """RFC 5425: TLS, the repository verified against tls.ca_certificates, octet
    counting framing ``LEN SP MSG``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs.server_certificate, certs.server_key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]
    got: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with context.wrap_socket(conn, server_side=True) as tls:
            tls.settimeout(10)
            data = b""
            while (
                b" " not in data
                or len(data) < int(data.split(b" ", 1)[0]) + len(data.split(b" ", 1)[0]) + 1
            ):
                chunk = tls.recv(65536)
                if not chunk:
                    break
                data += chunk
            got.append(data)

    thread = threading.Thread(target=serve)
    thread.start()
    settings = _trail_settings(tmp_path, syslog=f"tls://127.0.0.1:{port}")
    settings.tls.ca_certificates = certs.ca_certificate
    trail = AuditTrail(settings)
    try:
        trail.record(_alert(trail))
        thread.join(15)
    finally:
        trail.close()
        listener.close()
    assert got, "nothing arrived over TLS"
    length, _, message = got[0].partition(b" ")
    assert int(length) == len(message)
    assert message.startswith(b"<84>1 ")  # facility 10, outcome 4: warning
    assert b"&lt;script&gt;" in message


def test_unreachable_syslog_does_not_slow_c_store(tmp_path: Path) -> None:
    """A syslog target that accepts TCP but never answers the TLS handshake: C-STORE
    goes on at full speed and the messages still reach the file and the table."""
    black_hole = socket.create_server(("127.0.0.1", 0), backlog=1)
    port = black_hole.getsockname()[1]
    settings = web_settings(tmp_path, audit={"syslog": f"tls://127.0.0.1:{port}"})
    try:
        for server in start_web(settings):
            paths = files(tmp_path, {generate_uid(): 20})
            started = time.monotonic()
            assert store_pynetdicom(server.dimse_port, paths) == [0] * 20
            elapsed = time.monotonic() - started
            assert elapsed < 4.0, elapsed  # the syslog handshake alone would take 5 s
            rows = wait_rows(server.archive, 1, event_id="110104")
            assert len(rows) == 1
            assert any('csd-code="110104"' in line for line in log_lines(settings))
            trail_api.close_trail(server.archive)
    finally:
        black_hole.close()


# -- dicomvault audit -----------------------------------------------------------------


def test_cli_audit_filters_and_user_changes(tmp_path: Path) -> None:
    settings = web_settings(tmp_path)
    data = str(settings.storage.path)
    for server in start_web(settings):
        store_pynetdicom(server.dimse_port, files(tmp_path, {generate_uid(): 1}), title="MOD1")
        peer = ae("FINDER")
        peer.add_requested_context(STUDY_FIND)
        assoc = peer.associate("127.0.0.1", server.dimse_port, ae_title="DICOMVAULT")
        from pydicom import Dataset

        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        q.PatientID = "*"
        list(assoc.send_c_find(q, STUDY_FIND))
        assoc.release()
        wait_rows(server.archive, 2)
        trail_api.close_trail(server.archive)
    runner = CliRunner()
    added = runner.invoke(
        cli, ["user", "add", "alice", "--role", "viewer", "--password-stdin", "--data-dir", data],
        input="correct horse battery\n",
    )  # fmt: skip
    assert added.exit_code == 0, added.output

    def run(*args: str) -> list[dict[str, Any]]:
        import json

        result = runner.invoke(cli, ["audit", "--json", "--data-dir", data, *args])
        assert result.exit_code == 0, result.output
        return [json.loads(line) for line in result.output.splitlines() if line.strip()]

    assert {e["event_id"] for e in run("--event", "query")} == {"110112"}
    assert {e["user"] for e in run("--event", "110112")} == {"FINDER"}
    assert [e["event_id"] for e in run("--user", "MOD1")] == ["110104"]
    alerts = run("--event", "security-alert")
    assert [(e["event_type"], e["outcome"]) for e in alerts] == [("110131", 0)]
    assert "alice" in alerts[0]["xml"]
    assert run("--outcome", "4") == []
    assert len(run("--limit", "1")) == 1
    assert run("--since", "2999-01-01") == []
    table = runner.invoke(cli, ["audit", "--data-dir", data])
    assert table.exit_code == 0 and "110104" in table.output
    bad = runner.invoke(cli, ["audit", "--data-dir", data, "--since", "yesterday"])
    assert bad.exit_code == 2
