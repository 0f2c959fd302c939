"""Baseline: patients, studies, series, instances.

Revision ID: 0001
Revises:

The baseline creates the tables from ``schema.metadata``. The first revision that changes
``schema.py`` must first freeze this one (copy the then-current tables here as explicit
``op.create_table`` calls), so that 0001 + later revisions always yield the head schema;
``tests/core/test_migrations.py`` compares the migrated database with ``schema.py``.
"""

from __future__ import annotations

from alembic import op

from dicomvault.index.schema import metadata

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    metadata.create_all(bind=op.get_bind())


def downgrade() -> None:
    metadata.drop_all(bind=op.get_bind())
