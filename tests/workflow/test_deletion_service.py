"""The deletion service on both index backends (SQLite and PostgreSQL): dry runs change
nothing, each level keeps the derived counts right, protection, and a crash between the
index commit and the blob removal finished by the next open."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomvault.archive import Archive
from dicomvault.archive.deletion import Selection
from dicomvault.config import Settings
from dicomvault.model.errors import AmbiguousTarget, NotFound, Protected
from tests.workflow.deletion_fixtures import ROOT, blob_files, instance, store, store_many

STUDY_A = ROOT + ".1"
STUDY_B = ROOT + ".2"


def _fill(archive: Archive, tmp_path: Path) -> dict[str, list[str]]:
    """Patient PID1: study A (CT series of 3, MR series of 2), study B (CT series of 1);
    patient PID2: study C (1 CT)."""
    return {
        "a_ct": store_many(archive, tmp_path, 3, study=STUDY_A, series=STUDY_A + ".1"),
        "a_mr": store_many(
            archive, tmp_path, 2, study=STUDY_A, series=STUDY_A + ".2", modality="MR"
        ),
        "b": store_many(archive, tmp_path, 1, study=STUDY_B, series=STUDY_B + ".1"),
        "c": store_many(
            archive, tmp_path, 1, study=ROOT + ".3", series=ROOT + ".3.1", patient_id="PID2"
        ),
    }


def _snapshot(archive: Archive) -> tuple[object, ...]:
    stats = archive.stats()
    return (
        stats,
        sorted(blob_files(archive)),
        archive.index.row("studies", study_instance_uid=STUDY_A),
    )


def test_dry_run_reports_and_changes_nothing(archive: Archive, tmp_path: Path) -> None:
    uids = _fill(archive, tmp_path)
    before = _snapshot(archive)
    report = archive.deletion.plan(Selection("patient", "PID1"))
    assert (report.patients, report.studies, report.series, report.instances) == (1, 2, 3, 6)
    assert report.dry_run and report.bytes == sum(
        archive.get_instance(u).size for u in uids["a_ct"] + uids["a_mr"] + uids["b"]
    )
    assert sorted(report.study_instance_uids) == [STUDY_A, STUDY_B]
    assert sorted(report.sop_instance_uids) == sorted(uids["a_ct"] + uids["a_mr"] + uids["b"])
    report = archive.deletion.plan(Selection("instance", uids["a_mr"][0]))
    assert (report.patients, report.studies, report.series, report.instances) == (0, 0, 0, 1)
    report = archive.deletion.plan(Selection("series", STUDY_A + ".2"))
    assert (report.studies, report.series, report.instances) == (0, 1, 2)
    assert _snapshot(archive) == before


def test_each_level_keeps_counts_and_derived_attributes(archive: Archive, tmp_path: Path) -> None:
    uids = _fill(archive, tmp_path)
    # One instance of the MR series: the series stays, counts drop.
    archive.deletion.delete(Selection("instance", uids["a_mr"][0]))
    study = archive.index.row("studies", study_instance_uid=STUDY_A)
    assert study is not None
    assert (study["number_of_series"], study["number_of_instances"]) == (2, 4)
    assert study["modalities_in_study"] == "CT\\MR"
    # The rest of the MR series: the series goes, MR leaves Modalities in Study.
    report = archive.deletion.delete(Selection("series", STUDY_A + ".2"))
    assert (report.series, report.instances) == (1, 1)
    study = archive.index.row("studies", study_instance_uid=STUDY_A)
    assert study is not None
    assert (study["number_of_series"], study["number_of_instances"]) == (1, 3)
    assert study["modalities_in_study"] == "CT"
    # A whole study: the patient keeps the other one.
    report = archive.deletion.delete(Selection("study", STUDY_A))
    assert (report.patients, report.studies, report.instances) == (0, 1, 3)
    patient = archive.index.row("patients", patient_id="PID1")
    assert patient is not None and patient["number_of_studies"] == 1
    # The patient: everything of PID1 goes, PID2 stays.
    report = archive.deletion.delete(Selection("patient", "PID1", issuer=""))
    assert (report.patients, report.studies, report.instances) == (1, 1, 1)
    assert archive.index.row("patients", patient_id="PID1") is None
    stats = archive.stats()
    assert (stats.patients, stats.studies, stats.series, stats.instances) == (1, 1, 1, 1)
    verify = archive.verify()
    assert verify.consistent and verify.checked == 1 and not verify.orphans
    assert len(blob_files(archive)) == 1
    assert archive.deletion.pending()["queue"]["total"] == 0


def test_unknown_and_outside_the_hierarchy_is_not_found(archive: Archive, tmp_path: Path) -> None:
    uids = _fill(archive, tmp_path)
    for selection in (
        Selection("study", "1.2.3.4"),
        Selection("patient", "NOBODY"),
        Selection("patient", "PID1", issuer="OTHER"),
        Selection("series", STUDY_A + ".1", study=STUDY_B),
        Selection("instance", uids["a_ct"][0], study=STUDY_A, series=STUDY_A + ".2"),
    ):
        with pytest.raises(NotFound):
            archive.deletion.delete(selection)
    assert archive.stats().instances == 7


def test_patient_id_with_two_issuers_needs_the_issuer(archive: Archive, tmp_path: Path) -> None:
    store(archive, tmp_path, instance(study=ROOT + ".5", series=ROOT + ".5.1", issuer="HOSP_A"))
    store(archive, tmp_path, instance(study=ROOT + ".6", series=ROOT + ".6.1", issuer="HOSP_B"))
    with pytest.raises(AmbiguousTarget, match="HOSP_A"):
        archive.deletion.delete(Selection("patient", "PID1"))
    report = archive.deletion.delete(Selection("patient", "PID1", issuer="HOSP_B"))
    assert report.study_instance_uids == [ROOT + ".6"]
    assert archive.stats().patients == 1


def test_protected_study_needs_force(archive: Archive, tmp_path: Path) -> None:
    uids = _fill(archive, tmp_path)
    assert archive.deletion.protect(STUDY_A, "legal hold")
    assert not archive.deletion.protect(STUDY_A)
    with pytest.raises(NotFound):
        archive.deletion.protect("1.2.3.4")
    for selection in (
        Selection("study", STUDY_A),
        Selection("instance", uids["a_ct"][0]),
        Selection("patient", "PID1"),
    ):
        with pytest.raises(Protected, match=STUDY_A):
            archive.deletion.delete(selection)
    assert archive.stats().instances == 7
    assert archive.deletion.plan(Selection("patient", "PID1")).protected == [STUDY_A]
    report = archive.deletion.delete(Selection("study", STUDY_A), force=True)
    assert report.instances == 5 and report.protected == [STUDY_A]
    # The protection went with the study.
    assert not archive.deletion.is_protected(STUDY_A)
    assert archive.deletion.unprotect(STUDY_B) is False
    with pytest.raises(NotFound):
        archive.deletion.unprotect("1.2.3.4")


def test_crash_after_the_index_commit_is_finished_on_open(
    settings: Settings, tmp_path: Path
) -> None:
    """The index transaction of a deletion commits, the process dies before removing a
    single blob: reopening the archive removes them (and the queue rows)."""
    from datetime import UTC, datetime

    with Archive.open(settings) as archive:
        store_many(archive, tmp_path, 3, study=STUDY_A, series=STUDY_A + ".1")
        kept = store(archive, tmp_path, instance(study=STUDY_B, series=STUDY_B + ".1"))
        assert len(blob_files(archive)) == 4
        now = datetime.now(UTC)
        # What DeletionService.delete does before it touches a blob.
        archive.index.deletions.delete(
            Selection("study", STUDY_A), force=False, reason="manual", now=now, not_before=now
        )
        assert archive.stats().instances == 1
        assert len(blob_files(archive)) == 4  # the "crash": no blob removed yet
        assert archive.deletion.pending()["queue"]["total"] == 3
        # verify does not call the queued blobs orphans (they are accounted for).
        assert archive.verify().orphans == []
    with Archive.open(settings) as archive:
        assert blob_files(archive) == {archive.get_instance(kept).blob_name}
        assert archive.deletion.pending()["queue"]["total"] == 0
        report = archive.verify()
        assert report.consistent and report.checked == 1


def test_rejection_note_on_both_backends(archive: Archive, tmp_path: Path) -> None:
    from dicomvault.model.errors import InstanceRejected
    from tests.core.dicomfiles import write_part10
    from tests.workflow.deletion_fixtures import rejection_note

    uids = _fill(archive, tmp_path)
    refs = [(STUDY_A, STUDY_A + ".2", uid) for uid in uids["a_mr"]]
    refs.append((STUDY_A, STUDY_A + ".9", ROOT + ".99.1"))  # never stored: refused later
    note = rejection_note(refs, code="113038", meaning="Incorrect Modality Worklist Entry")
    archive.store_file(write_part10(note, tmp_path / "kos.dcm"))
    study = archive.index.row("studies", study_instance_uid=STUDY_A)
    assert study is not None
    # 3 CT + the note; MR left Modalities in Study.
    assert (study["number_of_series"], study["number_of_instances"]) == (2, 4)
    assert study["modalities_in_study"] == "CT\\KO"
    with pytest.raises(InstanceRejected, match=f"rejected by KOS {note.SOPInstanceUID}"):
        archive.store_file(tmp_path / f"{uids['a_mr'][0]}.dcm")
    listing = archive.deletion.pending()["rejected"]
    assert listing["total"] == 3
    assert {r["reason_code"] for r in listing["items"]} == {"113038"}
    assert archive.verify().consistent
