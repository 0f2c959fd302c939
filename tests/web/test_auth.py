"""HTTP users, roles and tokens through a real server: every route × every role (from the
one permission table), Basic and Bearer, the bad inputs, the failed-login limit, the
security headers, and the open loopback server when no user exists."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from starlette.routing import BaseRoute, Mount, Route

from dicomvault.archive import users
from dicomvault.web import auth
from dicomvault.web.app import create_app
from tests.core.dicomfiles import make_dataset, write_part10
from tests.web.conftest import WebServer, start_web, web_settings

STUDY = "1.2.826.0.1.3680043.8.498.71"
SERIES = STUDY + ".1"
PASSWORD = "correct horse battery"

ROLES = ("viewer", "uploader", "admin", "researcher")


def _walk(routes: list[BaseRoute], prefix: str = "") -> Iterator[tuple[str, Route]]:
    for route in routes:
        if isinstance(route, Route):
            yield prefix + route.path, route
        elif isinstance(route, Mount):
            yield from _walk(route.routes, prefix + route.path)


def _app_routes(web: WebServer) -> list[tuple[str, str]]:
    """(method, template) of every route of the app, HEAD aside."""
    app = create_app(web.archive, web.settings)
    return [
        (method, path)
        for path, route in _walk(app.routes)
        for method in sorted(route.methods or ())
        if method != "HEAD"
    ]


def _store(web: WebServer, tmp_path: Path) -> str:
    ds = make_dataset(study=STUDY, series=SERIES)
    web.archive.store_file(write_part10(ds, tmp_path / "one.dcm"))
    return str(ds.SOPInstanceUID)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[WebServer]:
    """A server (SQLite) with one user per role, added before the first request."""
    for server in start_web(web_settings(tmp_path)):
        for role in ROLES:
            users.add_user(server.archive, role, PASSWORD, role)
        yield server


def test_every_route_declares_a_permission(web_sqlite: WebServer) -> None:
    declared = set(auth.ROUTE_PERMISSIONS)
    served = set(_app_routes(web_sqlite))
    assert auth.undeclared(create_app(web_sqlite.archive, web_sqlite.settings).routes) == []
    assert served - declared == set(), "routes without a permission in web/auth.py"
    assert declared - served == set(), "permissions declared for routes that do not exist"
    assert set(auth.ROUTE_PERMISSIONS.values()) <= users.PERMISSIONS | {auth.PUBLIC}
    assert set(auth.ALTERNATIVE_PERMISSIONS) <= declared
    assert {p for alt in auth.ALTERNATIVE_PERMISSIONS.values() for p in alt} <= users.PERMISSIONS


def test_a_route_without_a_permission_fails_the_app() -> None:
    async def endpoint(_request: object) -> None:
        raise AssertionError("not called")

    with pytest.raises(RuntimeError, match="/undeclared"):
        auth.guard([Route("/undeclared", endpoint, methods=["GET"])])


def test_every_role_on_every_route(secured: WebServer, tmp_path: Path) -> None:
    instance = _store(secured, tmp_path)
    tokens = {role: users.create_token(secured.archive, role, "test").token for role in ROLES}
    values = {
        "study": STUDY, "series": SERIES, "instance": instance, "frames": "1",
        "item_id": "0" * 32, "uid": "1.2.3", "patient_id": "NOSUCHPATIENT",
        "name": "NOSUCHREMOTE",
    }  # fmt: skip
    routes = _app_routes(secured)
    # Deletes last (an admin's delete empties the archive), the study's last of all.
    routes.sort(key=lambda r: (r[0] == "DELETE", -r[1].count("/")))
    checked = 0
    for method, template in routes:
        permission = auth.ROUTE_PERMISSIONS[(method, template)]  # KeyError: undeclared route
        alternatives = auth.ALTERNATIVE_PERMISSIONS.get((method, template), ())
        url = re.sub(r"\{path:path\}", "00280010", template)
        url = re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: values[m.group(1)], url)
        anonymous = secured.client.request(method, url)
        if permission == auth.PUBLIC:
            assert anonymous.status_code == 200, (method, url)
        else:
            assert anonymous.status_code == 401, (method, url, anonymous.text)
        for role in ROLES:
            response = secured.client.request(method, url, headers=bearer(tokens[role]))
            granted = users.ROLE_PERMISSIONS[role]
            allowed = (
                permission == auth.PUBLIC
                or permission in granted
                or any(alternative in granted for alternative in alternatives)
            )
            what = (role, method, url, response.status_code, response.text[:200])
            if allowed:
                assert response.status_code not in (401, 403) and response.status_code < 500, what
            else:
                assert response.status_code == 403, what
                body = response.json()
                assert body["permission"] == permission and body["role"] == role
            checked += 1
    assert checked == len(ROLES) * len(routes)
    assert set(ROLES) == set(users.ROLES)


def test_basic_and_bearer(web: WebServer) -> None:
    """Both index backends: users and tokens in SQLite and PostgreSQL."""
    users.add_user(web.archive, "ana", PASSWORD, "viewer")
    token = users.create_token(web.archive, "ana", "viewer app").token
    assert token.startswith("dvt_")
    studies = "/dicom-web/studies"
    assert web.client.get(studies, auth=("ana", PASSWORD)).status_code in (200, 204)
    assert web.client.get(studies, headers=bearer(token)).status_code in (200, 204)
    # Only the hash is kept, and the use is recorded.
    [listed] = users.list_tokens(web.archive, "ana")
    assert listed.last_used_at is not None and listed.state() == "active"
    assert token not in repr(users.list_tokens(web.archive))
    forbidden = web.client.post(studies, headers=bearer(token), content=b"")
    assert forbidden.status_code == 403
    assert "viewer" in forbidden.json()["message"]


@pytest.mark.parametrize(
    ("credentials", "message"),
    [
        ({}, "no credentials"),
        ({"auth": ("ana", "wrong password")}, "wrong user name or password"),
        ({"auth": ("nobody", PASSWORD)}, "wrong user name or password"),
        ({"headers": {"Authorization": "Bearer dvt_notatoken"}}, "unknown token"),
        ({"headers": {"Authorization": "Basic !!!"}}, "malformed Basic credentials"),
        ({"headers": {"Authorization": "Digest x"}}, "unsupported authorization scheme"),
    ],
)
def test_bad_credentials_are_401(
    web_sqlite: WebServer, credentials: dict[str, object], message: str
) -> None:
    users.add_user(web_sqlite.archive, "ana", PASSWORD, "admin")
    response = web_sqlite.client.get("/dicom-web/studies", **credentials)  # type: ignore[arg-type]
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Basic realm="dicomvault", Bearer'
    body = response.json()
    assert body["status"] == 401 and message in body["message"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_revoked_and_expired_tokens_are_401(web_sqlite: WebServer) -> None:
    archive = web_sqlite.archive
    users.add_user(archive, "ana", PASSWORD, "admin")
    revoked = users.create_token(archive, "ana", "old laptop")
    expiring = users.create_token(archive, "ana", "short", timedelta(milliseconds=300))
    url = "/dicom-web/studies"
    assert web_sqlite.client.get(url, headers=bearer(revoked.token)).status_code in (200, 204)
    users.revoke_token(archive, revoked.id)
    response = web_sqlite.client.get(url, headers=bearer(revoked.token))
    assert response.status_code == 401 and response.json()["message"] == "token revoked"
    assert users.resolve_token(archive, revoked.token) is None
    time.sleep(0.4)
    response = web_sqlite.client.get(url, headers=bearer(expiring.token))
    assert response.status_code == 401 and response.json()["message"] == "token expired"
    assert {t.id: t.state() for t in users.list_tokens(archive)} == {
        revoked.id: "revoked",
        expiring.id: "expired",
    }


def test_removed_user_loses_its_tokens(web_sqlite: WebServer) -> None:
    archive = web_sqlite.archive
    users.add_user(archive, "ana", PASSWORD, "admin")
    users.add_user(archive, "bob", PASSWORD, "viewer")
    token = users.create_token(archive, "bob").token
    users.remove_user(archive, "bob")
    response = web_sqlite.client.get("/dicom-web/studies", headers=bearer(token))
    assert response.status_code == 401 and response.json()["message"] == "unknown token"


def test_failed_logins_are_rate_limited(web_sqlite: WebServer) -> None:
    users.add_user(web_sqlite.archive, "ana", PASSWORD, "admin")
    url = "/dicom-web/studies"
    for _ in range(auth.FAILURE_LIMIT):
        assert web_sqlite.client.get(url, auth=("ana", "guess")).status_code == 401
    limited = web_sqlite.client.get(url, auth=("ana", PASSWORD))  # even the right password
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["Retry-After"]) <= auth.FAILURE_WINDOW
    assert "too many failed logins" in limited.json()["message"]
    assert web_sqlite.client.get("/healthz").status_code == 200  # public stays public


def test_failure_limiter_window_and_bound() -> None:
    limiter = auth.FailureLimiter(limit=2, window=10, max_clients=3)
    limiter.fail("a", now=0)
    assert limiter.retry_after("a", now=1) is None
    limiter.fail("a", now=1)
    assert limiter.retry_after("a", now=2) == 8
    assert limiter.retry_after("a", now=10.5) is None  # the first failure aged out
    for client in "bcde":
        limiter.fail(client, now=3)
    assert len(limiter._failures) == 3


def test_security_headers_on_success_and_errors(web_sqlite: WebServer) -> None:
    for response in (
        web_sqlite.client.get("/healthz"),
        web_sqlite.client.get("/dicom-web/studies"),
        web_sqlite.client.get("/no/such/path"),
    ):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Content-Security-Policy"] == (
            "default-src 'none'; frame-ancestors 'none'"
        )
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert response.headers["X-Frame-Options"] == "DENY"
    assert web_sqlite.client.get("/no/such/path").status_code == 404


def test_no_users_on_loopback_is_open(web_sqlite: WebServer) -> None:
    assert not users.users_exist(web_sqlite.archive)
    assert web_sqlite.client.get("/dicom-web/studies").status_code in (200, 204)
    assert web_sqlite.client.post("/dicom-web/studies", content=b"").status_code != 401


def test_no_users_beyond_loopback_is_closed(tmp_path: Path) -> None:
    """Fail closed: a server on another address whose last user was removed opens up to
    no one (``serve`` would refuse to start in that state). The socket is loopback here;
    the middleware goes by the configured ``http.host``."""
    for server in start_web(web_settings(tmp_path, http={"host": "0.0.0.0", "port": 0})):
        response = server.client.get("/dicom-web/studies")
        assert response.status_code == 401
        assert "dicomvault user add admin --role admin" in response.json()["message"]
        assert server.client.get("/healthz").status_code == 200


def test_cors_preflight_needs_no_credentials(tmp_path: Path) -> None:
    origin = "https://viewer.example.org"
    for server in start_web(web_settings(tmp_path, http={"cors_origins": [origin]})):
        users.add_user(server.archive, "ana", PASSWORD, "viewer")
        preflight = server.client.options(
            "/dicom-web/studies",
            headers={"Origin": origin, "Access-Control-Request-Method": "GET"},
        )
        assert preflight.status_code == 200
        denied = server.client.get("/dicom-web/studies", headers={"Origin": origin})
        assert denied.status_code == 401
        assert denied.headers["Access-Control-Allow-Origin"] == origin


def test_httpx_basic_auth_object(secured: WebServer) -> None:
    response = secured.client.get(
        "/dicom-web/studies", auth=httpx.BasicAuth("uploader", PASSWORD)
    )
    assert response.status_code in (200, 204)
