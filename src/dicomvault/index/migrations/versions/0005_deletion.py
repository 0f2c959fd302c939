"""Deletion jobs, rejected instances, protected studies.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deletion_queue",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("blob_name", sa.String(80), nullable=False, unique=True),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_deletion_queue_not_before", "deletion_queue", ["not_before"])
    op.create_table(
        "rejected_instances",
        sa.Column("sop_instance_uid", sa.String(64), primary_key=True),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("series_instance_uid", sa.String(64), nullable=False),
        sa.Column("reason_code", sa.String(16), nullable=False),
        sa.Column("kos_sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("rejected_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "protected_studies",
        sa.Column("study_instance_uid", sa.String(64), primary_key=True),
        sa.Column("protected_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("note", sa.Text, nullable=False, server_default=""),
    )


def downgrade() -> None:
    op.drop_table("protected_studies")
    op.drop_table("rejected_instances")
    op.drop_index("ix_deletion_queue_not_before", table_name="deletion_queue")
    op.drop_table("deletion_queue")
