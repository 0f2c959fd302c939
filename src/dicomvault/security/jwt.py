"""JSON Web Tokens of an OpenID Connect identity provider: validation and its key cache.

A hospital's identity provider (Keycloak, Entra ID, ADFS, …) signs ID and access tokens
(OpenID Connect Core 1.0 2; RFC 9068) as JWS compact serialisations (RFC 7515 7.1) with a
key it publishes in a JWK Set (RFC 7517 5), usually at the ``jwks_uri`` of its OpenID
configuration. The same string arrives as ``Authorization: Bearer`` over HTTP (RFC 6750
2.1) and as the primary field of a User Identity Negotiation sub-item of type 5 over DIMSE
(PS3.7 D.3.3.7, note 3: the two encodings are the same on purpose).

:class:`JwtValidator` accepts a token when, in this order (OpenID Connect Core 1.0
3.1.3.7, RFC 7519 7.2, RFC 8725 3.1):

1. it is a three-part JWS no longer than :data:`MAX_TOKEN_CHARS`, without ``crit``
   header parameters (RFC 7515 4.1.11: none is understood here);
2. its ``alg`` is in ``jwt.algorithms`` — public-key algorithms only (``none`` and
   ``HS*`` are refused by the settings, so a token "signed" with the public key as an
   HMAC secret never reaches a verifier: the algorithm-confusion attack);
3. its ``kid`` names a signing key of the JWK Set whose type fits the algorithm (RSA for
   ``RS*``/``PS*``, EC with the algorithm's curve for ``ES*``, OKP for ``EdDSA``; a key
   with an ``alg`` must name the same one; ``oct`` keys are never used). Without a
   ``kid`` the set must hold exactly one such key (OpenID Connect Core 1.0 10.1);
4. the signature verifies with that key (RFC 7515 5.2);
5. ``iss`` equals ``jwt.issuer``, ``aud`` names one of ``jwt.audience``, ``exp`` is in
   the future and ``nbf``/``iat`` (when present) are not, each within
   ``jwt.leeway_seconds`` (RFC 7519 4.1.1-4.1.6);
6. the ``jwt.role_claim`` claim names a role or group of ``jwt.role_map``; the highest of
   the mapped roles (viewer < uploader < admin) is the user's. A token that passes 1-5
   but maps to no role raises :class:`JwtNoRole` (HTTP answers 403, not 401).

The JWK Set (:class:`JwksCache`) is read from ``jwt.jwks_file`` or fetched from
``jwt.jwks_url`` (with ``jwt.jwks_timeout_seconds``), kept in memory, and read again when
older than ``jwt.jwks_max_age_seconds`` or when a token names a key id it does not hold —
the provider rotated its keys — at most once per ``jwt.jwks_refresh_seconds``, so a flood
of made-up key ids costs one fetch per interval. A failed refresh keeps the keys already
known. Every call may block (file or network I/O): callers on an event loop run
:meth:`JwtValidator.validate` in an executor.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

# PyJWT is imported where a token is checked, not with this module: it loads
# ``cryptography`` (10 MiB of every server's memory), and most archives set no ``[jwt]``.
if TYPE_CHECKING:
    import jwt

log = logging.getLogger("dicomvault.security")

#: Roles from least to most; the highest one a token maps to wins. ``researcher`` (de-
#: identified WADO-RS copies only) is the least: a user the identity provider also puts
#: in a clinical group gets that group's role.
ROLE_ORDER = ("researcher", "viewer", "uploader", "admin")
#: Longer bearer strings are refused before any parsing.
MAX_TOKEN_CHARS = 16384
#: Largest JWK Set document read (bytes).
MAX_JWKS_BYTES = 1024 * 1024
#: Longest user name kept from a token (logs, messages).
MAX_NAME_CHARS = 128

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
#: Key type (and curve) each JWS algorithm verifies with (RFC 7518 3.1, RFC 8037 3.1).
_KEY_TYPE: dict[str, tuple[str, frozenset[str] | None]] = {
    **{f"{f}{n}": ("RSA", None) for f in ("RS", "PS") for n in (256, 384, 512)},
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
}


class JwtConfig(Protocol):
    """What the validator reads: the ``[jwt]`` settings section satisfies it."""

    @property
    def jwks_file(self) -> Path | None: ...

    @property
    def jwks_url(self) -> str: ...

    @property
    def jwks_timeout_seconds(self) -> float: ...

    @property
    def jwks_refresh_seconds(self) -> float: ...

    @property
    def jwks_max_age_seconds(self) -> float: ...

    @property
    def issuer(self) -> str: ...

    @property
    def audience(self) -> Sequence[str]: ...

    @property
    def leeway_seconds(self) -> float: ...

    @property
    def algorithms(self) -> Sequence[str]: ...

    @property
    def role_claim(self) -> str: ...

    @property
    def role_map(self) -> Mapping[str, str]: ...

    @property
    def username_claim(self) -> str: ...


class JwtError(Exception):
    """A token that does not authenticate; the message says why (safe to show the client)."""


class JwtNoRole(JwtError):
    """A valid token whose user has no role of ``jwt.role_map``."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


