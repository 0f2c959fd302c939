"""JWT validation (RFC 7519 / RFC 7515 / OpenID Connect Core 1.0 3.1.3.7) and the JWKS
cache (RFC 7517 5) with keys generated here (``cryptography``), a JWKS file, and a real
HTTP server on 127.0.0.1 for the JWKS URL: key rotation, refetch rate, maximum age, an
unreachable or broken identity provider.

The helpers here (:class:`Signer`, :func:`claims`, :func:`jwt_settings`, :func:`jwks_server`)
are shared with ``test_jwt_http.py`` and ``test_jwt_dimse.py``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from dicomvault.config import JwtSettings, load_settings
from dicomvault.model.errors import ConfigError
from dicomvault.security.jwt import (
    JwksCache,
    JwksUnavailable,
    JwtError,
    JwtNoRole,
    JwtValidator,
    looks_like_jwt,
    validator_for,
)

ISSUER = "https://idp.example.org/realms/hospital"
AUDIENCE = "dicomvault"
ROLE_MAP = {"radiologist": "viewer", "technologist": "uploader", "pacs-admin": "admin"}
#: IdP role of each of our roles.
IDP_ROLE = {ours: theirs for theirs, ours in ROLE_MAP.items()}


@cache
def _rsa_key(n: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@cache
def _ec_key(n: int) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@dataclass
class Signer:
    """One key pair of the identity provider: signs tokens, publishes its JWK."""

    kid: str
    alg: str = "RS256"
    #: Which cached key of its kind (two signers with the same ``n`` share a key).
    n: int = 0
    private: Any = field(init=False)

    def __post_init__(self) -> None:
        self.private = _ec_key(self.n) if self.alg.startswith("ES") else _rsa_key(self.n)

    def jwk(self) -> dict[str, Any]:
        codec = ECAlgorithm if self.alg.startswith("ES") else RSAAlgorithm
        data: dict[str, Any] = codec.to_jwk(self.private.public_key(), as_dict=True)
        return {**data, "kid": self.kid, "use": "sig", "alg": self.alg}

    def public_pem(self) -> bytes:
        return bytes(
            self.private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def token(self, payload: dict[str, Any] | None = None, **headers: Any) -> str:
        header = {"kid": self.kid, **headers}
        return jwt.encode(payload or claims(), self.private, algorithm=self.alg, headers=header)


def claims(role: str | None = "viewer", **extra: Any) -> dict[str, Any]:
    """An access token's claims for a user with our ``role`` (mapped from the IdP's)."""
    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "f2a1c4de-0001",
        "preferred_username": "dr.house",
        "iat": now,
        "exp": now + 300,
        "roles": [] if role is None else [IDP_ROLE[role]],
    }
    payload.update(extra)
    return {k: v for k, v in payload.items() if v is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(payload: dict[str, Any], kid: str = "k1") -> str:
    """An ``alg: none`` token (RFC 7519 6.1)."""
    header = {"alg": "none", "typ": "JWT", "kid": kid}
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}."


def hs256_with_public_key(signer: Signer, payload: dict[str, Any]) -> str:
    """The algorithm-confusion forgery: HS256 with the public key PEM as the HMAC secret
    (PyJWT refuses to make one, so it is made by hand)."""
    header = {"alg": "HS256", "typ": "JWT", "kid": signer.kid}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    mac = hmac.new(signer.public_pem(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def write_jwks(path: Path, *signers: Signer, extra: list[dict[str, Any]] | None = None) -> Path:
    path.write_text(json.dumps({"keys": [s.jwk() for s in signers] + (extra or [])}))
    return path


def jwt_settings(**values: Any) -> dict[str, Any]:
    """A ``[jwt]`` section for ``load_settings`` overrides."""
    return {
        "issuer": ISSUER,
        "audience": [AUDIENCE],
        "role_map": ROLE_MAP,
        **values,
    }


def _settings(**values: Any) -> JwtSettings:
    return load_settings(None, {"jwt": jwt_settings(**values)}).jwt


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class JwksServer:
    url: str
    #: The JWK Set served (replace to rotate keys).
    document: bytes
    fetches: int = 0
    #: Seconds each answer waits (the timeout test).
    delay: float = 0.0


@contextmanager
def jwks_server(*signers: Signer) -> Iterator[JwksServer]:
    """A real HTTP server on 127.0.0.1 serving a JWK Set at ``/jwks``, in a thread."""
    state = JwksServer("", json.dumps({"keys": [s.jwk() for s in signers]}).encode())

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.fetches += 1
            if state.delay:
                time.sleep(state.delay)
            try:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(state.document)))
                self.end_headers()
                self.wfile.write(state.document)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (the timeout test)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.block_on_close = False
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/jwks"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- tokens -------------------------------------------------------------------------------


@pytest.fixture
def signer() -> Signer:
    return Signer("k1")


@pytest.fixture
def validator(tmp_path: Path, signer: Signer) -> JwtValidator:
    ec_signer = Signer("e1", "ES256")
    path = write_jwks(tmp_path / "jwks.json", signer, ec_signer)
    return JwtValidator(_settings(jwks_file=path))


@pytest.mark.parametrize("role", ["viewer", "uploader", "admin"])
def test_valid_rs256_token_per_role(validator: JwtValidator, signer: Signer, role: str) -> None:
    identity = validator.validate(signer.token(claims(role)))
    assert (identity.name, identity.role, identity.subject) == ("dr.house", role, "f2a1c4de-0001")


def test_valid_es256_token(validator: JwtValidator) -> None:
    identity = validator.validate(Signer("e1", "ES256").token(claims("uploader")))
    assert identity.role == "uploader"


def test_highest_mapped_role_wins_and_unknown_names_are_ignored(
    validator: JwtValidator, signer: Signer
) -> None:
    token = signer.token(claims(roles=["offline_access", "pacs-admin", "radiologist"]))
    assert validator.validate(token).role == "admin"


def test_role_claim_as_dotted_path_and_space_separated_string(
    tmp_path: Path, signer: Signer
) -> None:
    path = write_jwks(tmp_path / "jwks.json", signer)
    nested = JwtValidator(_settings(jwks_file=path, role_claim="realm_access.roles"))
    token = signer.token(claims(None, realm_access={"roles": ["technologist"]}))
    assert nested.validate(token).role == "uploader"
    scoped = JwtValidator(_settings(jwks_file=path, role_claim="scope"))
    assert scoped.validate(signer.token(claims(None, scope="openid radiologist"))).role == "viewer"
    # A namespaced claim whose name holds dots is a top-level claim, not a path.
    url_claim = "https://example.org/roles"
    namespaced = JwtValidator(_settings(jwks_file=path, role_claim=url_claim))
    assert namespaced.validate(signer.token(claims(None, **{url_claim: ["pacs-admin"]}))).role == (
        "admin"
    )


def test_name_falls_back_to_sub(validator: JwtValidator, signer: Signer) -> None:
    identity = validator.validate(signer.token(claims(preferred_username=None)))
    assert identity.name == "f2a1c4de-0001"


def test_leeway_accepts_a_token_just_expired(validator: JwtValidator, signer: Signer) -> None:
    now = int(time.time())
    assert validator.validate(signer.token(claims(exp=now - 5))).role == "viewer"  # leeway 30 s


def _bad_tokens(signer: Signer) -> list[tuple[str, str, str]]:
    now = int(time.time())
    good = signer.token()
    head, _, sig = good.split(".")
    tampered_body = b64(json.dumps(claims("admin")).encode())
    return [
        ("expired", signer.token(claims(exp=now - 120)), "JWT expired"),
        ("not-yet-valid", signer.token(claims(nbf=now + 600)), "JWT not yet valid"),
        ("issued-in-future", signer.token(claims(iat=now + 600)), "JWT not yet valid"),
        ("wrong-issuer", signer.token(claims(iss="https://evil.example")), "JWT issuer is not"),
        ("wrong-audience", signer.token(claims(aud="other-app")), "JWT audience is not one of"),
        ("no-exp", signer.token(claims(exp=None)), "JWT has no 'exp' claim"),
        ("no-aud", signer.token(claims(aud=None)), "JWT has no 'aud' claim"),
        ("alg-none", unsigned(claims("admin")), "JWT algorithm 'none' is not allowed"),
        ("hs256-public-key", hs256_with_public_key(signer, claims("admin")), "'HS256' is not"),
        ("unknown-kid", Signer("k9", n=1).token(), "no RS256 signing key with key id 'k9'"),
        ("other-key-same-kid", Signer("k1", n=1).token(), "JWT signature does not verify"),
        ("tampered", f"{head}.{tampered_body}.{sig}", "JWT signature does not verify"),
        ("garbage", "abc.def.ghi", "not a valid JWT"),
        ("not-three-parts", "abc.def", "not a JWT"),
        ("crit", signer.token(crit=["exp"]), "critical"),
        ("no-user", signer.token(claims(sub=None, preferred_username=None)), "neither a"),
        ("too-long", "a" * 20000, "JWT longer than"),
    ]


def test_bad_tokens_are_refused_with_a_reason(validator: JwtValidator, signer: Signer) -> None:
    for name, token, message in _bad_tokens(signer):
        with pytest.raises(JwtError) as raised:
            validator.validate(token)
        assert not isinstance(raised.value, JwtNoRole), name
        assert message in str(raised.value), (name, str(raised.value))


def test_es256_header_with_an_rsa_kid_finds_no_key(validator: JwtValidator) -> None:
    forged = Signer("k1", "ES256").token()  # the kid of the RSA key, an EC signature
    with pytest.raises(JwtError, match="no ES256 signing key with key id 'k1'"):
        validator.validate(forged)


def test_token_without_a_mapped_role_is_no_role(validator: JwtValidator, signer: Signer) -> None:
    with pytest.raises(JwtNoRole) as raised:
        validator.validate(signer.token(claims(None, roles=["nurse"])))
    assert raised.value.name == "dr.house"
    assert "no name in the 'roles' claim is in jwt.role_map" in str(raised.value)
    with pytest.raises(JwtNoRole):
        validator.validate(signer.token(claims(None, roles=None)))


def test_kid_is_optional_with_one_key_only(tmp_path: Path, signer: Signer) -> None:
    no_kid = jwt.encode(claims(), signer.private, algorithm="RS256")
    one = JwtValidator(_settings(jwks_file=write_jwks(tmp_path / "one.json", signer)))
    assert one.validate(no_kid).role == "viewer"
    two = JwtValidator(
        _settings(jwks_file=write_jwks(tmp_path / "two.json", signer, Signer("k2", n=1)))
    )
    with pytest.raises(JwtError, match="without a key id"):
        two.validate(no_kid)


def test_symmetric_and_encryption_keys_in_the_jwks_are_never_used(
    tmp_path: Path, signer: Signer
) -> None:
    secret = signer.public_pem()
    oct_key = {"kty": "oct", "kid": "h1", "k": b64(secret), "alg": "HS256"}
    enc_key = {**Signer("x1", n=1).jwk(), "use": "enc"}
    path = write_jwks(tmp_path / "jwks.json", extra=[oct_key, enc_key])
    validator = JwtValidator(_settings(jwks_file=path, algorithms=["RS256"]))
    with pytest.raises(JwtError, match="no RS256 signing key with key id 'x1'"):
        validator.validate(Signer("x1", n=1).token())
    assert validator.keys.loads == 1


def test_looks_like_jwt() -> None:
    assert looks_like_jwt("eyJh.eyJz.c2ln")
    assert looks_like_jwt("eyJh.eyJz.")  # unsigned: still a JWT's shape (then refused)
    assert not looks_like_jwt("dvt_" + "A" * 43)
    assert not looks_like_jwt("a.b")
    assert not looks_like_jwt("a.b.c.d.e")  # JWE: not supported
    assert not looks_like_jwt("a b.c.d")


# -- the JWKS cache -----------------------------------------------------------------------


def test_jwks_file_is_read_again_when_a_new_kid_appears(tmp_path: Path, signer: Signer) -> None:
    path = write_jwks(tmp_path / "jwks.json", signer)
    validator = JwtValidator(_settings(jwks_file=path, jwks_refresh_seconds=0))
    assert validator.validate(signer.token()).role == "viewer"
    rotated = Signer("k2", n=1)
    write_jwks(path, signer, rotated)
    assert validator.validate(rotated.token()).role == "viewer"
    assert validator.keys.loads == 2


def test_jwks_url_fetched_once_and_cached(signer: Signer) -> None:
    with jwks_server(signer) as server:
        validator = JwtValidator(_settings(jwks_url=server.url))
        for _ in range(3):
            assert validator.validate(signer.token()).role == "viewer"
        assert server.fetches == 1


def test_jwks_url_key_rotation_refetches_at_most_once_per_interval(signer: Signer) -> None:
    clock = _Clock()
    new, newer = Signer("k2", n=1), Signer("k3", n=2)
    with jwks_server(signer) as server:
        settings = _settings(jwks_url=server.url, jwks_refresh_seconds=60)
        validator = JwtValidator(settings, clock=clock)
        assert validator.validate(signer.token()).role == "viewer"
        assert server.fetches == 1
        # The provider rotates: a token under the new kid refetches the set once.
        server.document = json.dumps({"keys": [signer.jwk(), new.jwk()]}).encode()
        clock.now += 61
        assert validator.validate(new.token()).role == "viewer"
        assert server.fetches == 2
        # Within the interval an unknown kid does not refetch (a flood of made-up kids
        # costs nothing)…
        server.document = json.dumps({"keys": [new.jwk(), newer.jwk()]}).encode()
        for _ in range(5):
            with pytest.raises(JwtError, match="key id 'k3'"):
                validator.validate(newer.token())
        assert server.fetches == 2
        # …and after it, it does; the retired key k1 is gone with the refetch.
        clock.now += 61
        assert validator.validate(newer.token()).role == "viewer"
        assert server.fetches == 3
        with pytest.raises(JwtError, match="key id 'k1'"):
            validator.validate(signer.token())


def test_jwks_max_age_drops_removed_keys(signer: Signer) -> None:
    clock = _Clock()
    with jwks_server(signer) as server:
        settings = _settings(jwks_url=server.url, jwks_max_age_seconds=600)
        validator = JwtValidator(settings, clock=clock)
        assert validator.validate(signer.token()).role == "viewer"
        server.document = json.dumps({"keys": [Signer("k2", n=1).jwk()]}).encode()
        clock.now += 599
        assert validator.validate(signer.token()).role == "viewer"  # cached
        clock.now += 2
        with pytest.raises(JwtError, match="key id 'k1'"):
            validator.validate(signer.token())
        assert server.fetches == 2


def test_failed_refresh_keeps_the_known_keys(signer: Signer) -> None:
    clock = _Clock()
    with jwks_server(signer) as server:
        validator = JwtValidator(
            _settings(jwks_url=server.url, jwks_max_age_seconds=600), clock=clock
        )
        assert validator.validate(signer.token()).role == "viewer"
        server.document = b"<html>maintenance</html>"
        clock.now += 601
        assert validator.validate(signer.token()).role == "viewer"
        assert server.fetches == 2
        assert validator.validate(signer.token()).role == "viewer"
        assert server.fetches == 2  # not retried on every token


def test_unreachable_or_broken_jwks_is_unavailable(signer: Signer) -> None:
    url = f"http://127.0.0.1:{_free_port()}/jwks"
    with pytest.raises(JwksUnavailable, match="could not be loaded"):
        JwtValidator(_settings(jwks_url=url)).validate(signer.token())
    with jwks_server(signer) as server:
        server.document = b'{"not": "a jwks"}'
        with pytest.raises(JwksUnavailable, match='"keys" array'):
            JwtValidator(_settings(jwks_url=server.url)).validate(signer.token())
        server.document = b"{}"
        server.delay = 1.0
        started = time.monotonic()
        with pytest.raises(JwksUnavailable, match="timed out"):
            JwtValidator(_settings(jwks_url=server.url, jwks_timeout_seconds=0.2)).validate(
                signer.token()
            )
        assert time.monotonic() - started < 0.9


def test_first_load_is_retried_at_most_once_per_interval(signer: Signer) -> None:
    """An identity provider that is down costs one fetch per interval, not one per token."""
    clock = _Clock()
    with jwks_server(signer) as server:
        good = server.document
        server.document = b"Service Unavailable"
        validator = JwtValidator(_settings(jwks_url=server.url), clock=clock)
        for _ in range(3):
            with pytest.raises(JwksUnavailable, match="not JSON"):
                validator.validate(signer.token())
        assert server.fetches == 1
        server.document = good
        clock.now += 61
        assert validator.validate(signer.token()).role == "viewer"
        assert server.fetches == 2


def test_jwks_cache_needs_exactly_one_source(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one of them"):
        JwksCache()
    with pytest.raises(ValueError, match="one of them"):
        JwksCache(file=tmp_path / "a.json", url="https://idp.example/jwks")


# -- settings -----------------------------------------------------------------------------


def test_jwt_is_off_by_default() -> None:
    settings = load_settings(None, {})
    assert not settings.jwt.enabled
    assert validator_for(settings.jwt) is None
    assert settings.jwt.algorithms == ["RS256", "ES256"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"algorithms": ["HS256"]}, "jwt.algorithms.0"),
        ({"algorithms": ["none"]}, "jwt.algorithms.0"),
        ({"jwks_url": "http://idp.example.org/jwks"}, "must be an https:// URL"),
        ({"jwks_url": "ftp://idp.example.org/jwks"}, "must be an https:// URL"),
        ({"jwks_url": "https://idp/jwks", "issuer": ""}, "need jwt.issuer"),
        ({"jwks_url": "https://idp/jwks", "audience": []}, "need jwt.audience"),
        ({"jwks_url": "https://idp/jwks", "role_map": {}}, "need jwt.role_map"),
        ({"jwks_url": "https://idp/jwks", "algorithms": []}, "need jwt.algorithms"),
        ({"jwks_url": "https://idp/jwks", "jwks_file": "jwks.json"}, "not both"),
        ({"role_map": {"x": "superuser"}}, "jwt.role_map.x"),
    ],
)
def test_invalid_jwt_settings_name_the_key(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_settings(None, {"jwt": jwt_settings(**values)})


def test_audience_may_be_one_string() -> None:
    settings = load_settings(
        None, {"jwt": jwt_settings(audience="dicomvault", jwks_url="https://idp/jwks")}
    )
    assert settings.jwt.audience == ["dicomvault"]
    assert settings.jwt.enabled
