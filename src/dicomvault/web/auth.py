"""Who may do what over HTTP: authentication, per-route permissions, failed-login rate
limit, and the security headers of every response.

- When at least one user exists (``dicomvault user add``), every request but
  ``/healthz`` needs ``Authorization: Basic`` (user name and password) or
  ``Authorization: Bearer <API token>``; otherwise 401 with a ``WWW-Authenticate``
  challenge and a JSON body naming the problem. With no user, requests are let through
  only while HTTP listens on loopback (``dicomvault serve`` refuses any other address
  without users, and a server whose last user is removed answers 401 rather than
  opening up).
- Each route declares its permission in ONE table, :data:`ROUTE_PERMISSIONS`; building
  the app fails for a route without one. A role without the permission gets 403.
- Failed logins are limited per client address (:class:`FailureLimiter`): past the limit
  every request from that address is 429 with ``Retry-After`` until the window passes,
  without checking the credentials.
- With ``[jwt]`` configured (:mod:`dicomvault.security.jwt`), a bearer that has the shape
  of a JWT (RFC 7515 compact serialisation; our API tokens start with ``dvt_`` and never
  have it) is validated against the identity provider's JWKS (RFC 7519, OpenID Connect
  Core 1.0 3.1.3.7) in the thread pool, and its mapped role is the request's; a valid
  token that maps to no role is 403. Authentication is then required even before the
  first local user exists. A failed JWT counts as a failed login.
- Password checks (argon2, slow by design) run in the HTTP thread pool; a good Basic
  login is remembered in memory for :data:`BASIC_CACHE_SECONDS` (keyed by an HMAC of the
  credentials under a per-process key) so a viewer's hundreds of requests do not each
  cost an argon2 verification. A removed user's cached Basic login lasts that long at
  most; tokens are checked against the index on every request, so revocation is
  immediate.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Sequence

from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomvault.archive import Archive, audit, users
from dicomvault.archive.users import TOKEN_PREFIX, AuthFailed, Principal
from dicomvault.security.jwt import (
    JwksUnavailable,
    JwtError,
    JwtNoRole,
    looks_like_jwt,
    validator_for,
)
from dicomvault.web.audit_api import audit_login
from dicomvault.web.common import DICOMWEB_ROOT, blocking
from dicomvault.web.errors import problem_response

#: Scope key holding the request's :class:`Principal`, or :data:`OPEN` when no user exists.
AUTH_KEY = "dicomvault.auth"
OPEN = "open"
#: Permission of the routes anyone may call, authenticated or not.
PUBLIC = "public"

_D = DICOMWEB_ROOT
_STUDY = _D + "/studies/{study}"
_SERIES = _STUDY + "/series/{series}"
_INSTANCE = _SERIES + "/instances/{instance}"

#: (method, route template) → permission; HEAD is GET's. Every route of the app must be
#: here (``create_app`` fails otherwise, and ``tests/web/test_auth.py`` walks the routes).
#: ``search`` also covers the service list, the OpenAPI document and the metrics: the
#: least a role may do.
ROUTE_PERMISSIONS: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/metrics"): "search",
    ("GET", _D): "search",
    ("GET", _D + "/"): "search",
    ("GET", _D + "/openapi.json"): "search",
    # QIDO-RS
    ("GET", _D + "/studies"): "search",
    ("GET", _D + "/series"): "search",
    ("GET", _D + "/instances"): "search",
    ("GET", _STUDY + "/series"): "search",
    ("GET", _STUDY + "/instances"): "search",
    ("GET", _SERIES + "/instances"): "search",
    # WADO-RS
    ("GET", _STUDY): "retrieve",
    ("GET", _SERIES): "retrieve",
    ("GET", _INSTANCE): "retrieve",
    ("GET", _STUDY + "/metadata"): "retrieve",
    ("GET", _SERIES + "/metadata"): "retrieve",
    ("GET", _INSTANCE + "/metadata"): "retrieve",
    ("GET", _INSTANCE + "/frames/{frames}"): "retrieve",
    ("GET", _INSTANCE + "/bulkdata/{path:path}"): "retrieve",
    # rendered and thumbnails
    ("GET", _STUDY + "/rendered"): "retrieve",
    ("GET", _STUDY + "/thumbnail"): "retrieve",
    ("GET", _SERIES + "/rendered"): "retrieve",
    ("GET", _SERIES + "/thumbnail"): "retrieve",
    ("GET", _INSTANCE + "/rendered"): "retrieve",
    ("GET", _INSTANCE + "/thumbnail"): "retrieve",
    ("GET", _INSTANCE + "/frames/{frames}/rendered"): "retrieve",
    ("GET", _INSTANCE + "/frames/{frames}/thumbnail"): "retrieve",
    # STOW-RS
    ("POST", _D + "/studies"): "store",
    ("POST", _STUDY): "store",
    # delete
    ("DELETE", _STUDY): "delete",
    ("DELETE", _SERIES): "delete",
    ("DELETE", _INSTANCE): "delete",
    # Modality Worklist items (web/worklist_api.py); DELETE cancels an item
    ("GET", "/api/worklist"): "search",
    ("POST", "/api/worklist"): "worklist",
    ("GET", "/api/worklist/{item_id}"): "search",
    ("PUT", "/api/worklist/{item_id}"): "worklist",
    ("DELETE", "/api/worklist/{item_id}"): "worklist",
    # MPPS and storage commitment status (web/workflow_api.py)
    ("GET", "/api/mpps"): "search",
    ("GET", "/api/mpps/{uid}"): "search",
    ("GET", "/api/commitments"): "admin",
    ("GET", "/api/commitments/{uid}"): "admin",
    # admin API of deletion (web/admin_api.py): role admin
    ("DELETE", "/api/patients/{patient_id:path}"): "delete",
    ("DELETE", "/api/studies/{study}"): "delete",
    ("DELETE", "/api/studies/{study}/series/{series}"): "delete",
    ("DELETE", "/api/studies/{study}/series/{series}/instances/{instance}"): "delete",
    ("PUT", "/api/studies/{study}/protection"): "delete",
    ("DELETE", "/api/studies/{study}/protection"): "delete",
    ("GET", "/api/deletions"): "delete",
    # audit trail (web/audit_api.py, PS3.15 A.5)
    ("GET", "/api/audit"): "admin",
    # remote AEs managed at run time (web/remotes_api.py, issue 7 part 2)
    ("GET", "/api/remotes"): "admin",
    ("GET", "/api/remotes/{name}"): "admin",
    ("PUT", "/api/remotes/{name}"): "admin",
    ("DELETE", "/api/remotes/{name}"): "admin",
}

PUBLIC_PATHS = frozenset(path for (_, path), perm in ROUTE_PERMISSIONS.items() if perm == PUBLIC)

#: Routes that a second permission also opens: WADO-RS retrieval of DICOM instances
#: answers a ``retrieve_deidentified`` user (role ``researcher``) with de-identified copies
#: (web/wado.py, PS3.15 Annex E); every other route stays closed to that user.
ALTERNATIVE_PERMISSIONS: dict[tuple[str, str], tuple[str, ...]] = {
    ("GET", _STUDY): ("retrieve_deidentified",),
    ("GET", _SERIES): ("retrieve_deidentified",),
    ("GET", _INSTANCE): ("retrieve_deidentified",),
}

CHALLENGE = 'Basic realm="dicomvault", Bearer'
#: Failed logins allowed per client address within the window.
FAILURE_LIMIT = 5
FAILURE_WINDOW = 60.0
#: Addresses tracked at most (the oldest is forgotten first).
FAILURE_CLIENTS = 10_000
#: How long the "does any user exist" answer is reused.
USERS_EXIST_SECONDS = 5.0
BASIC_CACHE_SECONDS = 30.0
BASIC_CACHE_SIZE = 1024

#: Sent with every response. The server answers an API only (DICOM, JSON, images), never
#: pages: nothing may load scripts, styles or frames from its responses, no page may frame
#: it, and no Referer leaks UIDs in URLs. The UI to come will relax the CSP for its own
#: routes only.
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every HTTP response (errors included)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(k, v) for k, v in SECURITY_HEADERS if k not in present]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


class FailureLimiter:
    """Failed logins per client address in a sliding window, in bounded memory."""

    def __init__(
        self,
        limit: int = FAILURE_LIMIT,
        window: float = FAILURE_WINDOW,
        max_clients: int = FAILURE_CLIENTS,
    ) -> None:
        self.limit = limit
        self.window = window
        self.max_clients = max_clients
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, client: str, now: float | None = None) -> int | None:
        """Seconds until ``client`` may try again, or None when it may now."""
        now = time.monotonic() if now is None else now
        times = self._failures.get(client)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[client]
            return None
        if len(times) < self.limit:
            return None
        return max(1, int(times[0] + self.window - now + 0.999))

    def fail(self, client: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        times = self._failures.pop(client, None) or deque(maxlen=self.limit)
        times.append(now)
        self._failures[client] = times  # most recent last
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class Authentication:
    """Authenticates every request but :data:`PUBLIC_PATHS` once a user exists; puts the
    :class:`Principal` (or :data:`OPEN`) in ``scope[AUTH_KEY]`` for :class:`_Guarded`."""

    def __init__(self, app: ASGIApp, archive: Archive, host: str) -> None:
        self.app = app
        self.archive = archive
        #: Open without users only on loopback (fail closed otherwise).
        self.may_open = is_loopback(host)
        self.limiter = FailureLimiter()
        self._users_exist: bool | None = None
        self._users_checked = 0.0
        self._basic_key = secrets.token_bytes(32)
        self._basic: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()
        #: Bearer JWTs of the identity provider (``None``: ``[jwt]`` not configured).
        self.jwt = validator_for(archive.settings.jwt)

    async def _have_users(self) -> bool:
        if self.jwt is not None:
            return True  # an identity provider is configured: never open
        now = time.monotonic()
        if self._users_exist is None or now - self._users_checked > USERS_EXIST_SECONDS:
            self._users_exist = await blocking(users.users_exist, self.archive)
            self._users_checked = now
        return self._users_exist

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] in PUBLIC_PATHS:
            scope[AUTH_KEY] = OPEN
            await self.app(scope, receive, send)
            return
        have_users = await self._have_users()
        if not have_users and self.may_open:
            scope[AUTH_KEY] = OPEN
            await self.app(scope, receive, send)
            return
        client = scope["client"][0] if scope.get("client") else "-"
        wait = self.limiter.retry_after(client)
        if wait is not None:
            response = problem_response(
                429,
                f"too many failed logins from {client}: try again in {wait} s",
                {"Retry-After": str(wait)},
            )
            await response(scope, receive, send)
            return
        try:
            if not have_users:
                raise AuthFailed(
                    "no HTTP users are configured: add one with "
                    "'dicomvault user add admin --role admin'"
                )
            principal = await self._authenticate(scope)
        except AuthFailed as exc:
            if str(exc) != "no credentials":
                self.limiter.fail(client)
                audit_login(self.archive, scope, None, str(exc))  # PS3.15 A.5.3.12
            response = problem_response(401, str(exc), {"WWW-Authenticate": CHALLENGE})
            await response(scope, receive, send)
            return
        except JwtNoRole as exc:  # authenticated, but no role of jwt.role_map
            response = problem_response(403, str(exc), user=exc.name)
            await response(scope, receive, send)
            return
        except JwksUnavailable as exc:  # the identity provider's keys: not the client's fault
            response = problem_response(503, str(exc), {"Retry-After": "30"})
            await response(scope, receive, send)
            return
        scope[AUTH_KEY] = principal
        audit_login(self.archive, scope, principal, None)  # once per user and address
        await self.app(scope, receive, send)

    async def _authenticate(self, scope: Scope) -> Principal:
        header = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                header = value
                break
        if not header:
            raise AuthFailed("no credentials")
        scheme, _, credentials = header.decode("latin-1").strip().partition(" ")
        credentials = credentials.strip()
        if scheme.lower() == "bearer" and credentials:
            if (
                self.jwt is not None
                and not credentials.startswith(TOKEN_PREFIX)
                and looks_like_jwt(credentials)
            ):
                try:
                    identity = await blocking(self.jwt.validate, credentials)
                except JwtNoRole:
                    raise
                except JwtError as exc:
                    raise AuthFailed(str(exc)) from None
                return Principal(identity.name, identity.role, "token")
            return await blocking(users.authenticate_token, self.archive, credentials)
        if scheme.lower() == "basic" and credentials:
            try:
                decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise AuthFailed("malformed Basic credentials") from None
            name, colon, password = decoded.partition(":")
            if not colon:
                raise AuthFailed("malformed Basic credentials")
            return await self._basic_login(name, password)
        raise AuthFailed(f"unsupported authorization scheme {scheme[:20]!r}: use Basic or Bearer")

    async def _basic_login(self, name: str, password: str) -> Principal:
        key = hmac.new(
            self._basic_key, f"{name}\0{password}".encode(), hashlib.sha256
        ).digest()
        now = time.monotonic()
        cached = self._basic.get(key)
        if cached is not None and cached[1] > now:
            return cached[0]
        principal = await blocking(users.authenticate_password, self.archive, name, password)
        self._basic[key] = (principal, now + BASIC_CACHE_SECONDS)
        self._basic.move_to_end(key)
        while len(self._basic) > BASIC_CACHE_SIZE:
            self._basic.popitem(last=False)
        return principal


class _Guarded:
    """A route's app behind its declared permissions (method → permission)."""

    def __init__(
        self,
        app: ASGIApp,
        template: str,
        permissions: dict[str, str],
        alternatives: dict[str, tuple[str, ...]] | None = None,
    ) -> None:
        self.app = app
        self.template = template
        self.permissions = permissions
        self.alternatives = alternatives or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = "GET" if scope["method"] == "HEAD" else scope["method"]
        permission = self.permissions.get(method)
        auth = scope.get(AUTH_KEY)
        if permission == PUBLIC or auth == OPEN:
            await self.app(scope, receive, send)
            return
        if not isinstance(auth, Principal):  # never authenticated: fail closed
            response = problem_response(401, "no credentials", {"WWW-Authenticate": CHALLENGE})
        elif permission is None or not (
            auth.may(permission) or any(auth.may(p) for p in self.alternatives.get(method, ()))
        ):
            app = scope.get("app")
            if app is not None:  # Security Alert, Use of Restricted Function (PS3.15 A.5.3.11)
                client = scope.get("client")
                audit.restricted_function(
                    app.state.archive, user=auth.name, host=str(client[0]) if client else None,
                    function=f"{method} {scope.get('path', self.template)}",
                    description=f"HTTP 403: role {auth.role} lacks {permission or method}",
                )  # fmt: skip
            response = problem_response(
                403,
                f"user {auth.name!r} (role {auth.role}) may not {permission or method} here",
                permission=permission,
                role=auth.role,
            )
        else:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)


