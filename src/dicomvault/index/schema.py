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
    LargeBinary,
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


# -- Modality Worklist (issue 6 part 2; revision 0004) ---------------------------------
# One row per worklist item (a Requested Procedure, PS3.4 K.6.1.1.2) holding the item as
# DICOM JSON, and one row per Scheduled Procedure Step of it: the C-FIND SCP answers one
# response per step. The summary columns serve the SQL pre-filter only; matching is
# finished on the stored JSON (archive/worklist.py). ``item_id`` is the archive's own key.

worklist_items = Table(
    "worklist_items",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("item_id", String(32), nullable=False, unique=True),
    Column("status", String(16), nullable=False),
    Column("patient_id", Text, nullable=False),
    Column("issuer_of_patient_id", Text, nullable=False, server_default=""),
    Column("patient_name", Text),
    Column("accession_number", Text),
    Column("study_instance_uid", String(64), nullable=False),
    Column("requested_procedure_id", Text),
    Column("dataset_json", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_worklist_items_patient_id", "patient_id"),
    Index("ix_worklist_items_accession", "accession_number"),
    Index("ix_worklist_items_study", "study_instance_uid"),
)

worklist_steps = Table(
    "worklist_steps",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column(
        "item_pk",
        Integer,
        ForeignKey("worklist_items.pk", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    #: Index of the step in the item's Scheduled Procedure Step Sequence (0040,0100).
    Column("position", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("scheduled_procedure_step_id", Text, nullable=False),
    Column("modality", String(16)),
    #: Scheduled Station AE Title (0040,0001), several values joined by a backslash.
    Column("station_ae_titles", Text),
    Column("start_date", String(8), nullable=False),
    Column("start_time", String(32)),
    Index("ix_worklist_steps_status_start", "status", "start_date"),
    Index("ix_worklist_steps_sps_id", "scheduled_procedure_step_id"),
)

# -- end Modality Worklist --

# -- deletion, rejection, retention (issue 6 part 4; revision 0005) --------------------

# Blobs whose index rows are gone, written in the transaction that removes the rows:
# removed after the commit (from ``not_before`` on), then their row. A crash in between
# leaves the row, and the next start-up or runner pass finishes it.
deletion_queue = Table(
    "deletion_queue",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("blob_name", String(80), nullable=False, unique=True),
    Column("sop_instance_uid", String(64), nullable=False),
    Column("study_instance_uid", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    #: manual | rejected | retention | quota
    Column("reason", String(32), nullable=False),
    Column("queued_at", DateTime(timezone=True), nullable=False),
    Column("not_before", DateTime(timezone=True), nullable=False),
    Index("ix_deletion_queue_not_before", "not_before"),
)

# The bytes of small received blobs whose files may not be on the disk yet: written in
# the transaction that indexes them, so that one flush (the index's own commit) makes
# instance and row durable together; the files are flushed later, for many at once, and
# these rows deleted. Start-up recovery rewrites a file that a power cut lost from here.
blob_journal = Table(
    "blob_journal",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("blob_name", String(80), nullable=False),
    Column("data", LargeBinary, nullable=False),
    # Never reused (SQLite's AUTOINCREMENT): a flush drops the rows up to the key it read
    # before its syncfs, so a later row must never get a key at or below one read.
    sqlite_autoincrement=True,
)

# Instances named by an IOCM rejection note (IHE RAD TF-2 IOCM; PS3.16 CID 7011), kept
# after their rows are gone so that a later copy of them is refused.
rejected_instances = Table(
    "rejected_instances",
    metadata,
    Column("sop_instance_uid", String(64), primary_key=True),
    Column("study_instance_uid", String(64), nullable=False),
    Column("series_instance_uid", String(64), nullable=False),
    #: the rejection title's Code Value (113001, 113037, 113038, 113039)
    Column("reason_code", String(16), nullable=False),
    Column("kos_sop_instance_uid", String(64), nullable=False),
    Column("rejected_at", DateTime(timezone=True), nullable=False),
)

# Studies that retention rules and quota recycling never delete (a manual delete needs
# --force). Keyed by UID, not by row: protection is set on studies that exist.
protected_studies = Table(
    "protected_studies",
    metadata,
    Column("study_instance_uid", String(64), primary_key=True),
    Column("protected_at", DateTime(timezone=True), nullable=False),
    Column("note", Text, nullable=False, server_default=""),
)

# -- end deletion --

# -- storage commitment and MPPS (issue 6 parts 1 and 3; revision 0006) -----------------

#: Storage Commitment Push Model requests (PS3.4 J) whose report is owed or was sent: the
#: job table any node may work from (DESIGN.md: nothing only in a node's memory). ``refs``
#: and ``result`` hold JSON: [[class, instance], …] and {"committed": [[c, i], …],
#: "failed": [[c, i, reason], …]}.
commitment_jobs = Table(
    "commitment_jobs",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("transaction_uid", String(64), nullable=False, unique=True),
    Column("calling_ae_title", Text, nullable=False),
    Column("called_ae_title", Text, nullable=False),
    Column("peer_host", Text, nullable=False, server_default=""),
    Column("refs", Text, nullable=False),
    Column("result", Text),
    # pending: report owed; sent: delivered; expired: the deadline passed undelivered
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("deadline", DateTime(timezone=True), nullable=False),
    # A node working on the job owns it until then (a crashed node's claim runs out).
    Column("claimed_until", DateTime(timezone=True)),
    Column("sent_at", DateTime(timezone=True)),
    Column("last_error", Text),
    Index("ix_commitment_jobs_due", "state", "next_attempt_at"),
)

#: Modality Performed Procedure Steps (PS3.4 F), the data set as DICOM JSON (PS3.18 F.2).
mpps = Table(
    "mpps",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("sop_instance_uid", String(64), nullable=False, unique=True),
    Column("status", String(16), nullable=False),
    Column("calling_ae_title", Text, nullable=False),
    Column("patient_id", Text),
    Column("study_instance_uid", Text),
    Column("accession_number", Text),
    Column("modality", Text),
    Column("dataset", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_mpps_study", "study_instance_uid"),
)

# -- end storage commitment and MPPS --

# -- audit trail (issue 7 part 5; revision 0007) ------------------------------------------

#: DICOM Audit Messages (PS3.15 A.5): the XML as sent, plus the fields searched on.
audit_events = Table(
    "audit_events",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("event_time", DateTime(timezone=True), nullable=False),
    Column("event_id", String(16), nullable=False),
    Column("event_type", String(16), nullable=False, server_default=""),
    Column("action", String(1), nullable=False),
    Column("outcome", Integer, nullable=False),
    Column("user_id", Text, nullable=False, server_default=""),
    Column("peer", Text, nullable=False, server_default=""),
    # backslash-joined when the message names several
    Column("patient_id", Text, nullable=False, server_default=""),
    Column("study_instance_uid", Text, nullable=False, server_default=""),
    Column("xml", Text, nullable=False),
    Index("ix_audit_events_time", "event_time"),
    Index("ix_audit_events_event", "event_id", "event_time"),
)

# -- end audit trail --

# -- remote AEs managed over HTTP (issue 7 part 2; revision 0008) ------------------------

# Remote AEs added, changed and removed at run time (``PUT /api/remotes/{name}``,
# ``dicomvault remote add``), next to the read-only ``[remotes.NAME]`` of the TOML file.
# ``permissions`` and ``hosts`` are JSON arrays of strings.

remote_aes = Table(
    "remote_aes",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("ae_title", String(16), nullable=False),
    Column("host", Text, nullable=False),
    Column("port", Integer, nullable=False),
    Column("tls", Boolean, nullable=False, server_default=false()),
    Column("permissions", Text, nullable=False),
    Column("check_host", Boolean, nullable=False, server_default=false()),
    Column("hosts", Text, nullable=False, server_default="[]"),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("deidentify", Boolean, nullable=False, server_default=false()),
)

# -- end remote AEs --
