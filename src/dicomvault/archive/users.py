"""HTTP users, roles and API tokens (security issue, part 4): the service layer.

- Passwords are kept as argon2id hashes (argon2-cffi's :class:`PasswordHasher` with its
  RFC 9106 defaults); a hash made with weaker parameters is replaced on the next good
  login. Checking one costs tens of milliseconds by design: callers on an event loop run
  :func:`authenticate_password` in a thread.
- API tokens are ``dvt_`` + 32 random bytes (URL-safe base64), shown once by
  :func:`create_token`; only their SHA-256 is stored (a token is 256 random bits, so a
  slow hash would add nothing). They can expire and be revoked; revoked tokens stay listed.
- Roles: ``viewer`` may search and retrieve; ``uploader`` may also store; ``admin`` may
  also delete and administer (configuration, users, audit).

Every function takes the open :class:`Archive` (HTTP) or an :class:`Index` (CLI).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from dicomvault.archive.archive import Archive
from dicomvault.index import Index
from dicomvault.index import users as sql
from dicomvault.model.errors import DicomVaultError, NotFound

#: What a role may do. Permissions: ``search`` (QIDO-RS, capabilities, metrics),
#: ``retrieve`` (WADO-RS, rendered), ``store`` (STOW-RS), ``worklist`` (add, change and
#: cancel worklist items: a RIS account is an uploader, not an admin), ``delete``, ``admin``,
#: and ``retrieve_deidentified``: WADO-RS retrieval of studies, series and instances as
#: de-identified copies (PS3.15 Annex E, options ``deidentify.wado_*``) and nothing else —
#: a ``researcher`` may not search, read metadata, frames or rendered images (they would
#: show identities).
ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "viewer": frozenset({"search", "retrieve"}),
    "uploader": frozenset({"search", "retrieve", "store", "worklist"}),
    "admin": frozenset({"search", "retrieve", "store", "worklist", "delete", "admin"}),
    "researcher": frozenset({"retrieve_deidentified"}),
}
ROLES = tuple(ROLE_PERMISSIONS)
PERMISSIONS = frozenset().union(*ROLE_PERMISSIONS.values())

MIN_PASSWORD_LENGTH = 8
TOKEN_PREFIX = "dvt_"
#: ``last_used_at`` is written at most this often per token (a write per request would
#: serialise every authenticated request on the index writer).
TOUCH_INTERVAL = timedelta(seconds=60)

_HASHER = PasswordHasher()
#: Verified when the user does not exist, so that an unknown name costs the same time as
#: a wrong password and response times do not tell which names exist.
_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(16))


class UserError(DicomVaultError):
    """A user or token request that cannot be done; the message says why."""


class AuthFailed(DicomVaultError):
    """Credentials that do not authenticate; the message names the problem
    (``wrong user name or password``, ``token revoked``, ``token expired`` …)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request is from."""

    name: str
    role: str
    via: Literal["password", "token"]

    def may(self, permission: str) -> bool:
        return permission in ROLE_PERMISSIONS.get(self.role, frozenset())


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: str
    created_at: datetime
    disabled: bool


@dataclass(frozen=True, slots=True)
class Token:
    id: int
    user: str
    label: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    def state(self, now: datetime | None = None) -> str:
        """``active``, ``revoked`` or ``expired``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= (now or _now()):
            return "expired"
        return "active"


@dataclass(frozen=True, slots=True)
class NewToken:
    id: int
    #: The token itself: shown once, never stored.
    token: str
    expires_at: datetime | None


def _index(source: Archive | Index) -> Index:
    return source.index if isinstance(source, Archive) else source


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands timezone-aware columns back naive; they are stored in UTC.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a user name, or None."""
    if not name:
        return "user name is empty"
    if len(name) > 128:
        return "user name is longer than 128 characters"
    if ":" in name or any(c.isspace() or not c.isprintable() for c in name):
        return "user name may not contain ':', spaces or control characters"
    return None


def password_problem(password: str) -> str | None:
    """Why ``password`` is refused, or None."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"password is shorter than {MIN_PASSWORD_LENGTH} characters"
    return None


# -- users --------------------------------------------------------------------------------


def users_exist(source: Archive | Index) -> bool:
    """Whether any user is configured (then HTTP requires authentication)."""
    return sql.count_users(_index(source)) > 0


def add_user(source: Archive | Index, name: str, password: str, role: str) -> User:
    """Add a user with an argon2id hash of ``password``.

    Raises
    ------
    UserError
        Bad name, short password, unknown role, or the name is taken.
    """
    problem = name_problem(name) or password_problem(password)
    if problem is not None:
        raise UserError(problem)
    if role not in ROLE_PERMISSIONS:
        raise UserError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    now = _now()
    try:
        sql.insert_user(_index(source), name, _HASHER.hash(password), role, now)
    except sql.UserExists:
        raise UserError(f"user {name!r} already exists") from None
    return User(name, role, now, False)


