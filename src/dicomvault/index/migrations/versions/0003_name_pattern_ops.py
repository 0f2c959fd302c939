"""Person-name indexes that serve LIKE prefixes under any PostgreSQL collation.

Revision ID: 0003
Revises: 0002

PostgreSQL can use a btree index for ``LIKE 'abc%'`` only when the index compares bytes:
the database's collation is ``C``, or the index uses the ``text_pattern_ops`` operator
class. The test machines' databases are ``C.UTF-8`` and hid it; on a database created with
``en_US.UTF-8`` (the usual default) the name-prefix queries of C-FIND and QIDO-RS read
every patient. Both name indexes get the operator class (it serves equality too). SQLite
is unchanged.
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP INDEX IF EXISTS ix_patients_name_lower")
    op.execute(
        "CREATE INDEX ix_patients_name_lower ON patients (lower(patient_name) text_pattern_ops)"
    )
    op.execute("DROP INDEX IF EXISTS ix_patients_name")
    op.execute("CREATE INDEX ix_patients_name ON patients (patient_name text_pattern_ops)")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP INDEX IF EXISTS ix_patients_name_lower")
    op.execute("CREATE INDEX ix_patients_name_lower ON patients (lower(patient_name))")
    op.execute("DROP INDEX IF EXISTS ix_patients_name")
    op.execute("CREATE INDEX ix_patients_name ON patients (patient_name)")
