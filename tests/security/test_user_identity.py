"""User Identity Negotiation (PS3.7 D.3.3.7; issue "Security", part 3) against pynetdicom
and a raw-byte peer on 127.0.0.1, with ``security.trust_loopback = false`` unless said.

Users are the archive's HTTP users (argon2id); a valid one adds their role's services to
the calling AE's; ``security.user_identity = "required"`` rejects associations without a
valid username and passcode with A-ASSOCIATE-RJ 1/1/1 (PS3.8 Table 9-21).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pynetdicom.pdu_primitives import UserIdentityNegotiation

from dicomvault.archive import Archive, users
from dicomvault.config import Settings
from dicomvault.net.items import PresentationContextRQ, UserIdentity, UserInformation
from dicomvault.net.pdu import A_ASSOCIATE_RQ, encode_pdu
from dicomvault.net.uids import IMPLICIT_VR_LITTLE_ENDIAN
from tests.net.peers import read_pdu

from .test_access import (
    CT,
    STUDY_FIND,
    VERIFICATION,
    _associate,
    _find_statuses,
    _rejection,
    _result,
    _settings,
)

PASSWORD = "correct horse battery staple"


def _identity(
    kind: int, primary: bytes, secondary: bytes = b"", positive: bool = False
) -> UserIdentityNegotiation:
    user = UserIdentityNegotiation()
    user.user_identity_type = kind
    user.primary_field = primary
    if kind == 2:
        user.secondary_field = secondary
    user.positive_response_requested = positive
    return user


@contextmanager
def _served(settings: Settings) -> Iterator[int]:
    """The archive server of ``settings``, with user ``vera`` (role viewer)."""
    from qr_peers import archive_server  # on sys.path thanks to test_access

    archive = Archive.open(settings)
    try:
        users.add_user(archive, "vera", PASSWORD, "viewer")
    finally:
        archive.close()
    with archive_server(settings, [CT]) as (_, port):
        yield port


def test_viewer_gains_find_and_gets_a_positive_response(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with _served(_settings(tmp_path, "")) as port:
        # Without an identity an unknown AE has echo and store only.
        assoc, _ = _associate(port, "STRANGER", (VERIFICATION, STUDY_FIND))
        try:
            assert assoc.is_established
            assert _result(assoc, STUDY_FIND) == 1
        finally:
            assoc.release()
        with caplog.at_level(logging.INFO, logger="dicomvault.dimse"):
            assoc, _ = _associate(
                port,
                "STRANGER",
                (VERIFICATION, STUDY_FIND),
                ext_neg=[_identity(2, b"vera", PASSWORD.encode(), positive=True)],
            )
        try:
            assert assoc.is_established
            # Username and passcode: positive response, empty server response (D.3.3.7.2).
            assert assoc.acceptor.user_identity is not None
            assert assoc.acceptor.user_identity.server_response == b""
            accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
            assert accepted == {VERIFICATION, STUDY_FIND}
            assert _find_statuses(assoc)[-1] == 0
        finally:
            assoc.release()
    assert "user 'vera' authenticated, role viewer" in caplog.text


def test_wrong_passcode_optional_goes_on_without_the_users_rights(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with _served(_settings(tmp_path, "")) as port:
        with caplog.at_level(logging.WARNING, logger="dicomvault.dimse"):
            assoc, _ = _associate(
                port,
                "STRANGER",
                (VERIFICATION, STUDY_FIND),
                ext_neg=[_identity(2, b"vera", b"not the password", positive=True)],
            )
        try:
            assert assoc.is_established
            assert assoc.acceptor.user_identity is None  # no positive response
            assert _result(assoc, STUDY_FIND) == 1
            assert int(assoc.send_c_echo().Status) == 0
        finally:
            assoc.release()
    assert "user 'vera': wrong user name or passcode" in caplog.text


def test_username_only_grants_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with _served(_settings(tmp_path, "")) as port:
        with caplog.at_level(logging.WARNING, logger="dicomvault.dimse"):
            assoc, _ = _associate(
                port,
                "STRANGER",
                (VERIFICATION, STUDY_FIND),
                ext_neg=[_identity(1, b"vera", positive=True)],
            )
        try:
            assert assoc.is_established
            assert assoc.acceptor.user_identity is None
            assert _result(assoc, STUDY_FIND) == 1
        finally:
            assoc.release()
    assert "a username alone is not authenticated" in caplog.text


@pytest.mark.parametrize(
    "ext_neg",
    [
        [],
        [_identity(2, b"vera", b"not the password")],
        [_identity(2, b"nobody", PASSWORD.encode())],
        [_identity(1, b"vera")],
        [_identity(5, b"eyJhbGciOiJIUzI1NiJ9.e30.sig", positive=True)],
    ],
    ids=["none", "wrong-passcode", "unknown-user", "username-only", "jwt"],
)
def test_required_rejects_without_a_valid_user(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, ext_neg: list[Any]
) -> None:
    with _served(_settings(tmp_path, "", user_identity="required")) as port:
        with caplog.at_level(logging.WARNING, logger="dicomvault"):
            assoc, received = _associate(port, "STRANGER", (VERIFICATION,), ext_neg=ext_neg)
        assert assoc.is_rejected
        # rejected-permanent, service-user, no-reason-given (PS3.8 Table 9-21)
        assert _rejection(received) == (1, 1, 1)
    assert "security.user_identity is required" in caplog.text
    if ext_neg and ext_neg[0].user_identity_type == 5:
        assert "JWT identities are not supported" in caplog.text


def test_required_accepts_a_valid_user(tmp_path: Path) -> None:
    with _served(_settings(tmp_path, "", user_identity="required")) as port:
        assoc, _ = _associate(
            port, "STRANGER", (VERIFICATION,), ext_neg=[_identity(2, b"vera", PASSWORD.encode())]
        )
        try:
            assert assoc.is_established
            assert assoc.acceptor.user_identity is None  # none requested
            assert int(assoc.send_c_echo().Status) == 0
        finally:
            assoc.release()


def test_required_exempts_trusted_loopback(tmp_path: Path) -> None:
    settings = _settings(tmp_path, "", user_identity="required", trust_loopback=True)
    with _served(settings) as port:
        assoc, _ = _associate(port, "ANYONE", (VERIFICATION, STUDY_FIND))
        try:
            assert assoc.is_established
            assert _find_statuses(assoc)[-1] == 0
        finally:
            assoc.release()


def test_rejected_ae_stays_rejected_with_a_valid_user(tmp_path: Path) -> None:
    with _served(_settings(tmp_path, "", unknown_ae_permissions=[])) as port:
        assoc, received = _associate(
            port, "STRANGER", (VERIFICATION,), ext_neg=[_identity(2, b"vera", PASSWORD.encode())]
        )
        assert assoc.is_rejected
        assert _rejection(received) == (1, 1, 3)




def test_malformed_user_identity_item_is_aborted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rq = A_ASSOCIATE_RQ(
        "DICOMVAULT",
        "RAWPEER",
        [PresentationContextRQ(1, VERIFICATION, [IMPLICIT_VR_LITTLE_ENDIAN])],
        UserInformation(
            max_length=16384,
            implementation_class_uid="1.2.3.4",
            user_identity=UserIdentity(2, True, b"vera", b"pw"),
        ),
    )
    good = encode_pdu(rq)
    field = b"\x02\x01\x00\x04vera"  # type, positive response, primary field length
    assert good.count(field) == 1
    bad = good.replace(field, b"\x02\x01\xff\xf0vera")  # primary field runs past the item
    with _served(_settings(tmp_path, "", user_identity="required")) as port:
        with (
            caplog.at_level(logging.WARNING, logger="dicomvault"),
            socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
        ):
            sock.sendall(bad)
            pdu_type, body = read_pdu(sock)
        assert pdu_type == 0x07, (pdu_type, body)  # A-ABORT
        assert body[2] == 2 and body[3] == 6  # service-provider, invalid PDU parameter value
        # The server goes on serving: the same request without the broken item is
        # answered (rejected: identity is required), over raw bytes too — pynetdicom's
        # requestor can lose a fast answer (DEVELOPERS.md pitfalls).
        plain = A_ASSOCIATE_RQ(
            "DICOMVAULT",
            "RAWPEER",
            [PresentationContextRQ(1, VERIFICATION, [IMPLICIT_VR_LITTLE_ENDIAN])],
            UserInformation(max_length=16384, implementation_class_uid="1.2.3.4"),
        )
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(encode_pdu(plain))
            pdu_type, body = read_pdu(sock)
        assert pdu_type == 0x03, (pdu_type, body)  # A-ASSOCIATE-RJ
        assert (body[1], body[2], body[3]) == (1, 1, 1)
    assert "user identity primary field runs past its sub-item" in caplog.text
