"""The audit trail service (issue 7 part 5; PS3.15 A.5): what ``dimse/``, ``web/`` and
``cli/`` call when something auditable happens.

Each function here builds the PS3.15 A.5.3 message of one event (or hands a builder to
the trail, to run once the patients of its studies are looked up) and gives it to the
archive's :class:`~dicomvault.archive.audit_trail.AuditTrail` (:func:`trail_of`), which
writes the log file, the index table ``audit_events`` and the syslog stream without
blocking the caller. Also here: searching the recorded events (:func:`search`) and,
with ``audit.retention_days``, pruning old rows of ``audit_events``
(:func:`prune_runner`; the log file stays the full record).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final

from dicomvault.archive.audit_syslog import SYSLOG_TIMEOUT, syslog_sender
from dicomvault.archive.audit_trail import (
    AuditTrail,
    Subjects,
    audit_log,
    audit_log_path,
    by_study,
    close_trail,
    event_row,
    trail_of,
    transferred,
)
from dicomvault.config import Settings
from dicomvault.index import Index
from dicomvault.index.audit import (
    MAX_LIMIT,
    AuditFilter,
    AuditRow,
    insert_events,
    prune_events,
    study_subjects,
)
from dicomvault.index.audit import search as search_events
from dicomvault.model.errors import ConfigError
from dicomvault.security import audit as msg
from dicomvault.security.audit import AuditMessage, AuditSource

if TYPE_CHECKING:
    from dicomvault.archive.archive import Archive
    from dicomvault.archive.deletion import DeletionReport, Selection
    from dicomvault.model.records import StoredInstance, StoreResult

__all__ = [
    "MAX_LIMIT",
    "AuditFilter",
    "AuditRow",
    "AuditTrail",
    "audit_log",
    "audit_log_path",
    "close_trail",
    "search",
    "trail_of",
]

log = logging.getLogger("dicomvault.audit")

# -- what the adapters call (dimse/, web/, cli/) --------------------------------------


def application_activity(archive: Archive, *, started: bool, launcher: str | None = None) -> None:
    """Application Activity start / stop (PS3.15 A.5.3.1). Before the stop message,
    the open WADO-RS read tallies are recorded (they precede it in the log)."""
    trail = trail_of(archive)
    if not started:
        trail.release_reads()
    trail.record(
        msg.application_activity(
            trail.source,
            trail.archive_participant(roles=(msg.ROLE_APPLICATION,)),
            started=started,
            launcher=(
                msg.peer_participant(launcher, None, roles=(msg.ROLE_APPLICATION_LAUNCHER,))
                if launcher
                else None
            ),
        )
    )


def security_alert(
    archive: Archive,
    alert_type: msg.Code,
    *,
    user: str,
    host: str | None,
    subject: str,
    description: str,
    subject_type: msg.Code = msg.NODE_ID,
    subject_name: str | None = None,
    ae: bool = False,
) -> None:
    """A Security Alert (PS3.15 A.5.3.11) caused by ``user`` (an AE title when ``ae``)
    at ``host``, reported by the archive."""
    trail = trail_of(archive)
    trail.record(
        msg.security_alert(
            trail.source,
            trail.archive_participant(),
            alert_type,
            performer=msg.peer_participant(user, host, requestor=False, ae=ae),
            subject=subject,
            subject_type=subject_type,
            subject_name=subject_name,
            description=description,
        )
    )


def association_rejected(
    archive: Archive, calling_ae: str, called_ae: str, host: str, reason: str
) -> None:
    """An A-ASSOCIATE-RJ: Security Alert, Node Authentication (PS3.15 A.5.3.11); the
    subject is the node, ``AE@host`` (the table's node_name@domain_name form)."""
    security_alert(
        archive,
        msg.NODE_AUTHENTICATION,
        user=calling_ae,
        host=host,
        subject=f"{calling_ae}@{host}",
        subject_name=calling_ae,
        description=f"association from {calling_ae!r} to {called_ae!r} rejected: {reason}",
        ae=True,
    )


def tls_failed(archive: Archive, host: str, port: int, reason: str) -> None:
    """A failed TLS handshake: Security Alert, Node Authentication (PS3.15 A.5.3.11)."""
    security_alert(
        archive,
        msg.NODE_AUTHENTICATION,
        user=host,
        host=host,
        subject=host,
        description=f"TLS handshake from {host}:{port} failed: {reason}",
    )


def queried(
    archive: Archive,
    user: str,
    host: str | None,
    queried: str,
    query_bytes: bytes,
    *,
    transfer_syntax: str | None = None,
    failure: str | None = None,
) -> None:
    """Query (PS3.15 A.5.3.10): a C-FIND Identifier (``queried`` its SOP Class UID,
    with its ``transfer_syntax``; ``user`` the calling AE title) or an HTTP query
    (``queried`` the path, ``query_bytes`` path and query string; ``user`` a user)."""
    trail = trail_of(archive)
    dimse = transfer_syntax is not None
    trail.record(
        msg.query(
            trail.source,
            msg.peer_participant(user, host, roles=(msg.ROLE_SOURCE,), ae=dimse),
            trail.archive_participant(roles=(msg.ROLE_DESTINATION,)),
            queried,
            query_bytes,
            transfer_syntax=transfer_syntax,
            outcome=msg.SUCCESS if failure is None else msg.MINOR_FAILURE,
            outcome_description=failure,
        )
    )


def retrieve_started(
    archive: Archive,
    instances: Sequence[StoredInstance],
    *,
    requestor: str,
    requestor_host: str,
    destination: str,
    destination_host: str | None,
    anonymized: bool | None = None,
) -> None:
    """Begin Transferring DICOM Instances (PS3.15 A.5.3.3) for a C-MOVE / C-GET: one
    message per patient (the message "may only include information about a single
    patient") naming every study of that patient about to be sent; ``anonymized`` when
    the receiver gets de-identified copies (A.5.2: the study object's Anonymized)."""
    trail = trail_of(archive)
    if not trail.enabled or not instances:
        return
    studies = by_study(instances)
    sender = trail.archive_participant(roles=(msg.ROLE_SOURCE,))
    receiver = msg.peer_participant(
        destination, destination_host, requestor=destination == requestor,
        roles=(msg.ROLE_DESTINATION,), ae=True,
    )  # fmt: skip
    extra = (
        [] if destination == requestor
        else [msg.peer_participant(requestor, requestor_host, ae=True)]
    )  # fmt: skip
    source = trail.source

    def build(subjects: Subjects) -> list[AuditMessage]:
        known = subjects(list(studies))
        patients = {u: p for u, (p, _) in known.items()}
        return [
            msg.begin_transferring(
                source, sender, receiver, group, patients, others=extra, anonymized=anonymized
            )
            for group in msg.by_patient(studies, patients)
        ]

    trail.record(build)


def retrieve_finished(
    archive: Archive,
    instances: Sequence[StoredInstance],
    *,
    requestor: str,
    requestor_host: str,
    destination: str,
    destination_host: str | None,
    failed: int,
    description: str | None = None,
    anonymized: bool | None = None,
) -> None:
    """DICOM Instances Transferred (PS3.15 A.5.3.7), action R, one per study sent by
    C-MOVE / C-GET; outcome 4 when some sub-operations failed, 8 when all did;
    ``anonymized`` when the receiver got de-identified copies."""
    trail = trail_of(archive)
    if not trail.enabled or not instances:
        return
    outcome = msg.SUCCESS
    if failed:
        outcome = msg.SERIOUS_FAILURE if failed >= len(instances) else msg.MINOR_FAILURE
    sender = trail.archive_participant(roles=(msg.ROLE_SOURCE,))
    receiver = msg.peer_participant(
        destination, destination_host, requestor=destination == requestor,
        roles=(msg.ROLE_DESTINATION,), ae=True,
    )  # fmt: skip
    extra = (
        [] if destination == requestor
        else [msg.peer_participant(requestor, requestor_host, ae=True)]
    )  # fmt: skip
    for study, counts in by_study(instances).items():
        trail.record(
            transferred(trail.source, sender, receiver, {study: counts}, action="R",
                         outcome=outcome, description=description, extra=extra,
                         anonymized=anonymized)
        )  # fmt: skip


def http_instances(
    archive: Archive,
    instances: Iterable[StoredInstance],
    *,
    user: str,
    host: str | None,
    accessed: bool = False,
) -> None:
    """WADO-RS reads: DICOM Instances Transferred, action R (PS3.15 A.5.3.7), when
    instances or their content left the archive -- whole instances, frames, bulk data,
    rendered images and thumbnails; DICOM Instances Accessed (A.5.3.6, action R) for
    metadata (``accessed``). Tallied per user, address and study, and recorded as one
    message when the reads pause for ``audit.http_coalesce_seconds`` (at once when 0)
    -- see :meth:`AuditTrail.http_read`. The patient of each study is looked up in the
    writer thread."""
    trail_of(archive).http_read(instances, user=user, host=host, accessed=accessed)


def http_stored(
    archive: Archive, results: Iterable[StoreResult], *, user: str, host: str | None
) -> None:
    """STOW-RS: DICOM Instances Transferred, action C, per study of the request."""
    trail = trail_of(archive)
    if not trail.enabled:
        return
    studies: dict[str, dict[str, int]] = {}
    for result in results:
        counts = studies.setdefault(result.study_instance_uid, {})
        counts[result.sop_class_uid] = counts.get(result.sop_class_uid, 0) + 1
    client = msg.peer_participant(user, host, roles=(msg.ROLE_SOURCE,))
    ours = trail.archive_participant(roles=(msg.ROLE_DESTINATION,))
    for study, counts in studies.items():
        trail.record(transferred(trail.source, client, ours, {study: counts}, action="C"))


def study_subjects_now(archive: Archive, study_uids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Patient and accession of studies, looked up now (e.g. before deleting them)."""
    if not trail_of(archive).enabled or not study_uids:
        return {}
    return study_subjects(archive.index, study_uids)


def deleted(
    archive: Archive,
    studies: Mapping[str, Mapping[str, int]],
    subjects: Mapping[str, tuple[str, str]],
    *,
    user: str,
    host: str | None,
    description: str | None = None,
    partial: bool = False,
) -> None:
    """One message per study touched by a deletion, ``subjects`` from
    :func:`study_subjects_now` before it: DICOM Study Deleted (PS3.15 A.5.3.8) when
    whole studies went, DICOM Instances Accessed with action D (A.5.3.6) when only some
    of a study's instances did (``partial``: a series or instances deleted; A.5.3.6
    keeps Study Deleted for "all instances within a study")."""
    trail = trail_of(archive)
    if not trail.enabled:
        return
    who = msg.peer_participant(user, host)
    for study, counts in studies.items():
        patient = {u: p for u, (p, _) in subjects.items() if u == study}
        trail.record(
            msg.instances_accessed(
                trail.source, who, {study: counts}, patient, action="D",
                outcome_description=description,
            )
            if partial
            else msg.study_deleted(
                trail.source, who, {study: counts}, patient, outcome_description=description,
            )
        )  # fmt: skip


def login(archive: Archive, user: str, host: str, *, failure: str | None = None) -> None:
    """User Authentication Login, success or failure (PS3.15 A.5.3.12)."""
    trail_of(archive).login(user, host, failure=failure)


def record_now(settings: Settings, index: Index, message: AuditMessage) -> None:
    """Record one message synchronously (CLI commands that change users, tokens or
    settings: no writer thread there). The syslog target gets it with a short wait."""
    if not settings.audit.enabled:
        return
    xml = message.to_xml()
    line = msg.syslog_line(
        xml, outcome=message.outcome, when=message.time, hostname=socket.gethostname(),
        process_id=str(os.getpid()),
    )  # fmt: skip
    file = audit_log(settings)  # rotated here too when over audit.max_log_bytes
    try:
        file.append((line + "\n").encode("utf-8"))
    finally:
        file.close()
    insert_events(index, [event_row(message, xml)])
    try:
        sender = syslog_sender(settings)
    except ConfigError as exc:
        log.error("audit: no syslog: %s", exc)
        return
    if sender is not None:
        sender.send(line)
        sender.close(timeout=SYSLOG_TIMEOUT)


def configuration_changed(
    settings: Settings, index: Index, *, user: str, subject: str, description: str
) -> None:
    """Security Alert, Software Configuration (PS3.15 A.5.3.11): a user, token or
    setting changed from the command line (``user`` is the operating-system user)."""
    trail_source = AuditSource(
        settings.audit.source_id or settings.dicom.ae_title, settings.audit.site_id or None
    )
    reporter = msg.archive_participant(
        settings.dicom.ae_title, socket.gethostname(), process_id=str(os.getpid())
    )
    record_now(
        settings,
        index,
        msg.security_alert(
            trail_source,
            reporter,
            msg.SOFTWARE_CONFIGURATION,
            performer=msg.peer_participant(user, socket.gethostname()),
            subject=subject,
            subject_type=msg.USER_IDENTIFIER,
            description=description,
            outcome=msg.SUCCESS,
        ),
    )


# -- producers added for the remaining events (issue 7 part 5, "auditgaps") -----------


def os_user() -> str:
    """The operating-system user running a CLI command (``unknown`` when it has none)."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def procedure_record(
    archive: Archive,
    *,
    action: msg.ActionCode,
    user: str,
    host: str | None,
    patient_id: str | None,
    study_uid: str | None,
    accession: str | None = None,
    description: str | None = None,
    patient_name: str | None = None,
    ae: bool = False,
    mpps_uid: str | None = None,
) -> None:
    """Procedure Record (PS3.15 A.5.3.15): a worklist item or an MPPS created (C) or
    changed (U) by ``user`` (a user name, an AE title -- ``ae`` -- or an HL7 sending
    application) at ``host``, and the archive process that changed it. Memory only
    (queued)."""
    trail = trail_of(archive)
    if not trail.enabled:
        return
    trail.record(
        msg.procedure_record(
            trail.source,
            (msg.peer_participant(user, host, ae=ae), trail.archive_participant()),
            action=action,
            patient_id=patient_id or "",
            study_uid=study_uid,
            accession=accession,
            patient_name=patient_name,
            mpps_uid=mpps_uid,
            outcome_description=description,
        )
    )