class JwksUnavailable(Exception):
    """The identity provider's keys could not be loaded at all (not the client's fault)."""


@dataclass(frozen=True, slots=True)
class JwtIdentity:
    """Who a valid token is from."""

    #: ``jwt.username_claim`` (or ``sub``): for logs and messages.
    name: str
    #: One of :data:`ROLE_ORDER`.
    role: str
    #: ``sub`` (RFC 7519 4.1.2), empty when absent.
    subject: str


def looks_like_jwt(token: str) -> bool:
    """Whether ``token`` has the shape of a JWS compact serialisation (RFC 7515 7.1):
    three base64url parts, the first two not empty. Our own API tokens (``dvt_…``) never
    have it."""
    parts = token.split(".")
    return (
        len(parts) == 3
        and bool(parts[0])
        and bool(parts[1])
        and all(_B64URL.fullmatch(part) for part in parts)
    )


def _describe(kid: str | None) -> str:
    return "without a key id" if kid is None else f"key id {kid[:64]!r}"


class JwksCache:
    """The signing keys of a JWK Set (RFC 7517 5) from a file or a URL; thread-safe.

    Parameters
    ----------
    file, url
        Where the set is (exactly one of them).
    timeout
        Seconds to wait for ``url``.
    refresh_seconds
        Least time between two reloads asked for by an unknown key id.
    max_age_seconds
        Keys older than this are reloaded before use.
    clock
        Monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        *,
        file: Path | None = None,
        url: str = "",
        timeout: float = 5.0,
        refresh_seconds: float = 60.0,
        max_age_seconds: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if (file is None) == (not url):
            raise ValueError("a JWKS needs a file or a URL (one of them)")
        self.file = file
        self.url = url
        self.timeout = timeout
        self.refresh_seconds = refresh_seconds
        self.max_age_seconds = max_age_seconds
        self.clock = clock
        #: How many times the set was read (tests and logs).
        self.loads = 0
        self._lock = threading.Lock()
        self._jwks: list[dict[str, Any]] | None = None
        self._loaded_at = 0.0
        self._attempted_at: float | None = None
        self._failure = ""
        self._prepared: dict[tuple[str | None, str], jwt.PyJWK] = {}

    @property
    def source(self) -> str:
        return str(self.file) if self.file is not None else self.url

    def key(self, kid: str | None, alg: str) -> jwt.PyJWK:
        """The key to verify a token signed with ``alg`` under ``kid``.

        Raises
        ------
        JwtError
            No usable key has this id (after one reload, rate permitting), or the token
            has no id and the set does not hold exactly one key for ``alg``.
        JwksUnavailable
            The set could never be loaded.
        """
        with self._lock:
            now = self.clock()
            if self._jwks is None:
                # Not loaded yet: tried at most once per refresh_seconds too, so that an
                # identity provider that is down does not hold a thread per request.
                if not self._may_reload(now):
                    raise JwksUnavailable(self._failure)
                self._reload(now)
            elif now - self._loaded_at >= self.max_age_seconds:
                self._reload(now)
            cached = self._prepared.get((kid, alg))
            if cached is not None:
                return cached
            found = self._find(kid, alg)
            if found is None and self._may_reload(now):
                log.info(
                    "JWKS %s: a token names an unknown %s: reloading", self.source, _describe(kid)
                )
                self._reload(now)
                found = self._find(kid, alg)
            if found is None:
                raise JwtError(f"no {alg} signing key with {_describe(kid)} in the JWKS")
            import jwt  # not at the top: see the imports

            try:
                prepared = jwt.PyJWK(found, algorithm=alg)
            except (jwt.PyJWKError, ValueError, TypeError) as exc:
                raise JwtError(f"the JWKS key with {_describe(kid)} is unusable: {exc}") from None
            self._prepared[(kid, alg)] = prepared
            return prepared

    def _may_reload(self, now: float) -> bool:
        return self._attempted_at is None or now - self._attempted_at >= self.refresh_seconds

    def _find(self, kid: str | None, alg: str) -> dict[str, Any] | None:
        kty, curves = _KEY_TYPE[alg]
        usable = [
            key
            for key in self._jwks or ()
            if key.get("kty") == kty
            and (curves is None or key.get("crv") in curves)
            and key.get("use", "sig") == "sig"
            and "verify" in key.get("key_ops", ["verify"])
            and key.get("alg", alg) == alg
        ]
        if kid is None:
            return usable[0] if len(usable) == 1 else None
        return next((key for key in usable if key.get("kid") == kid), None)

    def _reload(self, now: float) -> None:
        """Read the set again; on failure keep the keys already known (logged), or raise
        :class:`JwksUnavailable` when there are none."""
        self._attempted_at = now
        try:
            keys = _parse_jwks(self._read())
        except (OSError, ValueError) as exc:
            if self._jwks is None:
                log.error("JWKS %s could not be loaded: %s", self.source, exc)
                self._failure = (
                    f"the identity provider's keys ({self.source}) could not be loaded: {exc}"
                )
                raise JwksUnavailable(self._failure) from None
            log.warning(
                "JWKS %s could not be reloaded (keeping the known keys): %s", self.source, exc
            )
            # Stale again after refresh_seconds: retried then, not on every token.
            self._loaded_at = now - self.max_age_seconds + self.refresh_seconds
            return
        self._jwks = keys
        self._loaded_at = now
        self._prepared.clear()
        self.loads += 1
        kids = ", ".join(str(k.get("kid", "-")) for k in keys)
        log.info("JWKS %s: %d signing keys (%s)", self.source, len(keys), kids)

    def _read(self) -> bytes:
        if self.file is not None:
            with self.file.open("rb") as fh:
                data = fh.read(MAX_JWKS_BYTES + 1)
        else:
            request = urllib.request.Request(
                self.url, headers={"Accept": "application/json", "User-Agent": "dicomvault"}
            )
            try:
                # https, or http to a loopback host only (checked by the settings).
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    data = response.read(MAX_JWKS_BYTES + 1)
            except urllib.error.URLError as exc:
                raise OSError(str(exc.reason) if exc.reason else str(exc)) from None
        if len(data) > MAX_JWKS_BYTES:
            raise ValueError(f"JWKS larger than {MAX_JWKS_BYTES} bytes")
        return data


def _parse_jwks(data: bytes) -> list[dict[str, Any]]:
    """The keys of a JWK Set document (RFC 7517 5), symmetric (``oct``) ones left out."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"JWKS is not JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError('JWKS is not a JSON object with a "keys" array (RFC 7517 5)')
    return [k for k in document["keys"] if isinstance(k, dict) and k.get("kty") != "oct"]


