"""Modality Performed Procedure Step SCP, the archive side (PS3.4 F.7.2).

A step is created IN PROGRESS (N-CREATE) and ended once, COMPLETED or DISCONTINUED
(N-SET); after that it may no longer be updated. The worklist item it performs follows
its state (:func:`dicomvault.archive.worklist.set_step_status`, matched by the Scheduled
Step Attributes Sequence: Study Instance UID, Accession Number, Scheduled Procedure
Step ID), and the performed series are linked to what the archive stores.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dicomvault.archive.archive import Archive
from dicomvault.dicom import mpps as dicom_mpps
from dicomvault.dicom.mpps import (
    DUPLICATE_SOP_INSTANCE,
    NO_SUCH_SOP_INSTANCE,
    MppsError,
    StepData,
    StepSummary,
)
from dicomvault.index import workflow as sql
from dicomvault.model.errors import NotFound

log = logging.getLogger("dicomvault.archive")


@dataclass(frozen=True, slots=True)
class PerformedStep:
    """A stored MPPS and what it is linked to."""

    sop_instance_uid: str
    status: str
    calling_ae_title: str
    patient_id: str | None
    study_instance_uid: str | None
    accession_number: str | None
    modality: str | None
    created_at: datetime
    updated_at: datetime
    dataset: dict[str, Any]


def _now() -> datetime:
    return datetime.now(UTC)


def _row(uid: str, ds: StepData, step: StepSummary, calling: str, created: datetime) -> sql.MppsRow:
    return sql.MppsRow(
        sop_instance_uid=uid,
        status=step.status,
        calling_ae_title=calling,
        patient_id=step.patient_id,
        study_instance_uid=step.study_instance_uid,
        accession_number=step.accession_number,
        modality=step.modality,
        dataset=dicom_mpps.to_json(ds),
        created_at=created,
        updated_at=_now(),
    )


def _follow(archive: Archive, step: StepSummary) -> None:
    """Move the scheduled worklist item(s) to the step's state."""
    from dicomvault.archive import worklist

    for study_uid, accession, sps_id in step.scheduled:
        if not (study_uid or accession or sps_id):
            continue
        try:
            worklist.set_step_status(
                archive,
                study_instance_uid=study_uid,
                accession_number=accession,
                scheduled_procedure_step_id=sps_id,
                status=step.status,
            )
        except Exception as exc:  # the step is recorded; the worklist is best effort
            log.warning("MPPS: worklist item of %s not updated: %s", accession or study_uid, exc)


def create(archive: Archive, sop_instance_uid: str, ds: StepData, *, calling_ae_title: str) -> None:
    """Record an N-CREATE (PS3.4 F.7.2.1). ``ds`` was checked by
    :func:`~dicomvault.dicom.mpps.parse_create`.

    Raises
    ------
    MppsError
        0x0111 Duplicate SOP instance.
    """
    step = dicom_mpps.summary(ds)
    now = _now()
    try:
        sql.insert_mpps(archive.index, _row(sop_instance_uid, ds, step, calling_ae_title, now))
    except sql.DuplicateKey:
        raise MppsError(f"MPPS {sop_instance_uid} exists already", DUPLICATE_SOP_INSTANCE) from None
    _follow(archive, step)


def update(archive: Archive, sop_instance_uid: str, data: bytes | None, syntax: str) -> str:
    """Apply an N-SET (PS3.4 F.7.2.2); returns the resulting status.

    Raises
    ------
    MppsError
        0x0112 No such SOP instance, and those of
        :func:`~dicomvault.dicom.mpps.apply_set`.
    """
    row = sql.get_mpps(archive.index, sop_instance_uid)
    if row is None:
        raise MppsError(f"no MPPS {sop_instance_uid}", NO_SUCH_SOP_INSTANCE)
    merged = dicom_mpps.apply_set(dicom_mpps.from_json(row.dataset), data, syntax)
    step = dicom_mpps.summary(merged)
    new = _row(sop_instance_uid, merged, step, row.calling_ae_title, row.created_at)
    if not sql.replace_mpps(archive.index, new, expected_status=row.status):
        # Another N-SET ended the step between our read and our write.
        raise MppsError(
            "step ended concurrently: may no longer be updated",
            dicom_mpps.PROCESSING_FAILURE,
            dicom_mpps.NO_LONGER_UPDATABLE,
        )
    if step.status != row.status:
        _follow(archive, step)
    return step.status


def _performed(row: sql.MppsRow) -> PerformedStep:
    return PerformedStep(
        row.sop_instance_uid,
        row.status,
        row.calling_ae_title,
        row.patient_id,
        row.study_instance_uid,
        row.accession_number,
        row.modality,
        row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC),
        row.updated_at if row.updated_at.tzinfo else row.updated_at.replace(tzinfo=UTC),
        json.loads(row.dataset),
    )


def get_step(archive: Archive, sop_instance_uid: str) -> PerformedStep:
    row = sql.get_mpps(archive.index, sop_instance_uid)
    if row is None:
        raise NotFound(f"no MPPS {sop_instance_uid}")
    return _performed(row)


def list_steps(
    archive: Archive,
    *,
    status: str | None = None,
    study_instance_uid: str | None = None,
    limit: int = 100,
) -> list[PerformedStep]:
    rows = sql.list_mpps(
        archive.index, status=status, study_instance_uid=study_instance_uid, limit=limit
    )
    return [_performed(row) for row in rows]


def performed_series(archive: Archive, step: PerformedStep) -> list[dict[str, Any]]:
    """The step's Performed Series Sequence linked to the archive: for each series, its
    UID, description and how many of its instances are stored here."""
    return [
        {
            "series_instance_uid": uid,
            "series_description": description,
            "referenced_instances": referenced,
            "stored_instances": len(archive.index.instance_uids(series_instance_uid=uid)),
        }
        for uid, description, referenced in dicom_mpps.performed_series(json.dumps(step.dataset))
    ]
