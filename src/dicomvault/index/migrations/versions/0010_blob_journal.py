"""The blob journal: bytes of small received blobs until their files are flushed
(``blob_journal``; README, "How an instance is stored").

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "blob_journal",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("blob_name", sa.String(80), nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sqlite_autoincrement=True,  # keys never reused (see schema.blob_journal)
    )


def downgrade() -> None:
    op.drop_table("blob_journal")