def subjects_of_selection(archive: Archive, selection: Selection) -> dict[str, tuple[str, str]]:
    """The patient of the study a deletion names, looked up before it goes (as the
    HTTP deletion does, web/audit_api.py)."""
    study = selection.uid if selection.level == "study" else selection.study
    return study_subjects_now(archive, [study]) if study else {}


def selection_deleted(
    archive: Archive,
    selection: Selection,
    report: DeletionReport,
    subjects: Mapping[str, tuple[str, str]],
    *,
    user: str,
    host: str | None,
    reason: str | None = None,
) -> None:
    """The messages of a deletion, per study it touched (as :func:`deleted`), for the
    HTTP deletions, ``dicomvault delete`` and the retention / quota runner: DICOM Study
    Deleted (PS3.15 A.5.3.8) for the studies that went whole (``report``), DICOM
    Instances Accessed, action D (A.5.3.6), for a study that lost only some instances."""
    studies = dict.fromkeys([*subjects, *report.study_instance_uids])
    if not studies or report.dry_run:
        return
    known = dict(subjects)
    if selection.level == "patient":
        known.update({uid: (selection.uid, "") for uid in studies})
    what = f"{report.instances} instance(s) of {selection.describe()} deleted"
    description = f"{what} ({reason})" if reason else what
    whole = set(report.study_instance_uids)
    for partial in (False, True):
        chosen: dict[str, Mapping[str, int]] = {
            uid: {} for uid in studies if (uid not in whole) == partial
        }
        if chosen:
            deleted(
                archive, chosen, known, user=user, host=host, description=description,
                partial=partial,
            )  # fmt: skip