def list_users(source: Archive | Index) -> list[User]:
    return [
        User(row.name, row.role, _utc(row.created_at) or row.created_at, row.disabled)
        for row in sql.list_users(_index(source))
    ]


def remove_user(source: Archive | Index, name: str, *, force: bool = False) -> None:
    """Remove a user and every token of it.

    Removing the last enabled admin while other users remain would leave nobody able to
    delete or administer over HTTP (the server stays closed to everyone else's rights):
    refused unless ``force``.

    Raises
    ------
    NotFound
        No such user.
    UserError
        ``name`` is the last enabled admin and other users remain.
    """
    index = _index(source)
    everyone = list_users(index)
    target = next((u for u in everyone if u.name == name), None)
    if target is None:
        raise NotFound(f"no user {name!r}")
    admins = [u for u in everyone if u.role == "admin" and not u.disabled]
    if not force and admins == [target] and len(everyone) > 1:
        raise UserError(
            f"{name!r} is the last admin and other users remain: add another admin first "
            "(dicomvault user add NAME --role admin), or remove it with --force"
        )
    if not sql.delete_user(index, name):
        raise NotFound(f"no user {name!r}")


def authenticate_password(source: Archive | Index, name: str, password: str) -> Principal:
    """The user ``name`` when ``password`` is theirs; slow (argon2) by design.

    Raises
    ------
    AuthFailed
        ``wrong user name or password`` (unknown user, wrong password, disabled user —
        deliberately the same message).
    """
    index = _index(source)
    row = sql.get_user(index, name)
    stored = _DUMMY_HASH if row is None else row.password_hash
    try:
        _HASHER.verify(stored, password)
    except (VerificationError, InvalidHashError):
        raise AuthFailed("wrong user name or password") from None
    if row is None or row.disabled:
        raise AuthFailed("wrong user name or password")
    if _HASHER.check_needs_rehash(stored):
        sql.set_password_hash(index, name, _HASHER.hash(password))
    return Principal(row.name, row.role, "password")


def verify_password(source: Archive | Index, name: str, password: str) -> Principal | None:
    """:func:`authenticate_password`, None instead of the error."""
    try:
        return authenticate_password(source, name, password)
    except AuthFailed:
        return None


# -- tokens -------------------------------------------------------------------------------


def create_token(
    source: Archive | Index,
    user: str,
    label: str = "",
    expires_in: timedelta | None = None,
) -> NewToken:
    """A new API token for ``user``; the returned string is the only copy.

    Raises
    ------
    NotFound
        No such user.
    UserError
        ``expires_in`` is not positive.
    """
    if expires_in is not None and expires_in <= timedelta(0):
        raise UserError("a token's lifetime must be positive")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = _now()
    expires_at = None if expires_in is None else now + expires_in
    new_id = sql.insert_token(_index(source), user, _token_hash(token), label, now, expires_at)
    if new_id is None:
        raise NotFound(f"no user {user!r}")
    return NewToken(new_id, token, expires_at)


def list_tokens(source: Archive | Index, user: str | None = None) -> list[Token]:
    return [
        Token(
            row.id,
            row.user,
            row.label,
            _utc(row.created_at) or row.created_at,
            _utc(row.expires_at),
            _utc(row.revoked_at),
            _utc(row.last_used_at),
        )
        for row in sql.list_tokens(_index(source), user)
    ]


def revoke_token(source: Archive | Index, token_id: int) -> None:
    """Revoke a token at once (it stays listed as revoked).

    Raises
    ------
    NotFound
        No such token, or it is already revoked.
    """
    if not sql.revoke_token(_index(source), token_id, _now()):
        raise NotFound(f"no active token with id {token_id}")


def authenticate_token(source: Archive | Index, token: str) -> Principal:
    """The user a bearer token belongs to.

    Raises
    ------
    AuthFailed
        ``unknown token``, ``token revoked``, ``token expired`` or ``user disabled``.
    """
    index = _index(source)
    row = sql.token_by_hash(index, _token_hash(token))
    if row is None:
        raise AuthFailed("unknown token")
    now = _now()
    if row.revoked_at is not None:
        raise AuthFailed("token revoked")
    expires_at = _utc(row.expires_at)
    if expires_at is not None and expires_at <= now:
        raise AuthFailed("token expired")
    if row.user_disabled:
        raise AuthFailed("user disabled")
    last = _utc(row.last_used_at)
    if last is None or now - last >= TOUCH_INTERVAL:
        sql.touch_token(index, row.id, now)
    return Principal(row.user, row.role, "token")


def resolve_token(source: Archive | Index, token: str) -> Principal | None:
    """:func:`authenticate_token`, None for a token that does not authenticate."""
    try:
        return authenticate_token(source, token)
    except AuthFailed:
        return None
