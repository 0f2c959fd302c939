"""Retention rules, the storage quota and the background runner (issue 6 part 4).

- **Retention rules** (``[[retention.rules]]``): studies with a series of a modality
  whose Study Date (0008,0020), or last receive, is older than N days are deleted.
- **Quota** (``retention.quota_bytes``): with policy ``reject`` a new instance that
  would take the archive past the quota is refused (C-STORE 0xA700, STOW-RS 507); the
  check reads :class:`QuotaGauge`, a running total, never a ``SUM`` per instance. With
  ``recycle`` the runner deletes the least recently received unprotected studies until
  the archive is under ``quota_low_water`` × the quota.
- **The runner** (:func:`retention_runner`, started by ``serve`` in worker 0) every
  ``retention.interval_seconds``: finishes the deletion queue (blobs of deletions a
  crash interrupted, rejected instances past their grace period), sweeps rejected
  instances that were stored concurrently with their rejection note, applies the rules,
  recycles for the quota. ``dicomvault retention run`` makes one pass.

Protected studies (``dicomvault protect``) are never deleted by rules or recycling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from dicomvault.archive import audit
from dicomvault.archive.deletion import DeletionReport
from dicomvault.index.deletion import Selection
from dicomvault.model.errors import NotFound

if TYPE_CHECKING:
    from dicomvault.archive.archive import Archive

log = logging.getLogger("dicomvault.retention")

#: Seconds the quota gauge trusts its running total before re-reading the index (other
#: processes — ``serve --workers``, ``import`` — store and delete too).
QUOTA_REFRESH_SECONDS = 10.0
#: Studies a rule selects per pass, and recycling candidates per index round trip.
_RULE_BATCH = 1000
_RECYCLE_BATCH = 100


class QuotaGauge:
    """The bytes the archive holds, for the quota check on every stored instance.

    A running total: this process's stores and deletions adjust it, and it is re-read
    from the index (``SUM`` of instance sizes) at most every
    :data:`QUOTA_REFRESH_SECONDS`, which brings in other processes' work. Inactive (no
    cost at all) when ``quota_bytes`` is 0.
    """

    def __init__(self, quota_bytes: int, total: Callable[[], int]) -> None:
        self.quota_bytes = quota_bytes
        self._total = total
        self._lock = threading.Lock()
        self._base = 0
        self._delta = 0
        self._read_at = -math.inf

    @property
    def active(self) -> bool:
        return self.quota_bytes > 0

    def add(self, amount: int) -> None:
        """Count ``amount`` bytes stored (negative: removed) by this process."""
        if self.quota_bytes > 0 and amount:
            with self._lock:
                self._delta += amount

    def used(self) -> int:
        """The bytes held, as of the last read plus this process's changes since."""
        if time.monotonic() - self._read_at > QUOTA_REFRESH_SECONDS:
            self.refresh()
        with self._lock:
            return self._base + self._delta

    def refresh(self) -> None:
        total = self._total()
        with self._lock:
            self._base, self._delta = total, 0
            self._read_at = time.monotonic()

    def would_exceed(self, size: int) -> bool:
        """Whether storing ``size`` more bytes takes the archive past the quota."""
        return self.active and self.used() + size > self.quota_bytes


@dataclass(slots=True)
class RetentionReport:
    """One pass of the runner (or, ``dry_run``, what it would delete)."""

    dry_run: bool
    queue_finished: int = 0
    rejected_swept: int = 0
    used_bytes: int = 0
    retention: list[DeletionReport] = field(default_factory=list)
    recycled: list[DeletionReport] = field(default_factory=list)

    @property
    def deleted(self) -> list[DeletionReport]:
        return [r for r in (*self.retention, *self.recycled) if r.instances]

    def as_dict(self) -> dict[str, Any]:
        def studies(reports: list[DeletionReport]) -> list[dict[str, Any]]:
            return [
                {
                    "study_instance_uid": r.target.removeprefix("study "),
                    "instances": r.instances,
                    "bytes": r.bytes,
                }
                for r in reports
                if r.instances
            ]

        return {
            "dry_run": self.dry_run,
            "queue_finished": self.queue_finished,
            "rejected_swept": self.rejected_swept,
            "used_bytes": self.used_bytes,
            "retention": studies(self.retention),
            "recycled": studies(self.recycled),
        }