def restricted_function(
    archive: Archive, *, user: str, host: str | None, function: str, description: str
) -> None:
    """Security Alert, Use of Restricted Function (PS3.15 A.5.3.11, 110132): ``user``
    tried ``function`` its role or the archive's access rules do not allow.

    ``function`` is an HTTP method and path (HTTP 403): the subject is the resource,
    ID type 12 URI with the path as ID, as the table asks ("the URI of the file or
    other resource"); or a DIMSE command and SOP class (0x0124 Not Authorized; ``user``
    the calling AE): ID type 110181 SOP Class UID. The whole of ``function`` is the
    subject's name either way."""
    verb, _, target = function.partition(" ")
    if target.startswith("/"):
        subject, subject_type, ae = target, msg.URI, False
    elif target and verb[:2] in ("C-", "N-"):
        subject, subject_type, ae = target, msg.SOP_CLASS_UID, True
    else:
        subject, subject_type, ae = function, msg.URI, False
    security_alert(
        archive,
        msg.USE_OF_RESTRICTED_FUNCTION,
        user=user,
        host=host,
        subject=subject,
        subject_type=subject_type,
        subject_name=function,
        description=description,
        ae=ae,
    )


def import_tally() -> tuple[dict[str, dict[str, int]], Callable[[object], None]]:
    """A per-study tally of an import (study → SOP class → instances) and the function
    that counts one file's outcome into it (stored or overwritten instances only;
    thread-safe, memory only) — for :func:`imported` at the end."""
    from dicomvault.model.records import StoreResult, StoreStatus

    tally: dict[str, dict[str, int]] = {}
    lock = threading.Lock()

    def count(outcome: object) -> None:
        if not isinstance(outcome, StoreResult) or outcome.status not in (
            StoreStatus.STORED, StoreStatus.OVERWRITTEN,
        ):  # fmt: skip
            return
        with lock:
            counts = tally.setdefault(outcome.study_instance_uid, {})
            counts[outcome.sop_class_uid] = counts.get(outcome.sop_class_uid, 0) + 1

    return tally, count


