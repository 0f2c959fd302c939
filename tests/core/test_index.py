"""The index contract, run against every backend (``backend`` fixture: SQLite, PostgreSQL)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from dicomvault.config import Settings
from dicomvault.index import Index, InsertOutcome, PendingInsert, migrate
from dicomvault.index.schema import metadata
from dicomvault.model.errors import DuplicateRejected, HierarchyConflict, NotFound
from dicomvault.model.records import (
    BlobInfo,
    IndexRecord,
    InstanceRecord,
    PatientRecord,
    SeriesRecord,
    StoreStatus,
    StudyRecord,
)


def make_record(
    n: int,
    *,
    study: str = "1.2.3.1",
    series: str = "1.2.3.1.1",
    modality: str = "CT",
    sop_class: str = "1.2.840.10008.5.1.4.1.1.2",
    patient: str = "P1",
) -> IndexRecord:
    return IndexRecord(
        patient=PatientRecord(patient_id=patient, patient_name="Doe^Jane", patient_sex="F"),
        study=StudyRecord(study_instance_uid=study, study_date="20260101", accession_number="A1"),
        series=SeriesRecord(series_instance_uid=series, modality=modality, series_number=1),
        instance=InstanceRecord(
            sop_instance_uid=f"{series}.{n}",
            sop_class_uid=sop_class,
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            instance_number=n,
        ),
        metadata_json=f'{{"00080018":{{"vr":"UI","Value":["{series}.{n}"]}}}}',
    )


def blob(n: int, digest: str = "a") -> BlobInfo:
    return BlobInfo(
        name=f"20260101/0000/{n:032x}", size=100 + n, sha256=digest * 64, dataset_sha256=digest * 64
    )


@pytest.fixture
def index(settings: Settings) -> Index:
    settings.storage.path.mkdir(parents=True, exist_ok=True)
    idx = Index.open(settings.index_url)
    yield idx  # type: ignore[misc]
    idx.close()


def insert(
    index: Index, record: IndexRecord, b: BlobInfo, policy: str = "overwrite"
) -> InsertOutcome:
    [out] = index.insert_batch(
        [PendingInsert(record=record, blob=b, source_ae="MOD", policy=policy)]
    )
    if isinstance(out, Exception):
        raise out
    return out


def test_insert_builds_hierarchy_and_counts(index: Index) -> None:
    results = index.insert_batch(
        [PendingInsert(make_record(i), blob(i), "MOD", "overwrite") for i in range(3)]
        + [
            PendingInsert(
                make_record(
                    9, series="1.2.3.1.2", modality="SR", sop_class="1.2.840.10008.5.1.4.1.1.88.22"
                ),
                blob(9),
                None,
                "overwrite",
            )
        ]
    )
    assert all(isinstance(r, InsertOutcome) and r.status is StoreStatus.STORED for r in results)
    study = index.row("studies", study_instance_uid="1.2.3.1")
    assert study is not None
    assert study["number_of_series"] == 2 and study["number_of_instances"] == 4
    assert study["modalities_in_study"] == "CT\\SR"
    assert (
        study["sop_classes_in_study"] == "1.2.840.10008.5.1.4.1.1.2\\1.2.840.10008.5.1.4.1.1.88.22"
    )
    series = index.row("series", series_instance_uid="1.2.3.1.1")
    assert series is not None and series["number_of_instances"] == 3
    patient = index.row("patients", patient_id="P1")
    assert patient is not None and patient["number_of_studies"] == 1
    assert patient["patient_name"] == "Doe^Jane"
    assert index.stats().instances == 4 and index.stats().bytes == 100 + 101 + 102 + 109
    stored = index.lookup_instance("1.2.3.1.1.2")
    assert stored is not None and stored.blob_name == blob(2).name
    assert index.metadata_json("1.2.3.1.1.2").startswith('{"00080018"')


def test_identical_duplicate_is_not_written_twice(index: Index) -> None:
    insert(index, make_record(1), blob(1))
    out = insert(index, make_record(1), blob(2))  # same digest "a"
    assert out.status is StoreStatus.DUPLICATE and out.new_blob_unused
    assert index.stats().instances == 1
    assert index.lookup_instance("1.2.3.1.1.1").blob_name == blob(1).name  # type: ignore[union-attr]


def test_duplicate_policies(index: Index) -> None:
    insert(index, make_record(1), blob(1, "a"))
    with pytest.raises(DuplicateRejected, match="policy: reject"):
        insert(index, make_record(1), blob(2, "b"), policy="reject")
    out = insert(index, make_record(1), blob(3, "b"), policy="keep-first")
    assert out.status is StoreStatus.KEPT_FIRST and out.new_blob_unused
    out = insert(index, make_record(1), blob(4, "b"), policy="overwrite")
    assert out.status is StoreStatus.OVERWRITTEN and out.replaced_blob == blob(1).name
    assert index.lookup_instance("1.2.3.1.1.1").blob_name == blob(4).name  # type: ignore[union-attr]
    study = index.row("studies", study_instance_uid="1.2.3.1")
    assert study is not None and study["number_of_instances"] == 1


def test_same_uid_under_other_study_is_rejected(index: Index) -> None:
    insert(index, make_record(1), blob(1))
    other = make_record(1)
    other = dataclasses.replace(
        other,
        study=StudyRecord(study_instance_uid="9.9"),
        series=SeriesRecord(series_instance_uid="9.9.1"),
    )
    other = dataclasses.replace(
        other, instance=dataclasses.replace(other.instance, sop_instance_uid="1.2.3.1.1.1")
    )
    with pytest.raises(HierarchyConflict, match=r"already stored in study 1\.2\.3\.1"):
        insert(index, other, blob(2, "b"))
    moved_series = make_record(5, study="7.7")  # series 1.2.3.1.1 now claimed by study 7.7
    with pytest.raises(HierarchyConflict, match=r"already belongs to study 1\.2\.3\.1"):
        insert(index, moved_series, blob(5))
    assert index.stats().studies == 1


def test_the_ingest_connection_is_replaced_after_it_breaks(index: Index) -> None:
    """The ingest writer keeps one DBAPI connection; when it breaks under it (database
    restarted, connection killed) the next batch reconnects instead of failing forever."""
    insert(index, make_record(1), blob(1))
    raw = index._ingest_raw.dbapi_connection
    if index.is_sqlite:
        raw.close()
    else:
        with index._write.connect() as conn:
            conn.exec_driver_sql(f"SELECT pg_terminate_backend({raw.info.backend_pid})")
    assert insert(index, make_record(2), blob(2)).status is StoreStatus.STORED
    assert index._ingest_raw.dbapi_connection is not raw
    assert index.stats().instances == 2


def test_a_driver_integrity_error_is_retried_item_by_item(
    index: Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process inserting the same new patient/study/series between this batch's
    read and its write (PostgreSQL, several workers) raises the driver's IntegrityError
    from the ingest cursor: the batch is retried item by item, and nothing is lost."""
    from dicomvault.index import db

    real = db.Batch.record_all
    raised: list[int] = []

    def collide(self: db.Batch, items: list[PendingInsert]) -> list[object]:
        if not raised:
            raised.append(len(items))
            raise index._write.dialect.loaded_dbapi.IntegrityError("duplicate key (simulated)")
        return real(self, items)  # type: ignore[return-value]

    monkeypatch.setattr(db.Batch, "record_all", collide)
    results = index.insert_batch(
        [PendingInsert(make_record(i), blob(i), "MOD", "overwrite") for i in range(3)]
    )
    assert raised == [3]
    assert [r.status for r in results if isinstance(r, InsertOutcome)] == [StoreStatus.STORED] * 3
    assert index.stats().instances == 3


