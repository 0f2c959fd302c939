"""Modality Worklist items (PS3.4 K).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "worklist_items",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("item_id", sa.String(32), nullable=False, unique=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("patient_id", sa.Text, nullable=False),
        sa.Column("issuer_of_patient_id", sa.Text, nullable=False, server_default=""),
        sa.Column("patient_name", sa.Text),
        sa.Column("accession_number", sa.Text),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("requested_procedure_id", sa.Text),
        sa.Column("dataset_json", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_worklist_items_patient_id", "worklist_items", ["patient_id"])
    op.create_index("ix_worklist_items_accession", "worklist_items", ["accession_number"])
    op.create_index("ix_worklist_items_study", "worklist_items", ["study_instance_uid"])
    op.create_table(
        "worklist_steps",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "item_pk",
            sa.Integer,
            sa.ForeignKey("worklist_items.pk", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("scheduled_procedure_step_id", sa.Text, nullable=False),
        sa.Column("modality", sa.String(16)),
        sa.Column("station_ae_titles", sa.Text),
        sa.Column("start_date", sa.String(8), nullable=False),
        sa.Column("start_time", sa.String(32)),
    )
    op.create_index("ix_worklist_steps_item_pk", "worklist_steps", ["item_pk"])
    op.create_index("ix_worklist_steps_status_start", "worklist_steps", ["status", "start_date"])
    op.create_index("ix_worklist_steps_sps_id", "worklist_steps", ["scheduled_procedure_step_id"])


def downgrade() -> None:
    op.drop_table("worklist_steps")
    op.drop_table("worklist_items")
