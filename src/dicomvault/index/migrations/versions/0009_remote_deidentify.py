"""Remote AEs that receive de-identified copies only (``remote_aes.deidentify``;
PS3.15 Annex E, docs/deidentification.md).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("remote_aes") as batch:
        batch.add_column(
            sa.Column("deidentify", sa.Boolean, nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("remote_aes") as batch:
        batch.drop_column("deidentify")
