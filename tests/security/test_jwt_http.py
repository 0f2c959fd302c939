"""JWT bearer tokens over HTTP (RFC 6750 2.1, RFC 7519, OpenID Connect Core 1.0 3.1.3.7)
through the real server (httpx against uvicorn on 127.0.0.1): each role on one route of
each permission of ``web/auth.py``'s table, the bad tokens, a token without a mapped role,
the failed-login limit, our own API tokens beside JWTs, and JWTs when ``[jwt]`` is off."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dicomvault.archive import users
from dicomvault.web import auth
from tests.security.test_jwt_validation import (
    AUDIENCE,
    ISSUER,
    Signer,
    _bad_tokens,
    claims,
    jwt_settings,
    write_jwks,
)
from tests.web.conftest import WebServer, start_web, web_settings
from tests.web.test_auth import STUDY, _store, bearer

ROLES = ("viewer", "uploader", "admin")
STUDIES = "/dicom-web/studies"


def _serve(tmp_path: Path, **jwt: Any) -> Iterator[WebServer]:
    yield from start_web(web_settings(tmp_path, jwt=jwt_settings(**jwt)))


@pytest.fixture
def signer() -> Signer:
    return Signer("k1")


@pytest.fixture
def idp(tmp_path: Path, signer: Signer) -> Iterator[WebServer]:
    """A server trusting one identity provider (JWKS file), with no local user."""
    yield from _serve(tmp_path, jwks_file=write_jwks(tmp_path / "jwks.json", signer))


def _one_route_per_permission() -> dict[str, tuple[str, str]]:
    """For each permission, its least destructive route (GET first, DELETE last)."""
    chosen: dict[str, tuple[str, str]] = {}
    order = sorted(
        auth.ROUTE_PERMISSIONS.items(),
        key=lambda item: (item[0][0] == "DELETE", item[0][0] != "GET", len(item[0][1])),
    )
    for route, permission in order:
        chosen.setdefault(permission, route)
    # A permission only routes' alternatives name (retrieve_deidentified): one of those.
    for route, alternatives in auth.ALTERNATIVE_PERMISSIONS.items():
        for permission in alternatives:
            chosen.setdefault(permission, route)
    return chosen


def test_each_role_on_a_route_of_each_permission(
    idp: WebServer, signer: Signer, tmp_path: Path
) -> None:
    instance = _store(idp, tmp_path)
    values = {
        "study": STUDY, "series": STUDY + ".1", "instance": instance, "frames": "1",
        "item_id": "0" * 32, "uid": "1.2.3", "patient_id": "NOSUCHPATIENT",
    }  # fmt: skip
    routes = _one_route_per_permission()
    assert set(routes) == users.PERMISSIONS | {auth.PUBLIC}
    tokens = {role: signer.token(claims(role)) for role in ROLES}
    for permission, (method, template) in sorted(routes.items()):
        url = re.sub(r"\{path:path\}", "00280010", template)
        url = re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: values[m.group(1)], url)
        anonymous = idp.client.request(method, url)
        assert anonymous.status_code == (200 if permission == auth.PUBLIC else 401), url
        declared = auth.ROUTE_PERMISSIONS[(method, template)]
        opening = {declared, *auth.ALTERNATIVE_PERMISSIONS.get((method, template), ())}
        for role in ROLES:
            response = idp.client.request(method, url, headers=bearer(tokens[role]))
            what = (role, method, url, response.status_code, response.text[:200])
            if permission == auth.PUBLIC or opening & users.ROLE_PERMISSIONS[role]:
                assert response.status_code not in (401, 403) and response.status_code < 500, what
            else:
                assert response.status_code == 403, what
                body = response.json()
                assert body["permission"] == declared and body["role"] == role
                assert "'dr.house'" in body["message"]


def test_no_local_user_needed_but_authentication_required(idp: WebServer) -> None:
    """With an identity provider configured the loopback server is not open."""
    assert not users.users_exist(idp.archive)
    response = idp.client.get(STUDIES)
    assert response.status_code == 401 and response.json()["message"] == "no credentials"
    assert idp.client.get("/healthz").status_code == 200


def test_bad_tokens_are_401(idp: WebServer, signer: Signer) -> None:
    for i, (name, token, message) in enumerate(_bad_tokens(signer)):
        if name == "too-long":
            continue  # a 20 kB header: the HTTP server's own limit may answer first
        if name == "not-three-parts":
            message = "unknown token"  # not a JWT's shape: looked up as an API token
        # Each is a failed login: a client address of its own keeps it below the limit.
        transport = httpx.HTTPTransport(local_address=f"127.0.0.{i + 2}")
        with httpx.Client(base_url=idp.url, transport=transport, timeout=30) as client:
            response = client.get(STUDIES, headers=bearer(token))
        assert response.status_code == 401, (name, response.text)
        assert response.headers["WWW-Authenticate"] == auth.CHALLENGE
        assert message in response.json()["message"], (name, response.json())


def test_token_without_a_mapped_role_is_403(idp: WebServer, signer: Signer) -> None:
    response = idp.client.get(STUDIES, headers=bearer(signer.token(claims(None, roles=["x"]))))
    assert response.status_code == 403
    body = response.json()
    assert body["user"] == "dr.house" and "jwt.role_map" in body["message"]


def test_repeated_bad_jwts_are_rate_limited(idp: WebServer, signer: Signer) -> None:
    expired = signer.token(claims(exp=1_000_000))
    for _ in range(auth.FAILURE_LIMIT):
        assert idp.client.get(STUDIES, headers=bearer(expired)).status_code == 401
    limited = idp.client.get(STUDIES, headers=bearer(signer.token()))  # even a valid one
    assert limited.status_code == 429
    assert "too many failed logins" in limited.json()["message"]
    assert 1 <= int(limited.headers["Retry-After"]) <= auth.FAILURE_WINDOW


def test_api_tokens_and_basic_keep_working_beside_jwts(idp: WebServer, signer: Signer) -> None:
    users.add_user(idp.archive, "ana", "correct horse battery", "uploader")
    token = users.create_token(idp.archive, "ana").token
    assert idp.client.get(STUDIES, headers=bearer(token)).status_code in (200, 204)
    basic = idp.client.get(STUDIES, auth=("ana", "correct horse battery"))
    assert basic.status_code in (200, 204)
    assert idp.client.get(STUDIES, headers=bearer(signer.token())).status_code in (200, 204)
    revoked = users.create_token(idp.archive, "ana")
    users.revoke_token(idp.archive, revoked.id)
    response = idp.client.get(STUDIES, headers=bearer(revoked.token))
    assert response.json()["message"] == "token revoked"


def test_jwt_is_an_unknown_token_when_jwt_is_off(tmp_path: Path, signer: Signer) -> None:
    for server in start_web(web_settings(tmp_path)):
        users.add_user(server.archive, "ana", "correct horse battery", "admin")
        response = server.client.get(STUDIES, headers=bearer(signer.token(claims("admin"))))
        assert response.status_code == 401
        assert response.json()["message"] == "unknown token"


def test_unreachable_identity_provider_is_503(tmp_path: Path, signer: Signer) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for server in _serve(tmp_path, jwks_url=f"http://127.0.0.1:{port}/jwks"):
        for _ in range(auth.FAILURE_LIMIT + 1):  # not the client's fault: never limited
            response = server.client.get(STUDIES, headers=bearer(signer.token()))
            assert response.status_code == 503
        assert "could not be loaded" in response.json()["message"]


def test_an_identity_provider_lets_serve_listen_beyond_loopback(
    tmp_path: Path, signer: Signer
) -> None:
    """With ``[jwt]`` every request must bring a valid token, so ``serve`` needs no local
    user before HTTP listens on a non-loopback address (web/http.py refuse_if_exposed)."""
    jwks = write_jwks(tmp_path / "jwks.json", signer)
    config = tmp_path / "dv.toml"
    config.write_text(
        f'[jwt]\njwks_file = "{jwks}"\nissuer = "{ISSUER}"\naudience = "{AUDIENCE}"\n'
        '[jwt.role_map]\nradiologist = "viewer"\n'
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("dicomvault")), "serve", "--config", str(config),
         "--data-dir", str(tmp_path / "data"), "--dicom-port", "0", "--http-port", str(port)],
        env={**os.environ, "DICOMVAULT_HTTP__HOST": "0.0.0.0"},
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}{STUDIES}", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "serve did not listen in 30 s"
                time.sleep(0.2)
        assert answer.status_code == 401  # listening, and no request passes without a token
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_an_identity_provider_group_can_map_to_researcher(
    tmp_path: Path, signer: Signer
) -> None:
    """jwt.role_map may name the role ``researcher``: de-identified WADO-RS copies only."""
    from tests.security.test_jwt_validation import ROLE_MAP

    servers = _serve(
        tmp_path,
        jwks_file=write_jwks(tmp_path / "jwks.json", signer),
        role_map={**ROLE_MAP, "research": "researcher"},
    )
    server = next(servers)
    try:
        _store(server, tmp_path)
        token = signer.token(claims(None, roles=["research"]))
        assert server.client.get(STUDIES, headers=bearer(token)).status_code == 403
        answer = server.client.get(
            f"{STUDIES}/{STUDY}",
            headers={**bearer(token), "Accept": 'multipart/related; type="application/dicom"'},
        )
        assert answer.status_code == 200, answer.text[:300]
        assert b"ANON-" in answer.content and b"YES" in answer.content
        both = signer.token(claims(None, roles=["research", "radiologist"]))
        assert server.client.get(STUDIES, headers=bearer(both)).status_code == 200  # viewer
    finally:
        servers.close()
