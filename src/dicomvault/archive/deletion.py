"""The deletion service: the one implementation behind ``dicomvault delete``, the
DICOMweb and admin-API DELETEs, IOCM rejection notes, retention rules and quota
recycling (issue 6 part 4).

Order (DESIGN.md, "the index never points at a missing blob"):

1. one index transaction removes the rows, recounts the derived attributes of what
   remains, and writes the blobs' names to the deletion queue;
2. after the commit the blobs are removed, and then their queue rows;
3. a crash between 1 and 2 leaves queue rows: :meth:`DeletionService.finish_queue`
   runs at start-up (:func:`dicomvault.archive.recovery.recover`) and on every pass of
   the background runner, and finishes them.

Blobs of instances rejected by an IOCM note wait ``retention.rejection_grace_days`` in
the queue (their rows are gone at once, so nothing serves them meanwhile).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from dicomvault.dicom.kos import RejectionNote
from dicomvault.index.deletion import Deletions, Plan, QueuedBlob, Rejected, Selection
from dicomvault.model.errors import NotFound

if TYPE_CHECKING:
    from dicomvault.archive.archive import Archive

log = logging.getLogger("dicomvault.deletion")

__all__ = ["DeletionReport", "DeletionService", "Selection"]

#: Queue rows handled per index round trip.
_QUEUE_BATCH = 500


@dataclass(slots=True)
class DeletionReport:
    """What a deletion removed, or (``dry_run``) would remove.

    ``patients``, ``studies`` and ``series`` count what goes *whole*; deleting one
    instance of a larger series removes no series.
    """

    target: str
    dry_run: bool
    instances: int = 0
    series: int = 0
    studies: int = 0
    patients: int = 0
    bytes: int = 0
    sop_instance_uids: list[str] = field(default_factory=list)
    series_instance_uids: list[str] = field(default_factory=list)
    study_instance_uids: list[str] = field(default_factory=list)
    #: protected studies the deletion touches (a dry run lists them; a real deletion
    #: of them needed ``force``)
    protected: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, target: str, plan: Plan, *, dry_run: bool) -> DeletionReport:
        return cls(
            target=target,
            dry_run=dry_run,
            instances=len(plan.instances),
            series=len(plan.series_instance_uids),
            studies=len(plan.study_instance_uids),
            patients=plan.patients,
            bytes=plan.bytes,
            sop_instance_uids=[d.sop_instance_uid for d in plan.instances],
            series_instance_uids=list(plan.series_instance_uids),
            study_instance_uids=list(plan.study_instance_uids),
            protected=list(plan.protected),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "dry_run": self.dry_run,
            "patients": self.patients,
            "studies": self.studies,
            "series": self.series,
            "instances": self.instances,
            "bytes": self.bytes,
            "study_instance_uids": self.study_instance_uids,
            "series_instance_uids": self.series_instance_uids,
            "sop_instance_uids": self.sop_instance_uids,
            "protected": self.protected,
        }


def _queued_dict(q: QueuedBlob) -> dict[str, Any]:
    return {
        "sop_instance_uid": q.sop_instance_uid,
        "study_instance_uid": q.study_instance_uid,
        "bytes": q.size,
        "reason": q.reason,
        "queued_at": q.queued_at.isoformat(),
        "not_before": q.not_before.isoformat(),
    }


def _rejected_dict(r: Rejected) -> dict[str, Any]:
    return {
        "sop_instance_uid": r.sop_instance_uid,
        "series_instance_uid": r.series_instance_uid,
        "study_instance_uid": r.study_instance_uid,
        "reason_code": r.reason_code,
        "kos_sop_instance_uid": r.kos_sop_instance_uid,
        "rejected_at": r.rejected_at.isoformat(),
    }


class DeletionService:
    """Deletion for one open :class:`~dicomvault.archive.Archive` (``archive.deletion``)."""

    def __init__(self, archive: Archive) -> None:
        self._archive = archive

    @property
    def _deletions(self) -> Deletions:
        return self._archive.index.deletions

    # -- manual deletion ---------------------------------------------------------------

    def plan(self, selection: Selection) -> DeletionReport:
        """What :meth:`delete` would remove; nothing changes (dry run).

        Raises
        ------
        NotFound, AmbiguousTarget
        """
        return DeletionReport.of(
            selection.describe(), self._deletions.plan(selection), dry_run=True
        )

    def delete(
        self, selection: Selection, *, force: bool = False, reason: str = "manual"
    ) -> DeletionReport:
        """Delete a patient, study, series or instance: rows and queue entries in one
        transaction, then the blobs.

        Raises
        ------
        NotFound
            Nothing matches ``selection``.
        AmbiguousTarget
            A Patient ID without issuer that several patients have.
        Protected
            A touched study is protected and ``force`` is false; nothing was deleted.
        """
        now = datetime.now(UTC)
        plan = self._deletions.delete(
            selection, force=force, reason=reason, now=now, not_before=now
        )
        self._removed(plan)
        report = DeletionReport.of(selection.describe(), plan, dry_run=False)
        log.info(
            "deleted %s: %d instance(s), %d byte(s)%s",
            report.target,
            report.instances,
            report.bytes,
            " (protection forced)" if plan.protected else "",
        )
        return report

    def delete_unprotected_study(self, study_instance_uid: str, reason: str) -> DeletionReport:
        """Delete a study for retention or quota recycling, unless it is protected (or
        gone) by the time the transaction runs; an empty report then."""
        plan = self._deletions.delete_unprotected_study(
            study_instance_uid, reason=reason, now=datetime.now(UTC)
        )
        if plan is None:
            return DeletionReport(f"study {study_instance_uid}", dry_run=False)
        self._removed(plan)
        return DeletionReport.of(f"study {study_instance_uid}", plan, dry_run=False)

    def _removed(self, plan: Plan) -> None:
        """After the commit: the quota gauge, then the blobs due now."""
        self._archive.quota.add(-plan.bytes)
        if plan.instances:
            self.finish_queue()

    # -- the queue ---------------------------------------------------------------------

    def finish_queue(self, now: datetime | None = None) -> int:
        """Remove the blobs of due queue rows, then the rows; returns how many.

        Safe beside other processes doing the same: removing a blob that is gone
        already is a no-op, and so is deleting a queue row twice.
        """
        now = now or datetime.now(UTC)
        done = 0
        store = self._archive.store
        while True:
            due = self._deletions.due(now, _QUEUE_BATCH)
            if not due:
                return done
            removed: list[int] = []
            for queued in due:
                try:
                    store.delete(queued.blob_name)
                except OSError as exc:  # kept queued: the next pass tries again
                    log.warning("could not remove blob %s: %s", queued.blob_name, exc)
                    continue
                removed.append(queued.pk)
            self._deletions.finished(removed)
            done += len(removed)
            if len(removed) < len(due):
                return done

    def pending(self, limit: int = 1000) -> dict[str, Any]:
        """The deletion queue and the rejected instances, as JSON-ready data."""
        queued_total, queued = self._deletions.pending(limit)
        rejected_total, rejected = self._deletions.rejected(limit)
        return {
            "queue": {"total": queued_total, "items": [_queued_dict(q) for q in queued]},
            "rejected": {"total": rejected_total, "items": [_rejected_dict(r) for r in rejected]},
        }

    # -- IOCM rejection (IHE RAD IOCM; PS3.16 CID 7011) ------------------------------------

    def _grace(self) -> timedelta:
        return timedelta(days=self._archive.settings.retention.rejection_grace_days)

    def reject(self, note: RejectionNote) -> DeletionReport:
        """Apply a rejection note: record its instances as rejected (later copies are
        refused) and remove the rows of those stored, at once; their blobs are removed
        after the grace period. Idempotent: a re-sent note changes nothing more.

        Protection does not hold back a rejection: the note is an explicit decision
        about those very instances.
        """
        now = datetime.now(UTC)
        refs = [
            (r.study_instance_uid, r.series_instance_uid, r.sop_instance_uid)
            for r in note.references
        ]
        plan = self._deletions.reject(
            refs,
            reason_code=note.code_value,
            kos_sop_instance_uid=note.sop_instance_uid,
            now=now,
            not_before=now + self._grace(),
        )
        self._archive.quota.add(-plan.bytes)
        if plan.instances and not self._grace():
            self.finish_queue()
        log.info(
            "IOCM rejection note %s (%s %s): %d instance(s) referenced, %d stored removed",
            note.sop_instance_uid,
            note.code_value,
            note.code_meaning,
            len(refs),
            len(plan.instances),
        )
        return DeletionReport.of(f"rejection note {note.sop_instance_uid}", plan, dry_run=False)

    def sweep_rejected(self) -> int:
        """Remove instances indexed although rejected (stored concurrently with their
        rejection note); returns how many."""
        now = datetime.now(UTC)
        plan = self._deletions.sweep_rejected(
            now=now, not_before=now + self._grace(), limit=_QUEUE_BATCH
        )
        self._archive.quota.add(-plan.bytes)
        return len(plan.instances)

    # -- protection --------------------------------------------------------------------

    def protect(self, study_instance_uid: str, note: str = "") -> bool:
        """Protect a study from retention and quota recycling (and from deletion
        without ``force``); False when it already was.

        Raises
        ------
        NotFound
            No such study.
        """
        return self._deletions.protect(study_instance_uid, note, datetime.now(UTC))

    def unprotect(self, study_instance_uid: str) -> bool:
        """Lift the protection; False when the study was not protected.

        Raises
        ------
        NotFound
            The study is neither protected nor stored.
        """
        if self._deletions.unprotect(study_instance_uid):
            return True
        if self._archive.index.row("studies", study_instance_uid=study_instance_uid) is None:
            raise NotFound(f"no study with Study Instance UID {study_instance_uid}")
        return False

    def is_protected(self, study_instance_uid: str) -> bool:
        return self._deletions.is_protected(study_instance_uid)