def _claim(claims: Mapping[str, Any], path: str) -> Any:
    """The claim ``path``: a top-level name (namespaced claims contain dots, e.g.
    ``https://example.org/roles``), else a dotted path into nested objects."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _names(value: Any) -> list[str]:
    """Role or group names of a claim value: a list of strings or a space-separated
    string (as OAuth ``scope``)."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []


class JwtValidator:
    """Validates bearer JWTs against the ``[jwt]`` settings (see the module docstring)."""

    def __init__(self, config: JwtConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.algorithms = [alg for alg in config.algorithms if alg in _KEY_TYPE]
        self.keys = JwksCache(
            file=config.jwks_file,
            url=config.jwks_url,
            timeout=config.jwks_timeout_seconds,
            refresh_seconds=config.jwks_refresh_seconds,
            max_age_seconds=config.jwks_max_age_seconds,
            clock=clock,
        )

    def validate(self, token: str) -> JwtIdentity:
        """The identity of a valid ``token``. Blocking (may read the JWKS).

        Raises
        ------
        JwtNoRole
            The token is valid but maps to no role.
        JwtError
            The token is not valid; the message says why.
        JwksUnavailable
            No key could ever be loaded.
        """
        config = self.config
        if len(token) > MAX_TOKEN_CHARS:
            raise JwtError(f"JWT longer than {MAX_TOKEN_CHARS} characters")
        if not looks_like_jwt(token):
            raise JwtError("not a JWT (RFC 7515 compact serialisation: three base64url parts)")
        import jwt  # not at the top: see the imports

        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise JwtError(f"not a valid JWT: {exc}") from None
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise JwtError(
                f"JWT algorithm {str(alg)[:20]!r} is not allowed "
                f"(jwt.algorithms: {', '.join(self.algorithms)})"
            )
        if "crit" in header:
            raise JwtError("JWT has critical header parameters (RFC 7515 4.1.11)")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise JwtError("JWT key id (kid) is not a string")
        key = self.keys.key(kid, str(alg))
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[str(alg)],
                audience=list(config.audience),
                issuer=config.issuer,
                leeway=config.leeway_seconds,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise JwtError("JWT expired") from None
        except jwt.ImmatureSignatureError:
            raise JwtError("JWT not yet valid (nbf or iat in the future)") from None
        except jwt.InvalidIssuerError:
            raise JwtError(f"JWT issuer is not {config.issuer!r} (jwt.issuer)") from None
        except jwt.InvalidAudienceError:
            raise JwtError("JWT audience is not one of jwt.audience") from None
        except jwt.MissingRequiredClaimError as exc:
            raise JwtError(f"JWT has no {exc.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise JwtError("JWT signature does not verify") from None
        except jwt.InvalidTokenError as exc:
            raise JwtError(f"invalid JWT: {exc}") from None
        subject = claims.get("sub")
        subject = subject if isinstance(subject, str) else ""
        name = claims.get(config.username_claim)
        if not isinstance(name, str) or not name.strip():
            name = subject
        name = "".join(c for c in name.strip() if c.isprintable())[:MAX_NAME_CHARS]
        if not name:
            raise JwtError(f"JWT has neither a {config.username_claim!r} nor a 'sub' claim")
        mapped = [
            config.role_map[n]
            for n in _names(_claim(claims, config.role_claim))
            if config.role_map.get(n) in ROLE_ORDER
        ]
        if not mapped:
            raise JwtNoRole(
                name,
                f"user {name!r} has no role: no name in the {config.role_claim!r} claim "
                "is in jwt.role_map",
            )
        return JwtIdentity(name, max(mapped, key=ROLE_ORDER.index), subject)


def validator_for(config: JwtConfig) -> JwtValidator | None:
    """A validator for the ``[jwt]`` settings, or ``None`` when no JWKS is configured
    (JWTs are then not accepted)."""
    if config.jwks_file is None and not config.jwks_url:
        return None
    return JwtValidator(config)
