"""Remote AEs managed through the HTTP admin API (issue 7, part 2).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "remote_aes",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("ae_title", sa.String(16), nullable=False),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("port", sa.Integer, nullable=False),
        sa.Column("tls", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("permissions", sa.Text, nullable=False),
        sa.Column("check_host", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("hosts", sa.Text, nullable=False, server_default="[]"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("remote_aes")
