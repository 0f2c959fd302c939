"""Storage Commitment Push Model SCP, the archive side (PS3.4 J.3).

A Request Storage Commitment becomes a *job* row in the index database before the
N-ACTION is answered, so the report owed survives a restart and any node may send it
(DESIGN.md, Scale). Evaluating a job checks every referenced instance (PS3.4 J.3.3.1.1.1
Failure Reasons):

- not stored (or rejected and hidden) → 0x0112 No such object instance;
- stored under another SOP class → 0x0119 Class / Instance conflict;
- blob missing, or its size / SHA-256 no longer what was stored → 0x0110 Processing
  failure (the archive cannot vouch for bytes that changed on disk).

The result is computed once, at the first delivery attempt, and kept with the job, so
every retry reports the same thing. Deliveries that fail are retried with exponential
back-off (``commitment.retry_initial`` doubling up to ``commitment.retry_max``) until
``commitment.deadline_hours`` have passed; the job is then ``expired``. A Transaction
UID is taken once: a second request with it is refused, never merged.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from dicomvault.archive.archive import Archive
from dicomvault.dicom.commitment import (
    CLASS_INSTANCE_CONFLICT,
    NO_SUCH_OBJECT_INSTANCE,
    PROCESSING_FAILURE,
    CommitmentRequest,
    CommitmentResult,
    Reference,
)
from dicomvault.index import workflow as sql
from dicomvault.model.errors import DicomVaultError, NotFound

#: How long one delivery attempt holds a job (longer than an association's timeouts).
CLAIM = timedelta(minutes=5)


class DuplicateTransaction(DicomVaultError):
    """A Request Storage Commitment reused a Transaction UID (PS3.4 J.3.2.1.1: unique)."""


@dataclass(frozen=True, slots=True)
class CommitmentJob:
    """A commitment request and where its report stands."""

    transaction_uid: str
    calling_ae_title: str
    called_ae_title: str
    peer_host: str
    references: tuple[Reference, ...]
    result: CommitmentResult | None
    state: str  # pending | sent | expired
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    deadline: datetime
    sent_at: datetime | None
    last_error: str | None

    def as_json(self) -> dict[str, object]:
        """The job for ``GET /api/commitments`` and ``--json`` output."""
        out: dict[str, object] = {
            "transaction_uid": self.transaction_uid,
            "calling_ae_title": self.calling_ae_title,
            "state": self.state,
            "attempts": self.attempts,
            "requested": len(self.references),
            "created_at": self.created_at.isoformat(),
            "deadline": self.deadline.isoformat(),
            "sent_at": self.sent_at.isoformat() if self.sent_at else None,
            "last_error": self.last_error,
        }
        if self.result is not None:
            out["committed"] = len(self.result.committed)
            out["failed"] = [
                {"sop_class_uid": r.sop_class_uid, "sop_instance_uid": r.sop_instance_uid,
                 "failure_reason": f"0x{reason:04X}"}
                for r, reason in self.result.failed
            ]  # fmt: skip
        return out


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes for what was written as UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _job(row: sql.JobRow) -> CommitmentJob:
    refs = tuple(Reference(c, i) for c, i in json.loads(row.refs))
    result = None
    if row.result:
        data = json.loads(row.result)
        result = CommitmentResult(
            row.transaction_uid,
            tuple(Reference(c, i) for c, i in data["committed"]),
            tuple((Reference(c, i), int(reason)) for c, i, reason in data["failed"]),
            data.get("retrieve_ae_title"),
        )
    return CommitmentJob(
        row.transaction_uid,
        row.calling_ae_title,
        row.called_ae_title,
        row.peer_host,
        refs,
        result,
        row.state,
        row.attempts,
        _aware(row.created_at),
        _aware(row.next_attempt_at),
        _aware(row.deadline),
        _aware(row.sent_at) if row.sent_at else None,
        row.last_error,
    )


def request_commitment(
    archive: Archive,
    request: CommitmentRequest,
    *,
    calling_ae_title: str,
    called_ae_title: str,
    peer_host: str,
    claimed: bool = False,
) -> CommitmentJob:
    """Record a Request Storage Commitment as a pending job (PS3.4 J.3.2).

    ``claimed``: the job is born held (as :func:`claim` would hold it) by the caller,
    which delivers it at once on the requester's association. Without it, a poller in
    this or another worker could claim the job between the insert and the caller's claim
    and send the report on a new association instead, which a requester waiting on its
    own association never sees. A crash before delivery leaves the hold to expire.

    Raises
    ------
    DuplicateTransaction
        The Transaction UID was used before.
    """
    now = _now()
    deadline = now + timedelta(hours=archive.settings.commitment.deadline_hours)
    refs = json.dumps([[r.sop_class_uid, r.sop_instance_uid] for r in request.references])
    try:
        sql.insert_job(
            archive.index,
            transaction_uid=request.transaction_uid,
            calling_ae_title=calling_ae_title,
            called_ae_title=called_ae_title,
            peer_host=peer_host,
            refs=refs,
            now=now,
            deadline=deadline,
            claimed_until=now + CLAIM if claimed else None,
        )
    except sql.DuplicateKey:
        raise DuplicateTransaction(
            f"already used: Transaction UID {request.transaction_uid}"
        ) from None
    return get_job(archive, request.transaction_uid)


def get_job(archive: Archive, transaction_uid: str) -> CommitmentJob:
    row = sql.get_job(archive.index, transaction_uid)
    if row is None:
        raise NotFound(f"no storage commitment with Transaction UID {transaction_uid}")
    return _job(row)


def list_jobs(
    archive: Archive, *, state: str | None = None, limit: int = 100
) -> list[CommitmentJob]:
    return [_job(row) for row in sql.list_jobs(archive.index, state=state, limit=limit)]


def due_jobs(archive: Archive, limit: int = 50) -> list[str]:
    """Transaction UIDs whose next delivery attempt is due."""
    return sql.due_jobs(archive.index, _now(), limit)


def claim(archive: Archive, transaction_uid: str) -> CommitmentJob | None:
    """Hold a pending job for one delivery attempt; ``None`` when another worker holds
    it, or it is no longer pending."""
    row = sql.claim_job(archive.index, transaction_uid, _now(), CLAIM)
    return None if row is None else _job(row)


def _check(archive: Archive, ref: Reference) -> int | None:
    """The Failure Reason for one reference, ``None`` when the archive commits to it."""
    try:
        stored = archive.get_instance(ref.sop_instance_uid)
    except NotFound:
        return NO_SUCH_OBJECT_INSTANCE
    if stored.sop_class_uid != ref.sop_class_uid:
        return CLASS_INSTANCE_CONFLICT
    digest = hashlib.sha256()
    size = 0
    try:
        with archive.store.open(stored.blob_name) as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
    except (NotFound, OSError):
        return PROCESSING_FAILURE
    if size != stored.size or digest.hexdigest() != stored.sha256:
        return PROCESSING_FAILURE
    return None


def evaluate(archive: Archive, job: CommitmentJob) -> CommitmentResult:
    """The job's result: computed (blobs re-hashed) the first time, then as stored.
    Blocking: call it off the event loop."""
    if job.result is not None:
        return job.result
    committed: list[Reference] = []
    failed: list[tuple[Reference, int]] = []
    for ref in job.references:
        reason = _check(archive, ref)
        if reason is None:
            committed.append(ref)
        else:
            failed.append((ref, reason))
    result = CommitmentResult(
        job.transaction_uid, tuple(committed), tuple(failed), archive.settings.dicom.ae_title
    )
    data = {
        "committed": [[r.sop_class_uid, r.sop_instance_uid] for r in committed],
        "failed": [[r.sop_class_uid, r.sop_instance_uid, reason] for r, reason in failed],
        "retrieve_ae_title": result.retrieve_ae_title,
    }
    sql.update_job(archive.index, job.transaction_uid, result=json.dumps(data))
    return result


def delivered(archive: Archive, transaction_uid: str) -> None:
    """The report was answered with Success by the requester."""
    job = get_job(archive, transaction_uid)
    sql.update_job(
        archive.index,
        transaction_uid,
        state="sent",
        sent_at=_now(),
        attempts=job.attempts + 1,
        claimed_until=None,
        last_error=None,
    )


def attempt_failed(archive: Archive, transaction_uid: str, error: str) -> CommitmentJob:
    """One delivery attempt failed: schedule the next (exponential back-off) or expire
    the job once its deadline has passed."""
    job = get_job(archive, transaction_uid)
    settings = archive.settings.commitment
    attempts = job.attempts + 1
    delay = min(settings.retry_initial * 2 ** (attempts - 1), settings.retry_max)
    now = _now()
    next_at = now + timedelta(seconds=delay)
    state = "expired" if next_at > job.deadline else "pending"
    sql.update_job(
        archive.index,
        transaction_uid,
        state=state,
        attempts=attempts,
        next_attempt_at=next_at,
        claimed_until=None,
        last_error=error[:1000],
    )
    return get_job(archive, transaction_uid)
