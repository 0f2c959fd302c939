"""The ingest hot path: one batch of instances recorded in one transaction.

This runs for every stored instance, so it speaks plain DBAPI (``sqlite3`` or
``psycopg``) on the transaction's own connection: SQLAlchemy Core's per-statement cost
(cache keys, compilation lookup, result wrapping) was measured at about 1 ms of CPU per
instance here, more than the rest of the index work together. The SQL is built once from
the tables of ``schema.py``, so the columns cannot drift from the schema.

A batch reads what it needs up front (one ``IN`` query per level), decides each item —
raising before writing anything of a rejected one — and writes at the end: one multi-row
instance insert and one counter update per touched series and study (PS3.4 C.6.1.1 /
C.6.2.1 derived attributes: Number of Study/Series Related Instances, Modalities in
Study, SOP Classes in Study).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any, NamedTuple

from sqlalchemy import Table

from dicomvault.index.schema import instances, patients, series, studies
from dicomvault.model.errors import DuplicateRejected, HierarchyConflict
from dicomvault.model.records import (
    BlobInfo,
    IndexRecord,
    InstanceRecord,
    PatientRecord,
    SeriesRecord,
    StoreStatus,
    StudyRecord,
)


@dataclass(frozen=True, slots=True)
class PendingInsert:
    record: IndexRecord
    blob: BlobInfo
    source_ae: str | None
    policy: str  # "reject" | "keep-first" | "overwrite" (validated by config)
    received_at: datetime = dataclasses.field(default_factory=lambda: datetime.now(UTC))
    #: The blob's bytes, for ``blob_journal`` (the file is not durable yet), or None.
    journal: bytes | None = None


@dataclass(frozen=True, slots=True)
class InsertOutcome:
    status: StoreStatus
    #: the new blob is not referenced (identical duplicate, keep-first): remove it
    new_blob_unused: bool = False
    #: an overwritten instance's old blob, to remove after the commit
    replaced_blob: str | None = None


class Sql:
    """Statements on a DBAPI connection, written with ``?`` placeholders."""

    def __init__(self, dbapi_connection: Any, *, sqlite: bool) -> None:
        self._cursor = dbapi_connection.cursor()
        self.sqlite = sqlite

    def _text(self, sql: str) -> str:
        return sql if self.sqlite else _pyformat(sql)

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self._cursor.execute(self._text(sql), params)
        return list(self._cursor.fetchall())

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        self._cursor.execute(self._text(sql), params)
        row: tuple[Any, ...] | None = self._cursor.fetchone()
        return row

    def run(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._cursor.execute(self._text(sql), params)

    def many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._cursor.executemany(self._text(sql), list(rows))

    def time(self, value: datetime) -> Any:
        # SQLAlchemy keeps SQLite DateTime as naive "YYYY-MM-DD HH:MM:SS.ffffff" text;
        # write the same so its reads keep working. PostgreSQL takes the object.
        if self.sqlite:
            return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
        return value


@cache
def _pyformat(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


def _marks(n: int) -> str:
    return ",".join("?" * n)


@cache
def _columns(table: Table, record_type: type) -> tuple[str, ...]:
    """The record's fields that are columns of ``table``, in field order."""
    names = set(table.c.keys())
    return tuple(f.name for f in dataclasses.fields(record_type) if f.name in names)


def _insert_sql(table: Table, columns: Sequence[str], *, returning: bool) -> str:
    sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({_marks(len(columns))})"
    return sql + " RETURNING pk" if returning else sql


_PATIENT_COLUMNS = _columns(patients, PatientRecord)
_STUDY_COLUMNS = _columns(studies, StudyRecord)
_SERIES_COLUMNS = _columns(series, SeriesRecord)
_INSTANCE_COLUMNS = (
    *_columns(instances, InstanceRecord),
    "blob_name",
    "size",
    "sha256",
    "dataset_sha256",
    "received_at",
    "source_ae",
    "metadata_json",
    "series_pk",
)
_INSERT_PATIENT = _insert_sql(patients, _PATIENT_COLUMNS, returning=True)
_INSERT_STUDY = _insert_sql(studies, (*_STUDY_COLUMNS, "patient_pk", "updated_at"), returning=True)
_INSERT_SERIES = _insert_sql(series, (*_SERIES_COLUMNS, "study_pk", "updated_at"), returning=True)
_INSERT_INSTANCE = _insert_sql(instances, _INSTANCE_COLUMNS, returning=False)
_UPDATE_INSTANCE = (
    f"UPDATE instances SET {', '.join(f'{c} = ?' for c in _INSTANCE_COLUMNS[:-1])} WHERE pk = ?"
)


def _join(existing: str, value: str | None) -> str:
    """Add ``value`` to a backslash-joined set (Modalities/SOP Classes in Study)."""
    if not value:
        return existing
    items = existing.split("\\") if existing else []
    if value in items:
        return existing
    return "\\".join(sorted([*items, value]))