def test_rejected_item_does_not_spoil_the_batch(index: Index) -> None:
    insert(index, make_record(1), blob(1, "a"))
    results = index.insert_batch(
        [
            PendingInsert(make_record(1), blob(2, "b"), None, "reject"),
            PendingInsert(make_record(2), blob(3), None, "reject"),
        ]
    )
    assert isinstance(results[0], DuplicateRejected)
    assert isinstance(results[1], InsertOutcome) and results[1].status is StoreStatus.STORED
    assert index.stats().instances == 2


def test_delete_keeps_counts_and_removes_empty_parents(index: Index) -> None:
    for i in range(2):
        insert(index, make_record(i), blob(i))
    insert(index, make_record(7, series="1.2.3.1.2", modality="MR"), blob(7))
    stored = index.delete_instance("1.2.3.1.2.7")
    assert stored.blob_name == blob(7).name
    study = index.row("studies", study_instance_uid="1.2.3.1")
    assert study is not None
    assert (study["number_of_series"], study["number_of_instances"]) == (1, 2)
    assert study["modalities_in_study"] == "CT"
    assert index.row("series", series_instance_uid="1.2.3.1.2") is None
    index.delete_instance("1.2.3.1.1.0")
    index.delete_instance("1.2.3.1.1.1")
    assert index.stats().patients == 0 and index.stats().studies == 0
    with pytest.raises(NotFound):
        index.delete_instance("1.2.3.1.1.1")