def undeclared(routes: Sequence[BaseRoute], prefix: str = "") -> list[tuple[str, str]]:
    """(method, template) of every route method missing from :data:`ROUTE_PERMISSIONS`."""
    missing: list[tuple[str, str]] = []
    for route in routes:
        if isinstance(route, Route):
            for method in sorted(route.methods or ()):
                if method != "HEAD" and (method, prefix + route.path) not in ROUTE_PERMISSIONS:
                    missing.append((method, prefix + route.path))
        elif isinstance(route, Mount):
            missing += undeclared(route.routes, prefix + route.path)
    return missing


def guard(routes: Sequence[BaseRoute], prefix: str = "") -> None:
    """Put every route behind its declared permissions.

    Raises
    ------
    RuntimeError
        A route method has no entry in :data:`ROUTE_PERMISSIONS`.
    """
    missing = undeclared(routes, prefix)
    if missing:
        raise RuntimeError(f"routes without a declared permission (web/auth.py): {missing}")
    for route in routes:
        if isinstance(route, Route):
            template = prefix + route.path
            declared = {
                method: perm
                for (method, path), perm in ROUTE_PERMISSIONS.items()
                if path == template and method in (route.methods or ())
            }
            alternatives = {
                method: extra
                for (method, path), extra in ALTERNATIVE_PERMISSIONS.items()
                if path == template and method in (route.methods or ())
            }
            route.app = _Guarded(route.app, template, declared, alternatives)
        elif isinstance(route, Mount):
            guard(route.routes, prefix + route.path)