class _InstanceRow(NamedTuple):
    pk: int | None  # None: planned in this batch, not yet inserted
    sop_instance_uid: str
    dataset_sha256: str
    blob_name: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    study_pk: int


class _SeriesRow(NamedTuple):
    pk: int
    study_instance_uid: str
    study_pk: int


@dataclass
class _StudyState:
    pk: int
    modalities: str
    sop_classes: str
    added: int = 0
    new_series: int = 0
    updated_at: datetime | None = None


def refresh_study_sets(sql: Sql, study_pk: int) -> None:
    """Recompute Modalities / SOP Classes in Study (PS3.4 C.6.2.1.2) from the rows."""
    modalities = sql.all("SELECT DISTINCT modality FROM series WHERE study_pk = ?", (study_pk,))
    sop_classes = sql.all(
        "SELECT DISTINCT i.sop_class_uid FROM instances i JOIN series s ON i.series_pk = s.pk"
        " WHERE s.study_pk = ?",
        (study_pk,),
    )
    sql.run(
        "UPDATE studies SET modalities_in_study = ?, sop_classes_in_study = ? WHERE pk = ?",
        (
            "\\".join(sorted(m for (m,) in modalities if m)),
            "\\".join(sorted(c for (c,) in sop_classes)),
            study_pk,
        ),
    )