def test_unicode_names_round_trip(index: Index) -> None:
    names = [
        "Yamada^Tarou=山田^太郎=やまだ^たろう",
        "Hong^Gildong=洪^吉洞=홍^길동",
        "Διονυσιος",
        "Люкceмбypг",
        "قباني^لنزار",
        "שרון^דבורה",
    ]
    for i, name in enumerate(names):
        rec = make_record(i, patient=f"P{i}")
        rec = dataclasses.replace(
            rec,
            patient=dataclasses.replace(rec.patient, patient_name=name),
            study=StudyRecord(study_instance_uid=f"1.2.{i}"),
            series=SeriesRecord(series_instance_uid=f"1.2.{i}.1"),
        )
        insert(index, rec, blob(i))
    for i, name in enumerate(names):
        row = index.row("patients", patient_id=f"P{i}")
        assert row is not None and row["patient_name"] == name


@pytest.mark.filterwarnings(
    # Alembic cannot reflect expression indexes on SQLite and says so; checked by name.
    "ignore:autogenerate skipping metadata-specified expression-based index:UserWarning"
)
def test_migrations_match_schema(settings: Settings) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    settings.storage.path.mkdir(parents=True, exist_ok=True)
    engine = create_engine(settings.index_url)
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revision()
    with engine.connect() as conn:
        # Dialect-specific indexes (ddl_if) are beyond Alembic's compare; checked below.
        folded = {"ix_patients_name_nocase", "ix_patients_name_lower"}
        context = MigrationContext.configure(
            conn, opts={"include_object": lambda obj, name, *_: name not in folded}
        )
        diff = compare_metadata(context, metadata)
        sql = (
            "SELECT name FROM sqlite_master WHERE type = 'index'"
            if engine.dialect.name == "sqlite"
            else "SELECT indexname FROM pg_indexes WHERE tablename = 'patients'"
        )
        names = set(conn.exec_driver_sql(sql).scalars())
    engine.dispose()
    assert diff == []
    sqlite = engine.dialect.name == "sqlite"
    assert ("ix_patients_name_nocase" if sqlite else "ix_patients_name_lower") in names


def test_outdated_schema_is_refused(tmp_path: Path) -> None:
    from dicomvault.index import IndexOutdated

    url = f"sqlite:///{tmp_path / 'x.sqlite3'}"
    engine = create_engine(url)
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num='0000'")
    engine.dispose()
    with pytest.raises(IndexOutdated, match="dicomvault db upgrade"):
        Index.open(url)
