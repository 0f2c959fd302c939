"""HTTP users and tokens below the web layer: the service functions, the migrations that
add their tables (both backends), the ``user`` / ``token`` commands, and ``serve``
refusing a non-loopback HTTP address without users."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

from dicomvault.archive import users
from dicomvault.config import Settings
from dicomvault.index import Index, migrate
from dicomvault.index.schema import metadata
from dicomvault.model.errors import NotFound

DV = str(Path(sys.executable).with_name("dicomvault"))
PASSWORD = "correct horse battery"


def dv(*args: str | Path, stdin: str = "", env: dict[str, str] | None = None, timeout: float = 60
       ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DV, *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def dv_here(*args: str | Path, stdin: str = "") -> Ran:
    """The CLI run in this process (click's runner): the same code path as the installed
    script without ~1 s of interpreter start-up per call."""
    from click.testing import CliRunner

    from dicomvault.cli.main import cli

    result = CliRunner().invoke(cli, [str(a) for a in args], input=stdin)
    code = result.exit_code
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Ran(code, result.stdout, result.stderr)


def _schema(url: str) -> dict[str, object]:
    """Tables, columns (name, type, nullable, default), indexes, unique constraints and
    foreign keys as the database reports them."""
    engine = create_engine(url)
    try:
        found = inspect(engine)
        tables: dict[str, object] = {}
        for table in sorted(found.get_table_names()):
            if table == "alembic_version":
                continue
            tables[table] = {
                "columns": [
                    (c["name"], str(c["type"]), c["nullable"], str(c.get("default")))
                    for c in found.get_columns(table)
                ],
                "indexes": sorted(
                    (i["name"] or "", tuple(map(str, i["column_names"])), bool(i["unique"]),
                     str(i.get("expressions")))
                    for i in found.get_indexes(table)
                ),
                "unique": sorted(
                    tuple(u["column_names"]) for u in found.get_unique_constraints(table)
                ),
                "fks": sorted(
                    (tuple(f["constrained_columns"]), f["referred_table"])
                    for f in found.get_foreign_keys(table)
                ),
            }
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                rows = conn.exec_driver_sql(
                    "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
                ).all()
            else:
                rows = conn.exec_driver_sql(
                    "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
                ).all()
        tables["index ddl"] = sorted(
            (name, sql) for name, sql in rows if not name.startswith("alembic_version")
        )
        return tables
    finally:
        engine.dispose()


@pytest.mark.filterwarnings(
    "ignore:autogenerate skipping metadata-specified expression-based index:UserWarning",
    "ignore:Skipped unsupported reflection of expression-based index:UserWarning",
)
def test_0001_then_head_equals_a_fresh_database(
    settings: Settings, tmp_path: Path, backend: str
) -> None:
    settings.storage.path.mkdir(parents=True, exist_ok=True)
    url = settings.index_url
    engine = create_engine(url)
    migrate.upgrade(engine, "0001")
    assert migrate.current_revision(engine) == "0001"
    assert "users" not in inspect(engine).get_table_names()
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revision() == "0010"
    engine.dispose()
    stepwise = _schema(url)

    # A fresh database straight from schema.py, the same backend.
    if backend:
        fresh_engine = create_engine(url)
        with fresh_engine.begin() as conn:
            conn.exec_driver_sql("DROP SCHEMA public CASCADE")
            conn.exec_driver_sql("CREATE SCHEMA public")
        fresh_url = url
    else:
        fresh_url = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
        fresh_engine = create_engine(fresh_url)
    metadata.create_all(fresh_engine)
    fresh_engine.dispose()
    assert _schema(fresh_url) == stepwise


def test_users_and_tokens_in_the_index(settings: Settings) -> None:
    settings.storage.path.mkdir(parents=True, exist_ok=True)
    index = Index.open(settings.index_url)
    try:
        assert not users.users_exist(index)
        users.add_user(index, "ana", PASSWORD, "uploader")
        assert users.users_exist(index)
        with pytest.raises(users.UserError, match="already exists"):
            users.add_user(index, "ana", PASSWORD, "viewer")
        with pytest.raises(users.UserError, match="shorter than 8"):
            users.add_user(index, "bob", "short", "viewer")
        with pytest.raises(users.UserError, match="unknown role"):
            users.add_user(index, "bob", PASSWORD, "root")
        with pytest.raises(users.UserError, match="':'"):
            users.add_user(index, "a:b", PASSWORD, "viewer")
        assert [(u.name, u.role) for u in users.list_users(index)] == [("ana", "uploader")]
        principal = users.verify_password(index, "ana", PASSWORD)
        assert principal is not None and principal.may("store") and not principal.may("delete")
        assert users.verify_password(index, "ana", "wrong password") is None
        assert users.verify_password(index, "nobody", PASSWORD) is None

        new = users.create_token(index, "ana", "ci", timedelta(days=1))
        resolved = users.resolve_token(index, new.token)
        assert resolved is not None and (resolved.name, resolved.role) == ("ana", "uploader")
        users.revoke_token(index, new.id)
        assert users.resolve_token(index, new.token) is None
        with pytest.raises(users.AuthFailed, match="token revoked"):
            users.authenticate_token(index, new.token)
        with pytest.raises(NotFound):
            users.revoke_token(index, new.id)
        with pytest.raises(NotFound):
            users.create_token(index, "nobody")

        users.remove_user(index, "ana")
        assert not users.users_exist(index) and users.list_tokens(index) == []
        with pytest.raises(NotFound):
            users.remove_user(index, "ana")
    finally:
        index.close()


def test_user_and_token_commands(tmp_path: Path) -> None:
    data = tmp_path / "data"
    added = dv("user", "add", "ana", "--role", "admin", "--password-stdin", "--data-dir", data,
               stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    short = dv_here(
        "user", "add", "bob", "--role", "viewer", "--password-stdin", "--data-dir", data,
        stdin="short\n",
    )  # fmt: skip
    assert short.returncode == 2 and "shorter than 8" in short.stderr
    again = dv_here(
        "user", "add", "ana", "--role", "viewer", "--password-stdin", "--data-dir", data,
        stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert again.returncode == 2 and "already exists" in again.stderr
    listed = json.loads(dv_here("user", "list", "--json", "--data-dir", data).stdout)
    assert [(u["name"], u["role"]) for u in listed] == [("ana", "admin")]
    assert "ana" in dv_here("user", "list", "--data-dir", data).stdout

    created = dv_here(
        "token", "create", "ana", "--label", "ci", "--expires-days", "30", "--data-dir", data
    )
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("dvt_") and "not shown again" in created.stderr
    tokens = json.loads(dv_here("token", "list", "--json", "--data-dir", data).stdout)
    assert [(t["user"], t["label"], t["state"]) for t in tokens] == [("ana", "ci", "active")]
    assert token not in json.dumps(tokens)
    assert tokens[0]["expires_at"] is not None
    assert dv_here("token", "revoke", str(tokens[0]["id"]), "--data-dir", data).returncode == 0
    listed_after = json.loads(dv_here("token", "list", "--json", "--data-dir", data).stdout)
    assert listed_after[0]["state"] == "revoked"
    assert dv_here("token", "revoke", str(tokens[0]["id"]), "--data-dir", data).returncode == 2
    assert dv_here("token", "create", "nobody", "--data-dir", data).returncode == 2

    viewer = dv_here(
        "user", "add", "vic", "--role", "viewer", "--password-stdin", "--data-dir", data,
        stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert viewer.returncode == 0, viewer.stderr
    last = dv_here("user", "remove", "ana", "--data-dir", data)
    assert last.returncode == 2 and "last admin" in last.stderr
    assert dv_here("user", "remove", "vic", "--data-dir", data).returncode == 0
    removed = dv_here("user", "remove", "ana", "--data-dir", data)
    assert removed.returncode == 0 and "no HTTP users left" in removed.stderr
    assert json.loads(dv_here("user", "list", "--json", "--data-dir", data).stdout) == []
    assert dv_here("user", "remove", "ana", "--data-dir", data).returncode == 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        return int(sock.getsockname()[1])


def test_serve_refuses_a_non_loopback_http_address_without_users(tmp_path: Path) -> None:
    http_port = _free_port()
    proc = dv(
        "serve", "--data-dir", tmp_path / "data", "--dicom-port", "0",
        "--http-port", str(http_port),
        env={"DICOMVAULT_HTTP__HOST": "0.0.0.0"},
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "no HTTP user exists" in proc.stderr
    assert "dicomvault user add admin --role admin" in proc.stderr
    # It exited before listening: the port is still free.
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", http_port))
