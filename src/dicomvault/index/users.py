"""SQL of HTTP users and API tokens (tables ``users`` and ``api_tokens``).

Plain rows in, plain rows out: hashing, roles and expiry rules live in
``archive/users.py``. Token rows hold the SHA-256 of the token, never the token.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from dicomvault.index.db import Index
from dicomvault.index.schema import api_tokens, users


@dataclass(frozen=True, slots=True)
class UserRow:
    name: str
    password_hash: str
    role: str
    created_at: datetime
    disabled: bool


@dataclass(frozen=True, slots=True)
class TokenRow:
    id: int
    user: str
    role: str
    label: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    user_disabled: bool


class UserExists(Exception):
    """``insert_user`` of a name already taken."""


_USER_COLUMNS = (
    users.c.name,
    users.c.password_hash,
    users.c.role,
    users.c.created_at,
    users.c.disabled,
)

_TOKEN_COLUMNS = (
    api_tokens.c.pk.label("id"),
    users.c.name.label("user"),
    users.c.role,
    api_tokens.c.label,
    api_tokens.c.created_at,
    api_tokens.c.expires_at,
    api_tokens.c.revoked_at,
    api_tokens.c.last_used_at,
    users.c.disabled.label("user_disabled"),
)


def count_users(index: Index) -> int:
    with index._read.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(users)).scalar_one())


def insert_user(index: Index, name: str, password_hash: str, role: str, now: datetime) -> None:
    try:
        with index._writing() as conn:
            conn.execute(
                insert(users).values(
                    name=name, password_hash=password_hash, role=role, created_at=now
                )
            )
    except IntegrityError:
        raise UserExists(name) from None


def get_user(index: Index, name: str) -> UserRow | None:
    with index._read.connect() as conn:
        row = conn.execute(select(*_USER_COLUMNS).where(users.c.name == name)).first()
    return None if row is None else UserRow(**row._asdict())


def list_users(index: Index) -> list[UserRow]:
    with index._read.connect() as conn:
        rows = conn.execute(select(*_USER_COLUMNS).order_by(users.c.name)).all()
    return [UserRow(**row._asdict()) for row in rows]


def delete_user(index: Index, name: str) -> bool:
    """Remove the user and its tokens; whether it existed."""
    with index._writing() as conn:
        pk = conn.execute(select(users.c.pk).where(users.c.name == name)).scalar()
        if pk is None:
            return False
        conn.execute(delete(api_tokens).where(api_tokens.c.user_pk == pk))
        conn.execute(delete(users).where(users.c.pk == pk))
        return True


def set_password_hash(index: Index, name: str, password_hash: str) -> None:
    with index._writing() as conn:
        conn.execute(update(users).where(users.c.name == name).values(password_hash=password_hash))


def insert_token(
    index: Index,
    user: str,
    token_sha256: str,
    label: str,
    now: datetime,
    expires_at: datetime | None,
) -> int | None:
    """The new token's id, or None when ``user`` does not exist."""
    with index._writing() as conn:
        pk = conn.execute(select(users.c.pk).where(users.c.name == user)).scalar()
        if pk is None:
            return None
        new_id = conn.execute(
            insert(api_tokens)
            .values(
                user_pk=pk,
                token_sha256=token_sha256,
                label=label,
                created_at=now,
                expires_at=expires_at,
            )
            .returning(api_tokens.c.pk)
        ).scalar_one()
        return int(new_id)


def _tokens() -> Select[Any]:
    return select(*_TOKEN_COLUMNS).join(users, api_tokens.c.user_pk == users.c.pk)


def list_tokens(index: Index, user: str | None = None) -> list[TokenRow]:
    query = _tokens().order_by(api_tokens.c.pk)
    if user is not None:
        query = query.where(users.c.name == user)
    with index._read.connect() as conn:
        rows = conn.execute(query).all()
    return [TokenRow(**row._asdict()) for row in rows]


def token_by_hash(index: Index, token_sha256: str) -> TokenRow | None:
    query = _tokens().where(api_tokens.c.token_sha256 == token_sha256)
    with index._read.connect() as conn:
        row = conn.execute(query).first()
    return None if row is None else TokenRow(**row._asdict())


def revoke_token(index: Index, token_id: int, now: datetime) -> bool:
    """Mark the token revoked (kept for the record); whether it existed unrevoked."""
    with index._writing() as conn:
        result = conn.execute(
            update(api_tokens)
            .where(api_tokens.c.pk == token_id, api_tokens.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        return bool(result.rowcount)


def touch_token(index: Index, token_id: int, now: datetime) -> None:
    with index._writing() as conn:
        conn.execute(update(api_tokens).where(api_tokens.c.pk == token_id).values(last_used_at=now))
