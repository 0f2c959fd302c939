"""SQL of the remote AEs managed at run time (table ``remote_aes``, revision 0008).

Plain rows in, plain rows out: validation and the merge with the ``[remotes.NAME]`` of
the configuration file live in ``archive/remotes.py``. ``permissions`` and ``hosts`` are
JSON arrays of strings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from dicomvault.index.db import Index
from dicomvault.index.schema import remote_aes


@dataclass(frozen=True, slots=True)
class RemoteRow:
    name: str
    ae_title: str
    host: str
    port: int
    tls: bool
    permissions: list[str]
    check_host: bool
    hosts: list[str]
    created_at: datetime
    updated_at: datetime
    deidentify: bool = False


class RemoteExists(Exception):
    """``insert_remote`` of a name already taken."""


_COLUMNS = (
    remote_aes.c.name,
    remote_aes.c.ae_title,
    remote_aes.c.host,
    remote_aes.c.port,
    remote_aes.c.tls,
    remote_aes.c.permissions,
    remote_aes.c.check_host,
    remote_aes.c.hosts,
    remote_aes.c.created_at,
    remote_aes.c.updated_at,
    remote_aes.c.deidentify,
)


def _row(values: dict[str, object]) -> RemoteRow:
    data = dict(values)
    data["permissions"] = [str(p) for p in json.loads(str(data["permissions"]))]
    data["hosts"] = [str(h) for h in json.loads(str(data["hosts"]))]
    return RemoteRow(**data)  # type: ignore[arg-type]


def _values(row: RemoteRow) -> dict[str, object]:
    return {
        "ae_title": row.ae_title,
        "host": row.host,
        "port": row.port,
        "tls": row.tls,
        "permissions": json.dumps(list(row.permissions)),
        "check_host": row.check_host,
        "hosts": json.dumps(list(row.hosts)),
        "deidentify": row.deidentify,
        "updated_at": row.updated_at,
    }


def list_remotes(index: Index) -> list[RemoteRow]:
    with index._read.connect() as conn:
        rows = conn.execute(select(*_COLUMNS).order_by(remote_aes.c.name)).all()
    return [_row(r._asdict()) for r in rows]


def get_remote(index: Index, name: str) -> RemoteRow | None:
    with index._read.connect() as conn:
        row = conn.execute(select(*_COLUMNS).where(remote_aes.c.name == name)).first()
    return None if row is None else _row(row._asdict())


def insert_remote(index: Index, name: str, row: RemoteRow) -> None:
    try:
        with index._writing() as conn:
            conn.execute(
                insert(remote_aes).values(name=name, created_at=row.created_at, **_values(row))
            )
    except IntegrityError:
        raise RemoteExists(name) from None


def replace_remote(index: Index, name: str, row: RemoteRow) -> bool:
    """Overwrite the entry ``name`` (``created_at`` kept); whether it existed."""
    with index._writing() as conn:
        result = conn.execute(
            update(remote_aes).where(remote_aes.c.name == name).values(**_values(row))
        )
        return bool(result.rowcount)


def delete_remote(index: Index, name: str) -> bool:
    """Remove the entry ``name``; whether it existed."""
    with index._writing() as conn:
        result = conn.execute(delete(remote_aes).where(remote_aes.c.name == name))
        return bool(result.rowcount)
