"""A scripted raw-byte peer for what no real tool sends (PS3.8 9.2 Evt19, ARTIM, limits).

Each misbehaving peer gets an A-ABORT or a rejection, or is closed by the ARTIM timer,
and leaves a log line; valid peers are served meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import random
import resource
import socket
import struct
import time
from pathlib import Path

import pytest
from peers import ServerThread, dcmtk, needs_dcmtk, read_pdu

from dicomvault.net import commands as c
from dicomvault.net.items import PresentationContextRQ, UserInformation
from dicomvault.net.pdu import (
    A_ASSOCIATE_RQ,
    A_RELEASE_RQ,
    encode_pdata_header,
    encode_pdu,
)
from dicomvault.net.uids import IMPLICIT_VR_LITTLE_ENDIAN, VERIFICATION

ABORT_TYPE = 0x07


def _connect(port: int, timeout: float = 5) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock




def _wait_closed(sock: socket.socket, within: float) -> float:
    """Seconds until the server closed the connection (reading and dropping what comes)."""
    started = time.monotonic()
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except (TimeoutError, ConnectionResetError):
        pass
    return time.monotonic() - started


def _associate(port: int) -> socket.socket:
    rq = A_ASSOCIATE_RQ(
        "DICOMVAULT",
        "RAWPEER",
        [PresentationContextRQ(1, VERIFICATION, [IMPLICIT_VR_LITTLE_ENDIAN])],
        UserInformation(max_length=16384, implementation_class_uid="1.2.3.4"),
    )
    sock = _connect(port)
    sock.sendall(encode_pdu(rq))
    pdu_type, _ = read_pdu(sock)
    assert pdu_type == 0x02  # A-ASSOCIATE-AC
    return sock


def _echo_rq(message_id: int = 1) -> bytes:
    command = c.encode_command(
        {
            c.AffectedSOPClassUID: VERIFICATION,
            c.CommandField: c.C_ECHO_RQ,
            c.MessageID: message_id,
            c.CommandDataSetType: c.NO_DATA_SET,
        }
    )
    return encode_pdata_header(1, 0x03, len(command)) + command


def _assert_abort(sock: socket.socket, reason: int | None = None) -> None:
    pdu_type, body = read_pdu(sock)
    assert pdu_type == ABORT_TYPE, (pdu_type, body)
    assert body[2] == 2  # source: service-provider
    if reason is not None:
        assert body[3] == reason


def test_raw_echo_and_release(server: ServerThread) -> None:
    sock = _associate(server.port)
    sock.sendall(_echo_rq(7))
    pdu_type, body = read_pdu(sock)
    assert pdu_type == 0x04
    response = c.decode_command(body[6:])
    assert response[c.Status] == 0 and response[c.MessageIDBeingRespondedTo] == 7
    sock.sendall(encode_pdu(A_RELEASE_RQ()))
    assert read_pdu(sock)[0] == 0x06
    sock.close()


def test_pdu_claiming_4_gib(server: ServerThread, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "dicomvault.net")
    sock = _connect(server.port)
    sock.sendall(struct.pack(">BxI", 0x01, 0xFFFFFFFF) + b"x" * 100)
    _assert_abort(sock, reason=6)
    sock.close()
    _eventually(lambda: "invalid PDU" in caplog.text)


def test_pdata_larger_than_our_maximum(server: ServerThread) -> None:
    sock = _associate(server.port)
    sock.sendall(struct.pack(">BxI", 0x04, 262144 + 1))  # header only: refused at once
    _assert_abort(sock, reason=6)
    sock.close()


def test_pdv_longer_than_its_pdu(server: ServerThread) -> None:
    sock = _associate(server.port)
    sock.sendall(struct.pack(">BxIIBB", 0x04, 20, 100, 1, 3) + bytes(14))
    _assert_abort(sock)
    sock.close()


def test_pdv_on_unknown_context(server: ServerThread) -> None:
    sock = _associate(server.port)
    data = bytearray(_echo_rq())
    data[10] = 9  # presentation context ID 9 was never proposed
    sock.sendall(bytes(data))
    _assert_abort(sock)
    sock.close()


def test_unknown_pdu_type(server: ServerThread) -> None:
    sock = _associate(server.port)
    sock.sendall(struct.pack(">BxI", 0x09, 4) + bytes(4))
    _assert_abort(sock, reason=1)
    sock.close()


def test_associate_rq_twice(server: ServerThread) -> None:
    sock = _associate(server.port)
    rq = A_ASSOCIATE_RQ(
        "DICOMVAULT", "RAWPEER", [], UserInformation(implementation_class_uid="1.2")
    )
    sock.sendall(encode_pdu(rq))
    _assert_abort(sock, reason=2)  # unexpected PDU (AA-8)
    sock.close()


def test_http_request_on_dicom_port(server: ServerThread, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "dicomvault.net")
    sock = _connect(server.port)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    _assert_abort(sock, reason=1)
    sock.close()
    _eventually(lambda: "unrecognized PDU type 0x47" in caplog.text)


@needs_dcmtk
def test_random_bytes(server: ServerThread) -> None:
    rng = random.Random(1234)
    socks = [_connect(server.port) for _ in range(20)]
    started = time.monotonic()
    for sock in socks:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 2000))))
    assert dcmtk("echoscu", "-aec", "DICOMVAULT", "127.0.0.1", server.port).returncode == 0
    # Each gets an abort, or ARTIM (2 s) closes a connection left waiting for more bytes.
    for sock in socks:
        _wait_closed(sock, max(started + 5 - time.monotonic(), 0.1))
        sock.close()
    assert time.monotonic() - started < 5


def test_silent_peer_closed_by_artim(
    server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "dicomvault.net")
    sock = _connect(server.port)
    waited = _wait_closed(sock, 10)
    assert 1.5 <= waited < 5  # ARTIM is 2 s in the test policy
    sock.close()
    _eventually(lambda: "ARTIM" in caplog.text)


@needs_dcmtk
def test_drip_feed_is_bounded(server: ServerThread) -> None:
    rq = encode_pdu(
        A_ASSOCIATE_RQ(
            "DICOMVAULT",
            "DRIP",
            [PresentationContextRQ(1, VERIFICATION, [IMPLICIT_VR_LITTLE_ENDIAN])],
            UserInformation(max_length=16384, implementation_class_uid="1.2.3.4"),
        )
    )
    sock = _connect(server.port)
    started = time.monotonic()
    closed = False
    for byte in rq[:6]:
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        # A valid peer is served meanwhile.
        assert dcmtk("echoscu", "-aec", "DICOMVAULT", "127.0.0.1", server.port).returncode == 0
        time.sleep(1.0)
    if not closed:
        _wait_closed(sock, 5)
    assert time.monotonic() - started < 9
    sock.close()


@needs_dcmtk
def test_500_idle_connections(server: ServerThread) -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    count = min(500, (soft - 100) // 2)
    idle = [_connect(server.port) for _ in range(count)]
    try:
        result = dcmtk("echoscu", "-aec", "DICOMVAULT", "127.0.0.1", server.port)
        assert result.returncode == 0, result.stderr
        deadline = time.monotonic() + 8
        for sock in idle:
            assert _wait_closed(sock, max(deadline - time.monotonic(), 0.1)) < 8
    finally:
        for sock in idle:
            sock.close()


def test_too_many_associations_rejected() -> None:
    from peers import start_server

    from dicomvault.net import AcceptorPolicy, ServiceRegistry

    registry = ServiceRegistry()
    registry.add_verification()
    srv = start_server(registry, AcceptorPolicy(max_associations=1, artim_timeout=2))
    try:
        first = _associate(srv.port)
        second = _connect(srv.port)
        second.sendall(
            encode_pdu(
                A_ASSOCIATE_RQ(
                    "DICOMVAULT",
                    "SECOND",
                    [PresentationContextRQ(1, VERIFICATION, [IMPLICIT_VR_LITTLE_ENDIAN])],
                    UserInformation(max_length=0, implementation_class_uid="1.2"),
                )
            )
        )
        pdu_type, body = read_pdu(second)
        assert pdu_type == 0x03
        assert tuple(body[1:4]) == (2, 3, 2)  # rejected-transient, presentation, local limit
        second.close()
        first.sendall(encode_pdu(A_RELEASE_RQ()))
        assert read_pdu(first)[0] == 0x06
        first.close()
    finally:
        srv.close()


def _eventually(check: object, within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_idle_association_aborted() -> None:
    from peers import start_server

    from dicomvault.net import AcceptorPolicy, ServiceRegistry

    registry = ServiceRegistry()
    registry.add_verification()
    srv = start_server(registry, AcceptorPolicy(idle_timeout=1, artim_timeout=1))
    try:
        sock = _associate(srv.port)
        sock.sendall(_echo_rq(1))
        assert read_pdu(sock)[0] == 0x04
        started = time.monotonic()
        pdu_type, _body = read_pdu(sock)  # then silence: A-ABORT after the idle timeout
        assert pdu_type == ABORT_TYPE
        assert 0.8 <= time.monotonic() - started < 4
        sock.close()
    finally:
        srv.close()


def test_stall_mid_data_set_aborted_and_discarded(tmp_path: Path) -> None:
    from peers import FileStoreHandler, start_server

    from dicomvault.net import AcceptorPolicy, ServiceRegistry

    handler = FileStoreHandler(tmp_path)
    registry = ServiceRegistry()
    registry.add_store(handler)
    srv = start_server(registry, AcceptorPolicy(idle_timeout=1, artim_timeout=1))
    ct = "1.2.840.10008.5.1.4.1.1.2"
    try:
        rq = A_ASSOCIATE_RQ(
            "DICOMVAULT",
            "STALLER",
            [PresentationContextRQ(1, ct, [IMPLICIT_VR_LITTLE_ENDIAN])],
            UserInformation(max_length=16384, implementation_class_uid="1.2.3.4"),
        )
        sock = _connect(srv.port)
        sock.sendall(encode_pdu(rq))
        assert read_pdu(sock)[0] == 0x02
        command = c.encode_command(
            {
                c.AffectedSOPClassUID: ct,
                c.CommandField: c.C_STORE_RQ,
                c.MessageID: 1,
                c.Priority: 0,
                c.CommandDataSetType: 0,
                c.AffectedSOPInstanceUID: "1.2.3",
            }
        )
        sock.sendall(encode_pdata_header(1, 0x03, len(command)) + command)
        sock.sendall(encode_pdata_header(1, 0x00, 100) + bytes(100))  # not the last fragment
        started = time.monotonic()
        assert read_pdu(sock)[0] == ABORT_TYPE
        assert time.monotonic() - started < 4
        sock.close()
    finally:
        srv.close()
    (record,) = handler.received
    assert record.aborted and not record.path.exists()


def test_failing_policy_hook_rejects() -> None:
    from peers import start_server

    from dicomvault.net import AcceptorPolicy, ServiceRegistry

    def broken(title: str) -> bool:
        raise RuntimeError("policy store unavailable")

    registry = ServiceRegistry()
    registry.add_verification()
    srv = start_server(registry, AcceptorPolicy(calling_ae_allowed=broken, artim_timeout=1))
    try:
        sock = _connect(srv.port)
        sock.sendall(
            encode_pdu(
                A_ASSOCIATE_RQ(
                    "DICOMVAULT",
                    "ANY",
                    [PresentationContextRQ(1, VERIFICATION, [IMPLICIT_VR_LITTLE_ENDIAN])],
                    UserInformation(implementation_class_uid="1.2"),
                )
            )
        )
        pdu_type, body = read_pdu(sock)
        assert pdu_type == 0x03 and body[1] == 2  # rejected-transient
        sock.close()
    finally:
        srv.close()


def test_c_cancel_is_accepted_silently(
    server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "dicomvault.net")
    sock = _associate(server.port)
    cancel = c.encode_command(
        {
            c.CommandField: c.C_CANCEL_RQ,
            c.MessageIDBeingRespondedTo: 3,
            c.CommandDataSetType: c.NO_DATA_SET,
        }
    )
    sock.sendall(encode_pdata_header(1, 0x03, len(cancel)) + cancel)
    sock.sendall(_echo_rq(4))  # no response to C-CANCEL; the next request is answered
    pdu_type, body = read_pdu(sock)
    assert pdu_type == 0x04
    assert c.decode_command(body[6:])[c.MessageIDBeingRespondedTo] == 4
    sock.sendall(encode_pdu(A_RELEASE_RQ()))
    assert read_pdu(sock)[0] == 0x06
    sock.close()
    _eventually(lambda: "C-CANCEL for message 3" in caplog.text)


def test_unknown_operation_answered_0211(server: ServerThread) -> None:
    sock = _associate(server.port)
    find = c.encode_command(
        {
            c.AffectedSOPClassUID: VERIFICATION,
            c.CommandField: c.C_FIND_RQ,
            c.MessageID: 9,
            c.Priority: 0,
            c.CommandDataSetType: 0x0000,
        }
    )
    sock.sendall(encode_pdata_header(1, 0x03, len(find)) + find)
    sock.sendall(encode_pdata_header(1, 0x02, 8) + bytes(8))  # its (ignored) identifier
    pdu_type, body = read_pdu(sock)
    assert pdu_type == 0x04
    response = c.decode_command(body[6:])
    assert response[c.CommandField] == c.C_FIND_RSP
    assert response[c.Status] == 0x0211
    sock.close()


def test_unsupported_protocol_version_rejected(server: ServerThread) -> None:
    rq = A_ASSOCIATE_RQ(
        "DICOMVAULT",
        "FUTURE",
        [PresentationContextRQ(1, VERIFICATION, [IMPLICIT_VR_LITTLE_ENDIAN])],
        UserInformation(implementation_class_uid="1.2"),
        protocol_version=2,  # bit 0 (version 1) not set: PS3.8 9.3.2
    )
    sock = _connect(server.port)
    sock.sendall(encode_pdu(rq))
    pdu_type, body = read_pdu(sock)
    assert pdu_type == 0x03
    assert tuple(body[1:4]) == (1, 2, 2)  # permanent, ACSE, protocol version not supported
    sock.close()