def imported(
    archive: Archive,
    studies: Mapping[str, Mapping[str, int]],
    *,
    user: str,
    media: str,
    failed: int = 0,
) -> None:
    """Data Import (PS3.15 A.5.3.5, 110107), one message per study imported from
    ``media`` (a folder or a DICOMDIR) by ``user``; aggregated by the caller, recorded
    once at the end (never per instance). Outcome 4 when some files failed."""
    trail = trail_of(archive)
    if not trail.enabled or not studies:
        return
    who = msg.peer_participant(user, trail.hostname, roles=(msg.ROLE_DESTINATION,))
    source_media = msg.media_participant(media, destination=False)  # 110155, CID 405 URI
    source = trail.source
    outcome = msg.MINOR_FAILURE if failed else msg.SUCCESS
    note = f"{failed} file(s) could not be imported" if failed else None
    for study, counts in studies.items():

        def build(
            subjects: Subjects, study: str = study, counts: Mapping[str, int] = counts
        ) -> AuditMessage:
            known = subjects([study])
            return msg.data_import(
                source, who, source_media, {study: counts},
                {u: p for u, (p, _) in known.items()}, outcome=outcome, outcome_description=note,
            )  # fmt: skip

        trail.record(build)


# -- searching (dicomvault audit, GET /api/audit) -------------------------------------