class Batch:
    """One batch: read up front, decide item by item, write at the end."""

    def __init__(self, sql: Sql, items: Sequence[PendingInsert]) -> None:
        self.sql = sql
        uids = list({it.record.instance.sop_instance_uid for it in items})
        self.instances: dict[str, _InstanceRow] = {
            row[1]: _InstanceRow(*row)
            for row in sql.all(
                "SELECT i.pk, i.sop_instance_uid, i.dataset_sha256, i.blob_name,"
                " i.sop_class_uid, s.series_instance_uid, t.study_instance_uid, t.pk"
                " FROM instances i JOIN series s ON i.series_pk = s.pk"
                " JOIN studies t ON s.study_pk = t.pk"
                f" WHERE i.sop_instance_uid IN ({_marks(len(uids))})",
                uids,
            )
        }
        series_uids = list({it.record.series.series_instance_uid for it in items})
        self.series: dict[str, _SeriesRow] = {
            row[0]: _SeriesRow(*row[1:])
            for row in sql.all(
                "SELECT s.series_instance_uid, s.pk, t.study_instance_uid, t.pk"
                " FROM series s JOIN studies t ON s.study_pk = t.pk"
                f" WHERE s.series_instance_uid IN ({_marks(len(series_uids))})",
                series_uids,
            )
        }
        study_uids = list({it.record.study.study_instance_uid for it in items})
        self.studies: dict[str, _StudyState] = {
            row[0]: _StudyState(*row[1:])
            for row in sql.all(
                "SELECT study_instance_uid, pk, modalities_in_study, sop_classes_in_study"
                f" FROM studies WHERE study_instance_uid IN ({_marks(len(study_uids))})",
                study_uids,
            )
        }
        self.new_instances: dict[str, list[Any]] = {}
        self.journal: list[tuple[str, bytes]] = []
        self.series_added: Counter[int] = Counter()
        self.refresh_sets: set[int] = set()

    def record_all(self, items: Sequence[PendingInsert]) -> list[InsertOutcome | Exception]:
        results: list[InsertOutcome | Exception] = []
        for item in items:
            try:
                outcome = self._record(item)
            except (DuplicateRejected, HierarchyConflict) as exc:
                results.append(exc)
                continue
            results.append(outcome)
            if item.journal is not None and not outcome.new_blob_unused:
                self.journal.append((item.blob.name, item.journal))
        self._flush()
        return results

    def _instance_row(self, item: PendingInsert, series_pk: int | None) -> list[Any]:
        inst = item.record.instance
        return [
            *(getattr(inst, c) for c in _INSTANCE_COLUMNS[:-8]),
            item.blob.name,
            item.blob.size,
            item.blob.sha256,
            item.blob.dataset_sha256,
            self.sql.time(item.received_at),
            item.source_ae,
            item.record.metadata_json,
            series_pk,
        ]

    def _record(self, item: PendingInsert) -> InsertOutcome:
        rec = item.record
        uid = rec.instance.sop_instance_uid
        existing = self.instances.get(uid)
        if existing is not None:
            return self._duplicate(item, existing)

        series_uid = rec.series.series_instance_uid
        study_uid = rec.study.study_instance_uid
        known_series = self.series.get(series_uid)
        if known_series is not None and known_series.study_instance_uid != study_uid:
            raise HierarchyConflict(
                f"Series Instance UID {series_uid} already belongs to "
                f"study {known_series.study_instance_uid}, not {study_uid}"
            )
        now = self.sql.time(item.received_at)
        study = self.studies.get(study_uid)
        if study is None:
            patient_pk = self._patient_pk(rec.patient)
            row = self.sql.one(
                _INSERT_STUDY,
                (*(getattr(rec.study, c) for c in _STUDY_COLUMNS), patient_pk, now),
            )
            assert row is not None
            self.sql.run(
                "UPDATE patients SET number_of_studies = number_of_studies + 1 WHERE pk = ?",
                (patient_pk,),
            )
            study = self.studies[study_uid] = _StudyState(row[0], "", "")
        if known_series is None:
            row = self.sql.one(
                _INSERT_SERIES,
                (*(getattr(rec.series, c) for c in _SERIES_COLUMNS), study.pk, now),
            )
            assert row is not None
            known_series = self.series[series_uid] = _SeriesRow(row[0], study_uid, study.pk)
            study.new_series += 1
        self.new_instances[uid] = self._instance_row(item, known_series.pk)
        self.instances[uid] = _InstanceRow(
            None,
            uid,
            item.blob.dataset_sha256,
            item.blob.name,
            rec.instance.sop_class_uid,
            series_uid,
            study_uid,
            study.pk,
        )
        self.series_added[known_series.pk] += 1
        study.added += 1
        study.modalities = _join(study.modalities, rec.series.modality)
        study.sop_classes = _join(study.sop_classes, rec.instance.sop_class_uid)
        study.updated_at = item.received_at
        return InsertOutcome(StoreStatus.STORED)

    def _duplicate(self, item: PendingInsert, existing: _InstanceRow) -> InsertOutcome:
        """Same SOP Instance UID again: identical, or the duplicate policy decides."""
        rec = item.record
        uid = rec.instance.sop_instance_uid
        if (
            existing.study_instance_uid != rec.study.study_instance_uid
            or existing.series_instance_uid != rec.series.series_instance_uid
        ):
            raise HierarchyConflict(
                f"SOP Instance UID {uid} is already stored in study "
                f"{existing.study_instance_uid}, series {existing.series_instance_uid}"
            )
        if existing.dataset_sha256 == item.blob.dataset_sha256:
            return InsertOutcome(StoreStatus.DUPLICATE, new_blob_unused=True)
        if item.policy == "reject":
            raise DuplicateRejected(
                f"SOP Instance UID {uid} is already stored with different content "
                "(duplicate policy: reject)"
            )
        if item.policy == "keep-first":
            return InsertOutcome(StoreStatus.KEPT_FIRST, new_blob_unused=True)
        if existing.pk is None:  # planned earlier in this batch: replace the plan
            series_pk = self.new_instances[uid][-1]
            self.new_instances[uid] = self._instance_row(item, series_pk)
        else:
            row = self._instance_row(item, None)[:-1]
            self.sql.run(_UPDATE_INSTANCE, (*row, existing.pk))
            if existing.sop_class_uid != rec.instance.sop_class_uid:
                self.refresh_sets.add(existing.study_pk)
        self.instances[uid] = existing._replace(
            dataset_sha256=item.blob.dataset_sha256,
            blob_name=item.blob.name,
            sop_class_uid=rec.instance.sop_class_uid,
        )
        return InsertOutcome(StoreStatus.OVERWRITTEN, replaced_blob=existing.blob_name)

    def _patient_pk(self, patient: PatientRecord) -> int:
        issuer = patient.issuer_of_patient_id or ""
        found = self.sql.one(
            "SELECT pk FROM patients WHERE patient_id = ? AND issuer_of_patient_id = ?",
            (patient.patient_id, issuer),
        )
        if found is not None:
            return int(found[0])
        values = [getattr(patient, c) for c in _PATIENT_COLUMNS]
        values[_PATIENT_COLUMNS.index("issuer_of_patient_id")] = issuer
        row = self.sql.one(_INSERT_PATIENT, values)
        assert row is not None
        return int(row[0])

    def _flush(self) -> None:
        sql = self.sql
        if self.new_instances:
            sql.many(_INSERT_INSTANCE, self.new_instances.values())
        if self.journal:
            sql.many("INSERT INTO blob_journal (blob_name, data) VALUES (?, ?)", self.journal)
        for series_pk, added in self.series_added.items():
            sql.run(
                "UPDATE series SET number_of_instances = number_of_instances + ? WHERE pk = ?",
                (added, series_pk),
            )
        for study in self.studies.values():
            if study.added:
                sql.run(
                    "UPDATE studies SET number_of_instances = number_of_instances + ?,"
                    " number_of_series = number_of_series + ?, modalities_in_study = ?,"
                    " sop_classes_in_study = ?, updated_at = ? WHERE pk = ?",
                    (
                        study.added,
                        study.new_series,
                        study.modalities,
                        study.sop_classes,
                        sql.time(study.updated_at or datetime.now(UTC)),
                        study.pk,
                    ),
                )
        for study_pk in self.refresh_sets:
            refresh_study_sets(sql, study_pk)
