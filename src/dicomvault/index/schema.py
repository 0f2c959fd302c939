"""The index schema (SQLAlchemy Core), the same on SQLite and PostgreSQL.

Columns are the PS3.4 C.6.1.1 (patient root) and C.6.2.1 (study root) unique, required
and optional keys at each level, plus what PS3.18 Table 10.6.1-5/-6/-7 returns from
QIDO-RS, plus the archive's own bookkeeping. Derived attributes (Number of Study Related
Series/Instances, Modalities in Study, SOP Classes in Study) are kept up to date on insert
and delete so queries never aggregate.

Changing a table here needs a new Alembic revision in ``migrations/versions``; revision
0001 is the baseline and creates the tables as they were then (see its docstring).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    false,
    func,
)

metadata = MetaData()

# VR lengths (PS3.5 Table 6.2-1) are not enforced by the database: real data breaks them
# and an archive must keep what it was sent; Text/String without length on both backends.

patients = Table(
    "patients",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("patient_id", Text, nullable=False),
    Column("issuer_of_patient_id", Text, nullable=False, server_default=""),
    Column("patient_name", Text),
    Column("patient_birth_date", String(32)),
    Column("patient_birth_time", String(32)),
    Column("patient_sex", String(16)),
    Column("other_patient_ids", Text),
    Column("ethnic_group", Text),
    Column("patient_comments", Text),
    Column("number_of_studies", Integer, nullable=False, server_default="0"),
    Index("ix_patients_identity", "patient_id", "issuer_of_patient_id", unique=True),
    # text_pattern_ops: PostgreSQL serves LIKE prefixes from it under any collation
    # (revision 0003); other dialects ignore the option.
    Index("ix_patients_name", "patient_name", postgresql_ops={"patient_name": "text_pattern_ops"}),
)

# Person names match case-insensitively by default (query.case_insensitive_names): the
# query adds a prefix condition on the folded name that these serve. Measured on 100,000
# studies (bench/bench_find.py): PatientName "ABCD*" median 18.6 → 5.0 ms (SQLite),
# 19.0 → 5.6 ms (PostgreSQL).
Index("ix_patients_name_nocase", patients.c.patient_name.collate("NOCASE")).ddl_if(dialect="sqlite")
Index(
    "ix_patients_name_lower",
    func.lower(patients.c.patient_name).label("lower_name"),
    postgresql_ops={"lower_name": "text_pattern_ops"},
).ddl_if(dialect="postgresql")

studies = Table(
    "studies",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("patient_pk", Integer, ForeignKey("patients.pk"), nullable=False, index=True),
    Column("study_instance_uid", String(64), nullable=False, unique=True),
    Column("study_date", String(32)),
    Column("study_time", String(32)),
    Column("accession_number", Text),
    Column("study_id", Text),
    Column("study_description", Text),
    Column("referring_physician_name", Text),
    Column("timezone_offset_from_utc", String(16)),
    Column("patient_age", String(16)),
    Column("patient_size", String(32)),
    Column("patient_weight", String(32)),
    Column("specific_character_set", Text),
    Column("modalities_in_study", Text, nullable=False, server_default=""),
    Column("sop_classes_in_study", Text, nullable=False, server_default=""),
    Column("number_of_series", Integer, nullable=False, server_default="0"),
    Column("number_of_instances", Integer, nullable=False, server_default="0"),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_studies_date", "study_date"),
    Index("ix_studies_accession", "accession_number"),
)

series = Table(
    "series",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("study_pk", Integer, ForeignKey("studies.pk"), nullable=False, index=True),
    Column("series_instance_uid", String(64), nullable=False, unique=True),
    Column("modality", String(16)),
    Column("series_number", Integer),
    Column("series_description", Text),
    Column("series_date", String(32)),
    Column("series_time", String(32)),
    Column("body_part_examined", Text),
    Column("institution_name", Text),
    Column("station_name", Text),
    Column("performed_procedure_step_start_date", String(32)),
    Column("performed_procedure_step_start_time", String(32)),
    Column("scheduled_procedure_step_id", Text),
    Column("requested_procedure_id", Text),
    Column("number_of_instances", Integer, nullable=False, server_default="0"),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_series_modality", "modality"),
)

instances = Table(
    "instances",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("series_pk", Integer, ForeignKey("series.pk"), nullable=False, index=True),
    Column("sop_instance_uid", String(64), nullable=False, unique=True),
    Column("sop_class_uid", String(64), nullable=False),
    Column("transfer_syntax_uid", String(64), nullable=False),
    Column("instance_number", Integer),
    Column("content_date", String(32)),
    Column("content_time", String(32)),
    Column("acquisition_date_time", String(64)),
    Column("rows", Integer),
    Column("columns", Integer),
    Column("bits_allocated", Integer),
    Column("number_of_frames", Integer),
    Column("image_type", Text),
    Column("completion_flag", String(16)),
    Column("verification_flag", String(16)),
    Column("content_label", Text),
    # The archive's bookkeeping.
    Column("blob_name", String(80), nullable=False, unique=True),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("dataset_sha256", String(64), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("source_ae", String(16)),
    Column("metadata_json", Text, nullable=False),
    Index("ix_instances_sop_class", "sop_class_uid"),
)

# HTTP users and their API tokens (security issue, part 4; revision 0002). Passwords are
# argon2id hashes (PHC strings); tokens are kept as the SHA-256 of the token, never the
# token itself (a token is 256 random bits: a slow hash would add nothing).

users = Table(
    "users",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("password_hash", Text, nullable=False),
    Column("role", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("disabled", Boolean, nullable=False, server_default=false()),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column(
        "user_pk", Integer, ForeignKey("users.pk", ondelete="CASCADE"), nullable=False, index=True
    ),
    Column("token_sha256", String(64), nullable=False, unique=True),
    Column("label", Text, nullable=False, server_default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
    Column("last_used_at", DateTime(timezone=True)),
)
