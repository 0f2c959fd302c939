"""Storage commitment jobs (PS3.4 J) and MPPS instances (PS3.4 F).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "commitment_jobs",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("transaction_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("calling_ae_title", sa.Text, nullable=False),
        sa.Column("called_ae_title", sa.Text, nullable=False),
        sa.Column("peer_host", sa.Text, nullable=False, server_default=""),
        sa.Column("refs", sa.Text, nullable=False),
        sa.Column("result", sa.Text),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deadline", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_until", sa.DateTime(timezone=True)),
        sa.Column("sent_at", sa.DateTime(timezone=True)),
        sa.Column("last_error", sa.Text),
    )
    op.create_index("ix_commitment_jobs_due", "commitment_jobs", ["state", "next_attempt_at"])
    op.create_table(
        "mpps",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("calling_ae_title", sa.Text, nullable=False),
        sa.Column("patient_id", sa.Text),
        sa.Column("study_instance_uid", sa.Text),
        sa.Column("accession_number", sa.Text),
        sa.Column("modality", sa.Text),
        sa.Column("dataset", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_mpps_study", "mpps", ["study_instance_uid"])


def downgrade() -> None:
    op.drop_table("mpps")
    op.drop_table("commitment_jobs")
