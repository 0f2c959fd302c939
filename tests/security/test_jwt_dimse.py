"""JWT User Identity Negotiation (PS3.7 D.3.3.7, type 5) against pynetdicom on 127.0.0.1,
``security.trust_loopback = false``: a valid token adds its mapped role's services and
gets the positive response asked for (an empty server response, PS3.7 D.3.3.7.2); an
invalid one, or one without a mapped role, counts as no user — rejected A-ASSOCIATE-RJ
1/1/1 under ``security.user_identity = "required"``."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pynetdicom.pdu_primitives import UserIdentityNegotiation

from dicomvault.config import Settings

from .test_access import (
    CT,
    CT_STORAGE,
    STUDY_FIND,
    VERIFICATION,
    _associate,
    _find_statuses,
    _rejection,
    _result,
    _settings,
)
from .test_jwt_validation import ISSUER, ROLE_MAP, Signer, claims, write_jwks

STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"


def _jwt_identity(token: str, positive: bool = False) -> UserIdentityNegotiation:
    item = UserIdentityNegotiation()
    item.user_identity_type = 5
    item.primary_field = token.encode("ascii")
    item.positive_response_requested = positive
    return item


def _jwt_settings(tmp_path: Path, signer: Signer, **security: Any) -> Settings:
    jwks = write_jwks(tmp_path / "jwks.json", signer)
    toml = (
        "[jwt]\n"
        f"jwks_file = {json.dumps(str(jwks))}\n"
        f"issuer = {json.dumps(ISSUER)}\n"
        'audience = "dicomvault"\n'
        "[jwt.role_map]\n" + "".join(f'"{k}" = "{v}"\n' for k, v in ROLE_MAP.items())
    )
    return _settings(tmp_path, toml, **security)


@contextmanager
def _served(settings: Settings) -> Iterator[int]:
    from qr_peers import archive_server  # on sys.path thanks to test_access

    with archive_server(settings, [CT]) as (_, port):
        yield port


@pytest.fixture
def signer() -> Signer:
    return Signer("k1")


def test_viewer_jwt_gains_find_and_gets_a_positive_response(
    tmp_path: Path, signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    with _served(_jwt_settings(tmp_path, signer)) as port:
        with caplog.at_level(logging.INFO, logger="dicomvault.dimse"):
            assoc, _ = _associate(
                port,
                "STRANGER",
                (VERIFICATION, STUDY_FIND, STORAGE_COMMITMENT),
                ext_neg=[_jwt_identity(signer.token(claims("viewer")), positive=True)],
            )
        try:
            assert assoc.is_established
            assert assoc.acceptor.user_identity is not None
            assert assoc.acceptor.user_identity.server_response == b""
            assert _find_statuses(assoc)[-1] == 0
            assert _result(assoc, STORAGE_COMMITMENT) == 1  # not a viewer's service
        finally:
            assoc.release()
    assert "JWT user 'dr.house' authenticated, role viewer" in caplog.text


def test_admin_jwt_gains_every_service(tmp_path: Path, signer: Signer) -> None:
    with _served(_jwt_settings(tmp_path, signer)) as port:
        assoc, _ = _associate(
            port,
            "STRANGER",
            (VERIFICATION, STUDY_FIND, STORAGE_COMMITMENT, CT_STORAGE),
            ext_neg=[_jwt_identity(signer.token(claims("admin")))],
        )
        try:
            assert assoc.is_established
            assert assoc.acceptor.user_identity is None  # no positive response asked for
            accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
            assert accepted == {VERIFICATION, STUDY_FIND, STORAGE_COMMITMENT, CT_STORAGE}
        finally:
            assoc.release()


def test_invalid_jwt_optional_goes_on_with_the_aes_rights(
    tmp_path: Path, signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    expired = signer.token(claims("admin", exp=1_000_000))
    with _served(_jwt_settings(tmp_path, signer)) as port:
        with caplog.at_level(logging.WARNING, logger="dicomvault.dimse"):
            assoc, _ = _associate(
                port,
                "STRANGER",
                (VERIFICATION, STUDY_FIND),
                ext_neg=[_jwt_identity(expired, positive=True)],
            )
        try:
            assert assoc.is_established
            assert assoc.acceptor.user_identity is None  # no positive response
            assert _result(assoc, STUDY_FIND) == 1
            assert int(assoc.send_c_echo().Status) == 0
        finally:
            assoc.release()
    assert "user identity JWT refused: JWT expired (going on with the AE's rights" in caplog.text


@pytest.mark.parametrize(
    ("role", "extra", "logged"),
    [
        ("viewer", {"exp": 1_000_000}, "JWT expired"),
        ("viewer", {"iss": "https://evil.example"}, "JWT issuer is not"),
        (None, {"roles": ["nurse"]}, "no name in the 'roles' claim is in jwt.role_map"),
    ],
    ids=["expired", "wrong-issuer", "no-mapped-role"],
)
def test_required_rejects_an_invalid_jwt(
    tmp_path: Path,
    signer: Signer,
    caplog: pytest.LogCaptureFixture,
    role: str | None,
    extra: dict[str, Any],
    logged: str,
) -> None:
    # The claims are made now, not when the tests are collected: their "exp" is five
    # minutes on, and a whole suite can take longer than that to reach this test.
    payload = claims(role, **extra)
    settings = _jwt_settings(tmp_path, signer, user_identity="required")
    with _served(settings) as port:
        with caplog.at_level(logging.WARNING, logger="dicomvault"):
            assoc, received = _associate(
                port,
                "STRANGER",
                (VERIFICATION,),
                ext_neg=[_jwt_identity(signer.token(payload), positive=True)],
            )
        assert assoc.is_rejected
        # rejected-permanent, service-user, no-reason-given (PS3.8 Table 9-21)
        assert _rejection(received) == (1, 1, 1)
    assert logged in caplog.text
    assert "security.user_identity is required" in caplog.text


def test_required_accepts_a_valid_jwt(tmp_path: Path, signer: Signer) -> None:
    settings = _jwt_settings(tmp_path, signer, user_identity="required")
    with _served(settings) as port:
        assoc, _ = _associate(
            port,
            "STRANGER",
            (VERIFICATION, CT_STORAGE),
            ext_neg=[_jwt_identity(signer.token(claims("uploader")), positive=True)],
        )
        try:
            assert assoc.is_established
            assert assoc.acceptor.user_identity is not None
            assert assoc.acceptor.user_identity.server_response == b""
            assert int(assoc.send_c_echo().Status) == 0
        finally:
            assoc.release()
