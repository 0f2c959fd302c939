"""The audit trail itself (PS3.15 A.5): :class:`AuditTrail`, one per open archive.

Producers (the functions of :mod:`dicomvault.archive.audit`, called from ``dimse/``,
``web/`` and ``cli/``) hand audit messages to :class:`AuditTrail`, which never blocks
them; a background writer thread appends each message to the audit log file (RFC 5424
lines, opened ``O_APPEND``), records it in the index table ``audit_events``, and passes
it to the syslog sender (RFC 5426 over UDP or RFC 5425 over TLS), which has its own
thread and bounded queue so that an unreachable audit repository delays nothing else.

Hot paths only append to memory: a C-STORE adds its instance to the association's
ledger (:meth:`AuditTrail.stored`), and ONE "DICOM Instances Transferred" message per
study is produced when the association ends; the patient of each study is looked up in
the writer thread, not while storing. WADO-RS reads are tallied the same way per event,
user, client address and study (:meth:`AuditTrail.http_read`): one message once the
reads have paused for ``audit.http_coalesce_seconds`` (the writer thread releases it),
after :data:`MAX_OPEN_SECONDS` at the latest, and at :meth:`AuditTrail.flush` /
:meth:`AuditTrail.close`.

The trail of an open archive is :func:`trail_of` (one per archive object, started on
first use); ``serve`` closes it (:func:`close_trail`) before the archive and reopens
its log file on SIGHUP (:meth:`AuditTrail.reopen`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import threading
import time
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from dicomvault.archive.audit_log import AuditLog
from dicomvault.archive.audit_syslog import SyslogSender, syslog_sender
from dicomvault.config import Settings
from dicomvault.index import Index
from dicomvault.index.audit import (
    insert_events,
    study_names,
    study_subjects,
)
from dicomvault.model.errors import ConfigError
from dicomvault.security import audit as msg
from dicomvault.security.audit import ActiveParticipant, AuditMessage, AuditSource

if TYPE_CHECKING:
    from dicomvault.archive.archive import Archive
    from dicomvault.model.records import StoredInstance, StoreResult

__all__ = ["AuditTrail", "close_trail", "trail_of"]


log = logging.getLogger("dicomvault.audit")

#: Messages the writer takes per batch (one file write, one index transaction).
BATCH: Final = 256
#: After the first message of a batch, the writer waits this long for more before it
#: writes: a busy archive (a C-FIND a millisecond) then makes one file append and one
#: index commit per 50 ms, not one per message -- a lone message written at once cost
#: ~0.35 ms of CPU (mostly the commit), as much as the query it records. Messages are
#: queued in memory either way; ``flush`` and ``close`` do not wait for the window.
LINGER_SECONDS: Final = 0.05
#: Associations whose C-STOREs are tallied at once, at most.
MAX_LEDGERS: Final = 10000
#: A successful login of the same user from the same address is audited once per this
#: many seconds (HTTP clients authenticate every request).
LOGIN_REPEAT_SECONDS: Final = 300.0
#: A WADO-RS read tally is recorded after this many seconds open at the latest, however
#: busy its user: a long viewing session still yields a message each minute.
MAX_OPEN_SECONDS: Final = 60.0
#: SOP Instance UIDs remembered per read tally (each instance counted once); past this
#: many, further instances are counted without being remembered (a repeat of one of
#: those may be counted twice) -- memory stays bounded (about 10 MB per tally at most).
MAX_TALLY_UIDS: Final = 100_000
#: Read tallies open at once, at most; one more records the oldest at once.
MAX_TALLIES: Final = 10000

#: Study Instance UID → (Patient ID, Accession Number).
Subjects = Callable[[Sequence[str]], Mapping[str, tuple[str, str]]]
#: A message (or several) to build in the writer thread, once the patients of its
#: studies are known.
Deferred = Callable[[Subjects], AuditMessage | Sequence[AuditMessage] | None]

_STOP: Final = object()
#: Put on the queue to make the writer recompute when the next read tally is due.
_WAKE: Final = object()


def audit_log_path(settings: Settings) -> Path:
    """``audit.file``, or ``<storage.path>/audit/audit.log``."""
    return (
        Path(settings.audit.file)
        if settings.audit.file
        else (settings.storage.path / "audit" / "audit.log")
    )


def audit_log(settings: Settings) -> AuditLog:
    """The audit log file with the rotation settings (``audit.max_log_bytes``,
    ``audit.keep_files``)."""
    return AuditLog(
        audit_log_path(settings),
        max_bytes=settings.audit.max_log_bytes,
        keep=settings.audit.keep_files,
    )


def named(index: Index, messages: Sequence[AuditMessage]) -> list[AuditMessage]:
    """``messages`` with the names of their patients and studies filled in from the
    index (PS3.15 A.5.3: "The patient name"; one query for all of them)."""
    uids = sorted({uid for message in messages for uid in message.study_uids})
    if not uids:
        return list(messages)
    try:
        known = study_names(index, uids)
    except Exception:
        log.exception("audit: cannot look up the names of %d studies", len(uids))
        return list(messages)
    patient_names = {pid: name for pid, name, _ in known.values() if pid and name}
    studies = {uid: description for uid, (_, _, description) in known.items() if description}
    return [msg.with_names(message, patient_names, studies) for message in messages]


def event_row(message: AuditMessage, xml: str) -> dict[str, Any]:
    """The ``audit_events`` row of ``message``."""
    return {
        "event_time": message.time,
        "event_id": message.event_id.code,
        "event_type": message.type_code,
        "action": message.action,
        "outcome": message.outcome,
        "user_id": message.user,
        "peer": message.peer,
        "patient_id": "\\".join(dict.fromkeys(message.patient_ids)),
        "study_instance_uid": "\\".join(dict.fromkeys(message.study_uids)),
        "xml": xml,
    }


# -- the trail ------------------------------------------------------------------------


@dataclass(slots=True)
class _Ledger:
    """What one association stored: study → SOP class → count, and who sent it."""

    calling_ae: str
    called_ae: str
    host: str
    studies: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    replaced: bool = False


#: A WADO-RS read tally's key: (event -- "transferred" for DICOM Instances Transferred
#: R, "accessed" for DICOM Instances Accessed R --, user, client host, Study Instance UID).
ReadKey = tuple[str, str, str | None, str]


@dataclass(slots=True)
class _ReadTally:
    """What one user read of one study from one address since the tally opened:
    SOP class → distinct instances, and when (the first read's time is the message's
    EventDateTime)."""

    first: datetime
    opened: float  # time.monotonic() of the first read
    last: float  # time.monotonic() of the latest read
    counts: dict[str, int] = field(default_factory=dict)
    uids: set[str] = field(default_factory=set)

    def due(self, quiet: float) -> float:
        """The monotonic time at which this tally is to be recorded."""
        return min(self.last + quiet, self.opened + MAX_OPEN_SECONDS)


class AuditTrail:
    """Non-blocking recorder of audit messages with a background writer thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.enabled = settings.audit.enabled
        self.source = AuditSource(
            settings.audit.source_id or settings.dicom.ae_title,
            settings.audit.site_id or None,
        )
        self.hostname = socket.gethostname()
        self._queue: queue.Queue[object] = queue.Queue(maxsize=settings.audit.queue_size)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._unfinished = 0
        self._thread: threading.Thread | None = None
        self._closed = False
        self._index: Index | None = None
        self._log = audit_log(settings)
        self._log_failures = 0
        self._syslog: SyslogSender | None = None
        self._ledgers: dict[str, _Ledger] = {}
        self._logins: dict[tuple[str, str], float] = {}
        self.coalesce = float(settings.audit.http_coalesce_seconds)
        self._reads: dict[ReadKey, _ReadTally] = {}
        self.dropped = 0
        self.written = 0
        self._flushing = 0  # flush() calls waiting: the writer does not linger
        self._wanted = BATCH  # queued messages that fill the writer's batch (_gather)
        self._close_on_exit = False  # close() was called on the writer thread itself

    # -- participants ---------------------------------------------------------------

    def archive_participant(
        self, *, requestor: bool = False, roles: Sequence[msg.Code] = ()
    ) -> ActiveParticipant:
        """The archive (our AE title, this process, this host)."""
        return msg.archive_participant(
            self.settings.dicom.ae_title,
            self.hostname,
            requestor=requestor,
            roles=roles,
            process_id=str(os.getpid()),
        )

    # -- recording ------------------------------------------------------------------

    def record(self, message: AuditMessage | Deferred) -> None:
        """Queue a message (or a function building it from the patients of its studies)
        for the writer. Never blocks: when the queue is full the message is dropped and
        counted."""
        if not self.enabled:
            return
        with self._lock:
            if self._closed:
                return
            self._enqueue(message)

    def _start_writer(self) -> None:
        """Start the writer thread if it is not running (``_lock`` held)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
            self._thread.start()

    def _enqueue(self, message: AuditMessage | Deferred) -> None:
        """Queue ``message`` for the writer, or drop and count it (``_lock`` held)."""
        self._start_writer()
        try:
            self._queue.put_nowait(message)
            if self._queue.qsize() >= self._wanted:
                self._idle.notify_all()  # the writer's batch is full: no need to linger
        except queue.Full:
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                log.error("audit: queue full, %d message(s) dropped so far", self.dropped)
            return
        self._unfinished += 1

    def flush(self, timeout: float = 10.0) -> bool:
        """Record the open WADO-RS read tallies now, then wait until every message
        queued so far is written; False on timeout."""
        self.release_reads()
        deadline = time.monotonic() + timeout
        with self._idle:
            self._flushing += 1
        try:
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(_WAKE)  # the writer stops waiting for more
            with self._idle:
                self._idle.notify_all()
                while self._unfinished:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._idle.wait(left)
            return True
        finally:
            with self._idle:
                self._flushing -= 1

    def close(self) -> None:
        """Record the open WADO-RS read tallies, write what is queued, then stop the
        writer and the syslog sender."""
        with self._lock:
            if self._closed:
                return
            for key in list(self._reads):
                self._release_read(key)  # queued before _STOP: written by the writer
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._queue.put(_STOP)
            with self._idle:
                self._idle.notify_all()  # the writer stops lingering
            if thread is threading.current_thread():
                # Called on the writer itself (the archive's finalizer can run there when
                # the writer drops the last reference): it cannot wait for itself; it
                # closes the sinks when it reaches _STOP.
                self._close_on_exit = True
                return
            thread.join()
        self._close_sinks()

    def _close_sinks(self) -> None:
        if self._syslog is not None:
            self._syslog.close()
        self._log.close()
        if self._index is not None:
            self._index.close()
            self._index = None

    def reopen(self) -> None:
        """Reopen the audit log file before the next message (SIGHUP: logrotate has
        renamed it; the next line goes to a new file of the configured name)."""
        self._log.reopen()

    def _open_sinks(self) -> None:
        try:
            self._log.append(b"")  # created (and its directory) now: errors show at start
        except OSError as exc:
            log.error("audit: cannot open the audit log %s: %s", self._log.path, exc)
        self._index = Index(self.settings.index_url)
        try:
            self._syslog = syslog_sender(self.settings)
        except ConfigError as exc:
            log.error("audit: no syslog: %s", exc)

    def _subjects(self, uids: Sequence[str]) -> Mapping[str, tuple[str, str]]:
        assert self._index is not None
        try:
            return study_subjects(self._index, uids)
        except Exception:
            log.exception("audit: cannot look up the patients of %d studies", len(uids))
            return {}

    def _run(self) -> None:
        try:
            self._open_sinks()
        except Exception as exc:  # the writer must keep draining the queue regardless
            log.error("audit: cannot open the audit log or the index: %s", exc)
        stop = False
        while not stop:
            # Wait for a message, or until the next WADO-RS read tally is due (no timeout
            # while none is open: an idle trail does not wake up).
            wait = self._next_due()
            try:
                batch = [self._queue.get(timeout=wait) if wait != 0 else self._queue.get_nowait()]
            except queue.Empty:
                batch = []
            self._release_due_reads()
            self._gather(batch)
            if _STOP in batch:
                stop = True
            batch = [item for item in batch if item is not _STOP and item is not _WAKE]
            if not batch:
                continue
            try:
                self._write(batch)
            except Exception:  # never let the writer die
                log.exception("audit: writing %d message(s) failed", len(batch))
            with self._idle:
                self._unfinished -= len(batch)
                self._idle.notify_all()
        if self._close_on_exit:
            self._close_sinks()

    def _gather(self, batch: list[object]) -> None:
        """Add what else is queued to ``batch``: what arrives up to :data:`LINGER_SECONDS`
        after its first message, at once while a flush or close is waiting.

        The writer sleeps out the window rather than taking each message as it comes: a
        wake-up per message (one per C-FIND) cost a context switch and a turn of the GIL
        on the threads answering the queries. ``flush``, ``close`` and a full batch
        queued cut the sleep short.
        """
        self._drain(batch)
        waiting = any(item is not _WAKE for item in batch) and _STOP not in batch
        if waiting and len(batch) < BATCH:
            with self._idle:
                self._wanted = want = BATCH - len(batch)
                self._idle.wait_for(
                    lambda: self._flushing or self._closed or self._queue.qsize() >= want,
                    LINGER_SECONDS,
                )
                self._wanted = BATCH
            self._drain(batch)

    def _drain(self, batch: list[object]) -> None:
        while len(batch) < BATCH:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break

    def _write(self, batch: list[object]) -> None:
        messages: list[AuditMessage] = []
        for item in batch:
            if isinstance(item, AuditMessage):
                messages.append(item)
            else:
                try:
                    built = item(self._subjects)  # type: ignore[operator]
                except Exception:
                    log.exception("audit: building a message failed")
                    continue
                if isinstance(built, AuditMessage):
                    messages.append(built)
                elif built is not None:
                    messages.extend(built)
        if not messages:
            return
        if self._index is not None:
            messages = named(self._index, messages)
        rows: list[dict[str, Any]] = []
        lines: list[str] = []
        pid = str(os.getpid())
        for message in messages:
            xml = message.to_xml()
            rows.append(event_row(message, xml))
            lines.append(
                msg.syslog_line(
                    xml,
                    outcome=message.outcome,
                    when=message.time,
                    hostname=self.hostname,
                    process_id=pid,
                )
            )
        try:
            self._log.append("".join(line + "\n" for line in lines).encode("utf-8"))
        except OSError as exc:  # retried with the next batch; said now and then
            self._log_failures += 1
            if self._log_failures in (1, 10, 100) or self._log_failures % 1000 == 0:
                log.error("audit: appending to the audit log failed (%d times): %s",
                          self._log_failures, exc)  # fmt: skip
        if self._index is not None:
            try:
                insert_events(self._index, rows)
            except Exception as exc:
                log.error("audit: recording %d message(s) in the index failed: %s", len(rows), exc)
        if self._syslog is not None:
            for line in lines:
                self._syslog.send(line)
        self.written += len(messages)

    # -- C-STORE ledger (one Instances Transferred per association and study) --------

    def stored(
        self, association_id: str, calling_ae: str, called_ae: str, host: str, result: StoreResult
    ) -> None:
        """An instance arrived on an association: count it (memory only)."""
        if not self.enabled:
            return
        with self._lock:
            ledger = self._ledgers.get(association_id)
            if ledger is None:
                if len(self._ledgers) >= MAX_LEDGERS:
                    # No acceptor tells us of ended associations (no observer attached):
                    # forget the oldest tally rather than grow without bound.
                    self._ledgers.pop(next(iter(self._ledgers)))
                ledger = self._ledgers[association_id] = _Ledger(calling_ae, called_ae, host)
            counts = ledger.studies[result.study_instance_uid]
            counts[result.sop_class_uid] = counts.get(result.sop_class_uid, 0) + 1
            if result.status.value == "overwritten":
                ledger.replaced = True

    def association_ended(self, association_id: str) -> None:
        """The association is gone: one DICOM Instances Transferred (PS3.15 A.5.3.7,
        action C, or U when an instance was replaced) per study it stored."""
        with self._lock:
            ledger = self._ledgers.pop(association_id, None)
        if ledger is None or not ledger.studies:
            return
        sender = msg.peer_participant(
            ledger.calling_ae, ledger.host, roles=(msg.ROLE_SOURCE,), ae=True
        )
        receiver = self.archive_participant(roles=(msg.ROLE_DESTINATION,))
        source = self.source
        when = datetime.now(UTC)
        for study, counts in ledger.studies.items():
            self.record(
                transferred(source, sender, receiver, {study: dict(counts)},
                             action="U" if ledger.replaced else "C", when=when)
            )  # fmt: skip

    # -- WADO-RS read tallies (one message per user, address and study per pause) -----

    def http_read(
        self,
        instances: Iterable[StoredInstance],
        *,
        user: str,
        host: str | None,
        accessed: bool = False,
    ) -> None:
        """WADO-RS read ``instances`` for ``user`` at ``host``: count them in the tally
        of each study (memory only; each SOP Instance UID once per tally), or -- with
        ``audit.http_coalesce_seconds`` 0 -- record the request's messages at once."""
        if not self.enabled:
            return
        studies: dict[str, list[StoredInstance]] = {}
        for inst in instances:
            studies.setdefault(inst.study_instance_uid, []).append(inst)
        if not studies:
            return
        event = "accessed" if accessed else "transferred"
        if self.coalesce <= 0:  # one message per request and study, as it comes
            wall = datetime.now(UTC)
            for study, found in studies.items():
                counts = by_study(found)[study]
                self.record(self._read_message((event, user, host, study), counts, wall))
            return
        now = time.monotonic()
        wall = datetime.now(UTC)
        with self._lock:
            if self._closed:
                return
            wake = not self._reads
            for study, found in studies.items():
                key: ReadKey = (event, user, host, study)
                tally = self._reads.get(key)
                if tally is None:
                    if len(self._reads) >= MAX_TALLIES:
                        self._release_read(next(iter(self._reads)))  # the oldest, now
                    tally = self._reads[key] = _ReadTally(first=wall, opened=now, last=now)
                tally.last = now
                for inst in found:
                    uid = inst.sop_instance_uid
                    if uid in tally.uids:
                        continue
                    if len(tally.uids) < MAX_TALLY_UIDS:
                        tally.uids.add(uid)
                    cls = inst.sop_class_uid
                    tally.counts[cls] = tally.counts.get(cls, 0) + 1
            self._start_writer()
            if wake:
                # The writer may be waiting without a timeout (no tally was open): make it
                # compute when this one is due. Not counted as a message.
                with contextlib.suppress(queue.Full):
                    self._queue.put_nowait(_WAKE)

    def release_reads(self) -> None:
        """Record every open WADO-RS read tally now (flush, shutdown)."""
        with self._lock:
            if self._closed:
                return
            for key in list(self._reads):
                self._release_read(key)

    def _release_due_reads(self) -> None:
        """Record the read tallies that have been quiet for ``http_coalesce_seconds`` or
        open for :data:`MAX_OPEN_SECONDS` (the writer thread, each time it wakes)."""
        now = time.monotonic()
        with self._lock:
            if self._closed:
                return
            for key in [k for k, t in self._reads.items() if t.due(self.coalesce) <= now]:
                self._release_read(key)

    def _next_due(self) -> float | None:
        """Seconds until the next read tally is due (0: one is), None when none is open."""
        with self._lock:
            if not self._reads:
                return None
            due = min(t.due(self.coalesce) for t in self._reads.values())
        return max(0.0, due - time.monotonic())

    def _release_read(self, key: ReadKey) -> None:
        """Queue the message of one read tally and forget it (``_lock`` held)."""
        tally = self._reads.pop(key)
        self._enqueue(self._read_message(key, tally.counts, tally.first))

    def _read_message(self, key: ReadKey, counts: Mapping[str, int], first: datetime) -> Deferred:
        """DICOM Instances Transferred, action R (PS3.15 A.5.3.7; the archive the
        source, the client the destination), or DICOM Instances Accessed, action R
        (A.5.3.6), of one study read by one user at one address; EventDateTime the time
        of the first read (A.5.2.5: an event with a duration gets a time chosen by a
        consistent method)."""
        event, user, host, study = key
        source = self.source
        counted = {study: dict(counts)}
        if event == "transferred":
            client = msg.peer_participant(user, host, roles=(msg.ROLE_DESTINATION,))
            ours = self.archive_participant(roles=(msg.ROLE_SOURCE,))
            return transferred(source, ours, client, counted, action="R", when=first)

        def build(subjects: Subjects) -> AuditMessage:
            known = subjects([study])
            return msg.instances_accessed(
                source, msg.peer_participant(user, host), counted,
                {u: p for u, (p, _) in known.items()}, when=first,
            )  # fmt: skip

        return build

    # -- logins ---------------------------------------------------------------------

    def login(self, user: str, host: str, *, failure: str | None = None) -> None:
        """User Authentication (PS3.15 A.5.3.12): every failure; a success once per
        :data:`LOGIN_REPEAT_SECONDS` per user and address."""
        if not self.enabled:
            return
        if failure is None:
            now = time.monotonic()
            key = (user, host)
            with self._lock:
                last = self._logins.get(key)
                if last is not None and now - last < LOGIN_REPEAT_SECONDS:
                    return
                self._logins[key] = now
                if len(self._logins) > 10000:
                    self._logins.clear()
        self.record(
            msg.user_authentication(
                self.source,
                msg.peer_participant(user, host or "-"),  # its access point: M (A.5.3.12)
                self.archive_participant(),
                outcome=msg.SUCCESS if failure is None else msg.MINOR_FAILURE,
                outcome_description=failure,
            )
        )


