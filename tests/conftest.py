"""Shared fixtures: settings in a temp data dir, and the index backends (SQLite and a
real PostgreSQL database of this test run's own)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import create_engine, text

from dicomvault.config import Settings, load_settings

if TYPE_CHECKING:
    from dicomvault.archive import Archive

PG_ADMIN_URL = os.environ.get(
    "DICOMVAULT_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A database of this test run's own on the local PostgreSQL; dropped at the end.

    Fails (never skips) when PostgreSQL cannot be reached: the contract suite must run
    against both backends, and a silently skipped backend is an untested one.
    """
    name = f"dicomvault_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is not reachable: {exc}", pytrace=False)
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _reset_pg(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    """Index URL for each backend: "" (SQLite in the data dir) or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return ""
    url: str = request.getfixturevalue("pg_database")
    _reset_pg(url)
    return url


@pytest.fixture
def settings(tmp_path: Path, backend: str) -> Settings:
    return load_settings(
        None,
        {
            "storage": {"path": tmp_path / "data", "fsync": True},
            "index": {"url": backend},
        },
    )


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    return load_settings(None, {"storage": {"path": tmp_path / "data"}})


@pytest.fixture
def archive(settings: Settings) -> Iterator[Archive]:
    from dicomvault.archive import Archive

    with Archive.open(settings) as arch:
        yield arch


@pytest.fixture(autouse=True)
def _audit_logs_conform(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every line of every audit log a test leaves in its ``tmp_path`` (``audit.log``
    and rotated ``audit.log.N``, whoever wrote them: a server thread, a ``dicomvault``
    subprocess, a CLI command) must be a DICOM Audit Message valid per the schema of
    PS3.15 A.5.1 -- so a message any producer adds later is checked by the tests that
    exercise it."""
    yield
    tmp_path = request.node.funcargs.get("tmp_path")
    if not isinstance(tmp_path, Path) or not tmp_path.exists():
        return
    from tests.security.audit_schema import validate_logs_under

    validate_logs_under(tmp_path)
