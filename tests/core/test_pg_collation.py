"""Name-prefix queries use their index on PostgreSQL databases whose collation is not
``C`` (the usual ``en_US.UTF-8``-like default): revision 0003's ``text_pattern_ops``."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

from dicomvault.index import migrate
from tests.conftest import PG_ADMIN_URL

pytestmark = pytest.mark.postgres


@pytest.fixture
def icu_database() -> Iterator[str]:
    """A database of its own with an ICU en-US collation (bytes order ≠ collation order)."""
    name = f"dicomvault_icu_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(
            text(
                f'CREATE DATABASE "{name}" TEMPLATE template0 LOCALE_PROVIDER icu '
                "ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
            )
        )
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_name_prefix_uses_the_index_under_a_non_c_collation(icu_database: str) -> None:
    engine = create_engine(icu_database)
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO patients (patient_id, issuer_of_patient_id, patient_name, "
                "number_of_studies) SELECT 'P' || g, '', 'Name' || g || '^Given', 0 "
                "FROM generate_series(1, 20000) g"
            )
        )
        conn.execute(text("ANALYZE patients"))
        plans = {
            query: "\n".join(conn.execute(text("EXPLAIN " + query)).scalars())
            for query in (
                "SELECT pk FROM patients WHERE lower(patient_name) LIKE 'name123%'",
                "SELECT pk FROM patients WHERE patient_name LIKE 'Name123%'",
            )
        }
    engine.dispose()
    lower, exact = plans.values()
    assert "ix_patients_name_lower" in lower, lower
    assert "ix_patients_name" in exact and "Seq Scan" not in exact, exact