def transferred(
    source: AuditSource,
    sender: ActiveParticipant,
    receiver: ActiveParticipant,
    studies: Mapping[str, Mapping[str, int]],
    *,
    action: msg.ActionCode,
    outcome: int = msg.SUCCESS,
    description: str | None = None,
    when: datetime | None = None,
    extra: Sequence[ActiveParticipant] = (),
    anonymized: bool | None = None,
) -> Deferred:
    def build(subjects: Subjects) -> list[AuditMessage]:
        known = subjects(list(studies))
        patients = {uid: pid for uid, (pid, _) in known.items()}
        messages = []
        for group in msg.by_patient(studies, patients):  # one patient each (A.5.3.7)
            message = msg.instances_transferred(
                source, sender, receiver, group, patients, action=action, outcome=outcome,
                outcome_description=description, others=extra, when=when,
                anonymized=anonymized,
            )  # fmt: skip
            messages.append(message)
        return messages

    return build


def by_study(instances: Iterable[StoredInstance]) -> dict[str, dict[str, int]]:
    studies: dict[str, dict[str, int]] = {}
    for inst in instances:
        counts = studies.setdefault(inst.study_instance_uid, {})
        counts[inst.sop_class_uid] = counts.get(inst.sop_class_uid, 0) + 1
    return studies


# -- one trail per open archive -------------------------------------------------------

_TRAILS: weakref.WeakKeyDictionary[Archive, AuditTrail] = weakref.WeakKeyDictionary()
_TRAILS_LOCK = threading.Lock()


def trail_of(archive: Archive) -> AuditTrail:
    """The audit trail of ``archive`` (created on first use; closed with the process or
    by :func:`close_trail`)."""
    trail = _TRAILS.get(archive)
    if trail is None:
        with _TRAILS_LOCK:
            trail = _TRAILS.get(archive)
            if trail is None:
                trail = _TRAILS[archive] = AuditTrail(archive.settings)
                weakref.finalize(archive, trail.close)
    return trail


def close_trail(archive: Archive) -> None:
    """Write what is queued and stop the trail of ``archive`` (before closing it)."""
    with _TRAILS_LOCK:
        trail = _TRAILS.pop(archive, None)
    if trail is not None:
        trail.close()
