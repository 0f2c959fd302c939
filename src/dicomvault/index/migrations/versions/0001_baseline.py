"""Baseline: patients, studies, series, instances.

Revision ID: 0001
Revises:

Frozen: the tables and indexes exactly as ``schema.py`` defined them when revision 0002
was added, written out as explicit operations so that 0001 + later revisions always yield
the head schema whatever ``schema.py`` becomes (``tests/core/test_index.py`` compares the
migrated database with ``schema.py``, and a database made at 0001 then upgraded with a
fresh one). Never edit this file; add a revision.

The case-folded person-name index is dialect-specific, as in ``schema.py``: SQLite
``COLLATE NOCASE``, PostgreSQL ``lower(patient_name)``. (``schema.py`` asks for
``text_pattern_ops`` on the latter but keyed it so that SQLAlchemy never emitted it; the
databases made until now have a plain ``lower()`` index and so does this baseline.)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.create_table(
        "patients",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("patient_id", sa.Text, nullable=False),
        sa.Column("issuer_of_patient_id", sa.Text, nullable=False, server_default=""),
        sa.Column("patient_name", sa.Text),
        sa.Column("patient_birth_date", sa.String(32)),
        sa.Column("patient_birth_time", sa.String(32)),
        sa.Column("patient_sex", sa.String(16)),
        sa.Column("other_patient_ids", sa.Text),
        sa.Column("ethnic_group", sa.Text),
        sa.Column("patient_comments", sa.Text),
        sa.Column("number_of_studies", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_index("ix_patients_name", "patients", ["patient_name"])
    if dialect == "sqlite":
        op.execute(
            'CREATE INDEX ix_patients_name_nocase ON patients (patient_name COLLATE "NOCASE")'
        )
    elif dialect == "postgresql":
        op.execute("CREATE INDEX ix_patients_name_lower ON patients (lower(patient_name))")
    op.create_index(
        "ix_patients_identity", "patients", ["patient_id", "issuer_of_patient_id"], unique=True
    )

    op.create_table(
        "studies",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("patient_pk", sa.Integer, sa.ForeignKey("patients.pk"), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("study_date", sa.String(32)),
        sa.Column("study_time", sa.String(32)),
        sa.Column("accession_number", sa.Text),
        sa.Column("study_id", sa.Text),
        sa.Column("study_description", sa.Text),
        sa.Column("referring_physician_name", sa.Text),
        sa.Column("timezone_offset_from_utc", sa.String(16)),
        sa.Column("patient_age", sa.String(16)),
        sa.Column("patient_size", sa.String(32)),
        sa.Column("patient_weight", sa.String(32)),
        sa.Column("specific_character_set", sa.Text),
        sa.Column("modalities_in_study", sa.Text, nullable=False, server_default=""),
        sa.Column("sop_classes_in_study", sa.Text, nullable=False, server_default=""),
        sa.Column("number_of_series", sa.Integer, nullable=False, server_default="0"),
        sa.Column("number_of_instances", sa.Integer, nullable=False, server_default="0"),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_studies_date", "studies", ["study_date"])
    op.create_index("ix_studies_accession", "studies", ["accession_number"])
    op.create_index("ix_studies_patient_pk", "studies", ["patient_pk"])

    op.create_table(
        "series",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("study_pk", sa.Integer, sa.ForeignKey("studies.pk"), nullable=False),
        sa.Column("series_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("modality", sa.String(16)),
        sa.Column("series_number", sa.Integer),
        sa.Column("series_description", sa.Text),
        sa.Column("series_date", sa.String(32)),
        sa.Column("series_time", sa.String(32)),
        sa.Column("body_part_examined", sa.Text),
        sa.Column("institution_name", sa.Text),
        sa.Column("station_name", sa.Text),
        sa.Column("performed_procedure_step_start_date", sa.String(32)),
        sa.Column("performed_procedure_step_start_time", sa.String(32)),
        sa.Column("scheduled_procedure_step_id", sa.Text),
        sa.Column("requested_procedure_id", sa.Text),
        sa.Column("number_of_instances", sa.Integer, nullable=False, server_default="0"),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_series_study_pk", "series", ["study_pk"])
    op.create_index("ix_series_modality", "series", ["modality"])

    op.create_table(
        "instances",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("series_pk", sa.Integer, sa.ForeignKey("series.pk"), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("transfer_syntax_uid", sa.String(64), nullable=False),
        sa.Column("instance_number", sa.Integer),
        sa.Column("content_date", sa.String(32)),
        sa.Column("content_time", sa.String(32)),
        sa.Column("acquisition_date_time", sa.String(64)),
        sa.Column("rows", sa.Integer),
        sa.Column("columns", sa.Integer),
        sa.Column("bits_allocated", sa.Integer),
        sa.Column("number_of_frames", sa.Integer),
        sa.Column("image_type", sa.Text),
        sa.Column("completion_flag", sa.String(16)),
        sa.Column("verification_flag", sa.String(16)),
        sa.Column("content_label", sa.Text),
        sa.Column("blob_name", sa.String(80), nullable=False, unique=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("dataset_sha256", sa.String(64), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source_ae", sa.String(16)),
        sa.Column("metadata_json", sa.Text, nullable=False),
    )
    op.create_index("ix_instances_sop_class", "instances", ["sop_class_uid"])
    op.create_index("ix_instances_series_pk", "instances", ["series_pk"])


def downgrade() -> None:
    for table in ("instances", "series", "studies", "patients"):
        op.drop_table(table)
