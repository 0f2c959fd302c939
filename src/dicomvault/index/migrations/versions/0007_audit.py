"""Audit trail records (PS3.15 A.5).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("event_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event_id", sa.String(16), nullable=False),
        sa.Column("event_type", sa.String(16), nullable=False, server_default=""),
        sa.Column("action", sa.String(1), nullable=False),
        sa.Column("outcome", sa.Integer, nullable=False),
        sa.Column("user_id", sa.Text, nullable=False, server_default=""),
        sa.Column("peer", sa.Text, nullable=False, server_default=""),
        sa.Column("patient_id", sa.Text, nullable=False, server_default=""),
        sa.Column("study_instance_uid", sa.Text, nullable=False, server_default=""),
        sa.Column("xml", sa.Text, nullable=False),
    )
    op.create_index("ix_audit_events_time", "audit_events", ["event_time"])
    op.create_index("ix_audit_events_event", "audit_events", ["event_id", "event_time"])


def downgrade() -> None:
    op.drop_table("audit_events")