def _study(archive: Archive, uid: str, reason: str, dry_run: bool) -> DeletionReport:
    if dry_run:
        try:
            return archive.deletion.plan(Selection("study", uid))
        except NotFound:
            return DeletionReport(f"study {uid}", dry_run=True)
    selection = Selection("study", uid)
    subjects = audit.subjects_of_selection(archive, selection)
    report = archive.deletion.delete_unprotected_study(uid, reason)
    # DICOM Study Deleted (PS3.15 A.5.3.8), by the archive itself, per study; queued.
    audit.selection_deleted(
        archive, selection, report, subjects, user=archive.settings.dicom.ae_title,
        host=None, reason=reason,
    )  # fmt: skip
    return report


def run_once(archive: Archive, *, dry_run: bool = False, measure: bool = True) -> RetentionReport:
    """One pass: queue, rejected sweep, retention rules, quota recycling.

    With ``dry_run`` nothing changes and the report lists what the rules and the quota
    would delete now. ``measure=False`` (the runner's passes): the bytes held are summed
    only when a quota needs them, not for the report (a sum over every instance: seconds
    on an index of millions, which slowed the queries of a server just started).
    """
    settings = archive.settings.retention
    deletions = archive.index.deletions
    report = RetentionReport(dry_run=dry_run)
    if not dry_run:
        report.queue_finished = archive.deletion.finish_queue()
        report.rejected_swept = archive.deletion.sweep_rejected()
    now = datetime.now(UTC)
    chosen: set[str] = set()
    for rule in settings.rules:
        cutoff = now - timedelta(days=rule.older_than_days)
        for uid in deletions.expired_studies(
            modality=rule.modality, by=rule.by, cutoff=cutoff, limit=_RULE_BATCH
        ):
            if uid not in chosen:
                chosen.add(uid)
                report.retention.append(_study(archive, uid, "retention", dry_run))
    recycling = settings.quota_policy == "recycle" and settings.quota_bytes > 0
    if measure or dry_run or recycling:
        used = deletions.total_bytes()
        if dry_run:
            used -= sum(r.bytes for r in report.retention)
        if recycling and used > settings.quota_bytes:
            target = int(settings.quota_bytes * settings.quota_low_water)
            used = _recycle(archive, report, chosen, used, target, dry_run)
        report.used_bytes = used
    if not dry_run and archive.quota.active:
        archive.quota.refresh()
    for r in report.deleted:
        log.info("retention: deleted %s (%d instance(s), %d bytes)", r.target, r.instances, r.bytes)
    return report


def _recycle(
    archive: Archive,
    report: RetentionReport,
    chosen: set[str],
    used: int,
    target: int,
    dry_run: bool,
) -> int:
    """Delete least recently received unprotected studies until ``used <= target``."""
    deletions = archive.index.deletions
    while used > target:
        # Studies already chosen (by a rule, or skipped because protected meanwhile)
        # are passed over; ask for enough rows to find new ones behind them.
        candidates = [
            (uid, size)
            for uid, size in deletions.least_recent_studies(_RECYCLE_BATCH + len(chosen))
            if uid not in chosen
        ]
        if not candidates:
            log.warning(
                "quota: %d bytes held, above the low-water mark of %d, and no unprotected "
                "study is left to recycle",
                used,
                target,
            )
            return used
        for uid, _size in candidates:
            if used <= target:
                break
            chosen.add(uid)
            done = _study(archive, uid, "quota", dry_run)
            report.recycled.append(done)
            used -= done.bytes
    return used


async def retention_runner(archive: Archive, stop: asyncio.Event) -> None:
    """Run :func:`run_once` every ``retention.interval_seconds`` (first at once) until
    ``stop`` is set; the blocking work runs in a thread, off the event loop."""
    interval = archive.settings.retention.interval_seconds
    while not stop.is_set():
        try:
            await asyncio.to_thread(run_once, archive, measure=False)
        except Exception:  # the runner must outlive a failing pass (database away …)
            log.exception("retention runner: pass failed; retrying in %.0f s", interval)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
