"""Storage Commitment Push Model SCP over DIMSE (PS3.4 J.3): N-ACTION in, N-EVENT-REPORT
out.

:class:`CommitmentHandler` answers N-ACTION Request Storage Commitment at once — after
the job is durable in the index — and hands the job to the :class:`CommitmentReporter`.
The reporter evaluates the job off the event loop (blobs are re-hashed,
:mod:`dicomvault.archive.commitment`) and sends the N-EVENT-REPORT:

1. on the requester's own association when it is still open (PS3.4 J.3.3: the SCP may
   use the association of the request; the requester is the Storage Commitment SCU there
   and receives the event), when ``commitment.same_association`` is on;
2. otherwise, and when that fails, on a new association to the requester's ``[remotes]``
   entry (found by its AE title), proposing the Storage Commitment Push Model SOP class
   with SCP/SCU Role Selection giving us the SCP role (PS3.4 J.3.3, PS3.7 D.3.3.4), over
   TLS when the entry says ``tls = true``;
3. failures are retried with back-off by :meth:`CommitmentReporter.run`, which every
   ``commitment.poll_interval`` seconds sends what is due, until the job's deadline.
   Jobs left pending by a crash or a restart are picked up the same way.

N-ACTION statuses (PS3.7 10.1.4.1.10): 0x0123 No such action (Action Type ID not 1),
0x0117 Invalid object instance (not the well-known SOP Instance, PS3.4 J.4), 0x0114 No such
argument (no Transaction UID, empty Referenced SOP Sequence), 0x0115 Invalid argument
value (a value that is not a UID, a Transaction UID used before), 0x0110 Processing
failure (data set does not parse, the index does not answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

from dicomvault.archive import Archive
from dicomvault.archive import commitment as jobs
from dicomvault.archive.remotes import effective_remotes
from dicomvault.dicom.commitment import (
    REQUEST_COMMITMENT,
    CommitmentResult,
    InvalidCommitmentRequest,
    encode_commitment_result,
    parse_commitment_request,
)
from dicomvault.dimse.move import find_destination
from dicomvault.dimse.remote import associate_remote
from dicomvault.model.errors import ConfigError
from dicomvault.net import commands as c
from dicomvault.net.errors import NetError
from dicomvault.net.handlers import SUCCESS, DimseStatus, NRequest, NResponse
from dicomvault.net.items import RoleSelection
from dicomvault.net.service_user import ServiceUser
from dicomvault.net.uids import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    STORAGE_COMMITMENT_INSTANCE,
    STORAGE_COMMITMENT_PUSH,
)

log = logging.getLogger("dicomvault.dimse")

NO_SUCH_ACTION: Final = 0x0123
INVALID_OBJECT_INSTANCE: Final = 0x0117
INVALID_ARGUMENT_VALUE: Final = 0x0115
PROCESSING_FAILURE: Final = 0x0110


class CommitmentReporter:
    """Sends the N-EVENT-REPORTs owed (see the module docstring)."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self._tasks: set[asyncio.Task[bool]] = set()

    def deliver_soon(self, job: jobs.CommitmentJob, channel: ServiceUser | None) -> None:
        """Start delivering a new job's report, on ``channel`` if still open. The job was
        recorded already claimed (:func:`~dicomvault.archive.commitment.request_commitment`
        ``claimed=True``), so no poller sends it elsewhere first."""
        task = asyncio.get_running_loop().create_task(
            self.deliver(job.transaction_uid, channel, claimed=job)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def deliver(
        self,
        transaction_uid: str,
        channel: ServiceUser | None = None,
        *,
        claimed: jobs.CommitmentJob | None = None,
    ) -> bool:
        """One delivery attempt for a job, claimed first (another worker may hold it)
        unless the caller holds it already (``claimed``). Returns whether the report was
        answered with Success."""
        archive = self.archive
        job = claimed or await asyncio.to_thread(jobs.claim, archive, transaction_uid)
        if job is None:
            return False
        try:
            result = await asyncio.to_thread(jobs.evaluate, archive, job)
        except Exception as exc:  # the index went away: retry later
            log.warning("commitment %s: evaluation failed: %s", transaction_uid, exc)
            await asyncio.to_thread(jobs.attempt_failed, archive, transaction_uid, str(exc))
            return False
        errors: list[str] = []
        if (
            channel is not None
            and archive.settings.commitment.same_association
            and channel.fsm.state == "Sta6"
        ):
            try:
                await self._send(channel, result)
            except (NetError, OSError, TimeoutError, ReportRefused) as exc:
                errors.append(f"on the request's association: {exc or type(exc).__name__}")
            else:
                await asyncio.to_thread(jobs.delivered, archive, transaction_uid)
                log.info(
                    "assoc=%s commitment %s reported (event %d: %d committed, %d failed)",
                    channel.info.id,
                    transaction_uid,
                    result.event_type_id,
                    len(result.committed),
                    len(result.failed),
                )
                return True
        try:
            await self._send_new_association(job.calling_ae_title, result)
        except (NetError, OSError, TimeoutError, ConfigError, ReportRefused) as exc:
            errors.append(f"to {job.calling_ae_title}: {exc or type(exc).__name__}")
            later = await asyncio.to_thread(
                jobs.attempt_failed, archive, transaction_uid, "; ".join(errors)
            )
            log.warning(
                "commitment %s: report not delivered (%s); %s",
                transaction_uid,
                "; ".join(errors),
                "giving up: deadline passed"
                if later.state == "expired"
                else f"retry at {later.next_attempt_at:%H:%M:%S}",
            )
            return False
        await asyncio.to_thread(jobs.delivered, archive, transaction_uid)
        log.info(
            "commitment %s reported to %s on a new association (event %d: %d committed, %d failed)",
            transaction_uid,
            job.calling_ae_title,
            result.event_type_id,
            len(result.committed),
            len(result.failed),
        )
        return True

    async def _send(self, assoc: ServiceUser, result: CommitmentResult) -> None:
        ctx = assoc.normalized_context(STORAGE_COMMITMENT_PUSH)
        syntax = ctx.transfer_syntax if ctx is not None else EXPLICIT_VR_LITTLE_ENDIAN
        answer = await assoc.n_request(
            c.N_EVENT_REPORT_RQ,
            STORAGE_COMMITMENT_PUSH,
            STORAGE_COMMITMENT_INSTANCE,
            encode_commitment_result(result, syntax),
            type_id=result.event_type_id,
        )
        if answer.status.category not in ("success", "warning"):
            raise ReportRefused(
                f"N-EVENT-REPORT answered 0x{answer.status.status:04X}"
                + (f" ({answer.status.error_comment})" if answer.status.error_comment else "")
            )

    async def _send_new_association(self, ae_title: str, result: CommitmentResult) -> None:
        settings = self.archive.settings
        remote = find_destination(effective_remotes(self.archive), ae_title)
        if remote is None:
            raise ConfigError(f"no [remotes] entry for AE title {ae_title!r} to send the report to")
        async with associate_remote(
            settings,
            remote,
            [(STORAGE_COMMITMENT_PUSH, [EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN])],
            roles=[RoleSelection(STORAGE_COMMITMENT_PUSH, False, True)],
            timeout=min(settings.dicom.idle_timeout, 30.0),
            logger=log,
        ) as assoc:
            await self._send(assoc, result)

    async def run(self, stop: asyncio.Event) -> None:
        """Send due reports every ``commitment.poll_interval`` seconds until ``stop``."""
        interval = self.archive.settings.commitment.poll_interval
        while not stop.is_set():
            try:
                due = await asyncio.to_thread(jobs.due_jobs, self.archive)
            except Exception as exc:  # index unavailable for a moment: try again later
                log.warning("commitment: cannot read due reports: %s", exc)
                due = []
            for transaction_uid in due:
                if stop.is_set():
                    break
                await self.deliver(transaction_uid)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
        for task in list(self._tasks):
            task.cancel()


class ReportRefused(Exception):
    """The requester answered the N-EVENT-REPORT with a failure status."""


class CommitmentHandler:
    """N-ACTION Request Storage Commitment (PS3.4 J.3.2) on the Storage Commitment Push
    Model SOP Class."""

    def __init__(self, archive: Archive, reporter: CommitmentReporter) -> None:
        self.archive = archive
        self.reporter = reporter

    async def handle(self, request: NRequest) -> NResponse:
        if request.type_id != REQUEST_COMMITMENT:
            return NResponse(
                DimseStatus(NO_SUCH_ACTION, f"Action Type ID {request.type_id} is not 1")
            )
        if request.sop_instance_uid != STORAGE_COMMITMENT_INSTANCE:
            return NResponse(
                DimseStatus(
                    INVALID_OBJECT_INSTANCE,
                    f"Requested SOP Instance must be {STORAGE_COMMITMENT_INSTANCE}",
                )
            )
        info = request.association
        try:
            parsed = parse_commitment_request(request.data_set, request.transfer_syntax_uid)
            job = await asyncio.to_thread(
                jobs.request_commitment,
                self.archive,
                parsed,
                calling_ae_title=info.calling_ae_title,
                called_ae_title=info.called_ae_title,
                peer_host=info.peer_host,
                claimed=True,
            )
        except InvalidCommitmentRequest as exc:
            return NResponse(DimseStatus(exc.status, str(exc)))
        except jobs.DuplicateTransaction as exc:
            return NResponse(DimseStatus(INVALID_ARGUMENT_VALUE, str(exc)))
        log.info(
            "assoc=%s commitment %s requested for %d instances by %s",
            info.id,
            parsed.transaction_uid,
            len(parsed.references),
            info.calling_ae_title,
        )
        channel = request.channel if isinstance(request.channel, ServiceUser) else None
        self.reporter.deliver_soon(job, channel)
        return NResponse(SUCCESS)