def search(archive: Archive, where: AuditFilter) -> list[AuditRow]:
    """Recorded audit messages matching ``where``, newest first (``audit_events``)."""
    return search_events(archive.index, where)


# -- retention of the index table (audit.retention_days) ------------------------------

#: Seconds between two prunings of ``audit_events`` by ``serve`` (worker 0).
PRUNE_INTERVAL: Final = 3600.0


def prune(archive: Archive, *, now: datetime | None = None) -> int:
    """Delete the ``audit_events`` rows older than ``audit.retention_days`` days (0:
    keep them all); how many went. Only the searchable copy shrinks: the audit log file
    (and a syslog repository) remain the append-only record of every message."""
    days = archive.settings.audit.retention_days
    if days <= 0:
        return 0
    before = (now or datetime.now(UTC)) - timedelta(days=days)
    gone = prune_events(archive.index, before)
    if gone:
        log.info("audit: %d index row(s) older than %s pruned (audit.retention_days = %d)",
                 gone, before.isoformat(timespec="seconds"), days)  # fmt: skip
    return gone


async def prune_runner(
    archive: Archive, stop: asyncio.Event, *, interval: float = PRUNE_INTERVAL
) -> None:
    """Run :func:`prune` every ``interval`` seconds (first at once) until ``stop`` is
    set, in a thread (a large first pruning must not hold the event loop)."""
    while not stop.is_set():
        try:
            await asyncio.to_thread(prune, archive)
        except Exception:  # a database away for a while: try again next time
            log.exception("audit: pruning audit_events failed; retrying in %.0f s", interval)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)


# -- Export (dicomvault anonymize; issue "security" part 6) ----------------------------


def exported(
    archive: Archive,
    studies: Mapping[str, Mapping[str, int]],
    *,
    user: str,
    destination: str,
    receiver: tuple[str, str] | None = None,
    failed: int = 0,
) -> None:
    """Export (PS3.15 A.5.3.4, 110106), one message per study whose instances left the
    archive as de-identified copies (``dicomvault anonymize --study …``): ``user`` (the
    operating-system user) exported them to ``destination`` (the output folder, or
    ``dicom://AET@host:port``; Destination Media), received by ``receiver`` (AE title,
    host) when sent over DIMSE. The studies are the stored ones — their original UIDs and
    patients — marked Anonymized. Outcome 4 when some instances failed, 8 when all did."""
    trail = trail_of(archive)
    if not trail.enabled or not studies:
        return
    exporter = msg.peer_participant(user, trail.hostname)
    media = msg.media_participant(destination, destination=True)
    remote = (
        [msg.peer_participant(receiver[0], receiver[1], requestor=False, ae=True)]
        if receiver
        else []
    )
    total = sum(sum(counts.values()) for counts in studies.values())
    outcome = msg.SUCCESS
    if failed:
        outcome = msg.SERIOUS_FAILURE if failed >= total else msg.MINOR_FAILURE
    note = f"{failed} instance(s) failed" if failed else None
    source = trail.source
    for study, counts in studies.items():

        def build(
            subjects: Subjects, study: str = study, counts: Mapping[str, int] = counts
        ) -> AuditMessage:
            known = subjects([study])
            return msg.export(
                source, exporter, media, {study: counts},
                {u: p for u, (p, _) in known.items()}, outcome=outcome,
                outcome_description=note, remote=remote, anonymized=True,
            )  # fmt: skip

        trail.record(build)
