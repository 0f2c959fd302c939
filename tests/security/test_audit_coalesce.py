"""WADO-RS reads coalesced in the audit trail (docs/audit.md, "Coalesced WADO-RS reads"):
a viewer's frame-by-frame requests of a study become ONE DICOM Instances Transferred
message (PS3.15 A.5.3.7) per user, client address and study, written once the reads
pause for ``audit.http_coalesce_seconds``, after 60 s open at the latest, and at a
graceful stop -- with httpx against the real server, and ``dicomvault serve`` stopped by
SIGTERM. Every audit.log line is validated against the A.5.1 schema by the autouse
fixture of ``tests/conftest.py``."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from dicomvault.archive import Archive, audit, audit_trail, users
from dicomvault.archive.audit import AuditFilter, AuditRow, AuditTrail, audit_log_path
from dicomvault.config import load_settings
from dicomvault.model.records import StoredInstance
from tests.core.dicomfiles import make_dataset, write_part10
from tests.web.conftest import WebServer, start_web, web_settings

from .audit_schema import validate

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
#: audit.http_coalesce_seconds of these tests. Consecutive requests must come closer than
#: this to be one message: at 0.5 s a stall of the shared CI host between two loopback
#: frame requests once split the first test's 50 requests (clean-clone CI, 2026-12-07).
QUIET = 1.5
PASSWORD = "correct horse battery"
OCTETS = {"Accept": "application/octet-stream"}


def uid() -> str:
    return f"1.2.826.0.1.3680043.8.498.81.{secrets.randbelow(10**15)}"


def recorded(archive: Archive, **where: Any) -> list[AuditRow]:
    """What the writer has recorded so far -- never ``flush()``, which would record the
    open tallies at once."""
    return audit.search(archive, AuditFilter(limit=1000, **where))


def wait_recorded(archive: Archive, n: int, timeout: float = 15.0, **where: Any) -> list[AuditRow]:
    """At least ``n`` recorded messages matching ``where``, waiting for the writer thread
    to release the tallies by itself (bounded wait)."""
    deadline = time.monotonic() + timeout
    while True:
        found = recorded(archive, **where)
        if len(found) >= n or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def store(
    archive: Archive, tmp_path: Path, study: str, n: int, *, sop_class: str = CT
) -> list[str]:
    """``n`` single-frame images of one series of ``study``; their frame paths."""
    series = study + (".1" if sop_class == CT else ".2")
    paths = []
    for _ in range(n):
        ds = make_dataset(study=study, series=series)
        if sop_class != CT:
            ds.SOPClassUID, ds.Modality = sop_class, "MR"
        archive.store_file(write_part10(ds, tmp_path / f"{ds.SOPInstanceUID}.dcm"))
        paths.append(
            f"/dicom-web/studies/{study}/series/{series}/instances/{ds.SOPInstanceUID}/frames/1"
        )
    return paths


def sop_counts(row: AuditRow) -> dict[str, int]:
    """SOP Class UID → NumberOfInstances of the message's study object."""
    study = ET.fromstring(row.xml).find("ParticipantObjectIdentification")
    assert study is not None
    return {
        s.get("UID", ""): int(s.get("NumberOfInstances", "0"))
        for s in study.findall("ParticipantObjectDescription/SOPClass")
    }


@pytest.fixture
def server(tmp_path: Path) -> Iterator[WebServer]:
    yield from start_web(web_settings(tmp_path, audit={"http_coalesce_seconds": QUIET}))


def test_fifty_frame_requests_are_one_message(server: WebServer, tmp_path: Path) -> None:
    """50 frame requests of one study by one user (each of 25 instances, 20 CT and 5 MR,
    fetched twice): nothing while the reads go on, then exactly ONE Instances Transferred
    (R) after the quiet period, counting each instance once per SOP class, its
    EventDateTime the time of the first request."""
    study = uid()
    frames = store(server.archive, tmp_path, study, 20) + store(
        server.archive, tmp_path, study, 5, sop_class=MR
    )
    before = datetime.now(UTC).replace(microsecond=0)
    first_done: datetime | None = None
    for path in frames * 2:
        answer = server.client.get(path, headers=OCTETS)
        assert answer.status_code == 200, (path, answer.text)
        first_done = first_done or datetime.now(UTC)
    assert first_done is not None
    last = time.monotonic()
    early = recorded(server.archive, event_id="110104")
    if time.monotonic() - last < QUIET * 0.8:  # still within the quiet period
        assert early == []
    (row,) = wait_recorded(server.archive, 1, event_id="110104")
    time.sleep(QUIET * 3)  # and nothing more comes
    assert len(recorded(server.archive, event_id="110104")) == 1
    assert (row.action, row.outcome, row.user, row.peer) == ("R", 0, "anonymous", "127.0.0.1")
    assert (row.patient_id, row.study_instance_uid) == ("PID1", study)
    assert sop_counts(row) == {CT: 20, MR: 5}
    root = validate(row.xml)
    when = root.find("EventIdentification")
    assert when is not None
    assert before <= datetime.fromisoformat(when.get("EventDateTime", "")) <= first_done
    ours, client = root.findall("ActiveParticipant")
    assert [c.get("csd-code") for c in ours.findall("RoleIDCode")] == ["110153"]
    assert [c.get("csd-code") for c in client.findall("RoleIDCode")] == ["110152"]
    lines = audit_log_path(server.settings).read_text(encoding="utf-8").splitlines()
    assert len([line for line in lines if 'csd-code="110104"' in line]) == 1


def test_users_studies_and_events_are_separate(server: WebServer, tmp_path: Path) -> None:
    """Two users reading frames of two studies: four messages, one per user and study;
    metadata reads are DICOM Instances Accessed (A.5.3.6), tallied apart from the
    transfers of the same user and study."""
    users.add_user(server.archive, "ann", PASSWORD, "viewer")
    users.add_user(server.archive, "bob", PASSWORD, "viewer")
    a, b = uid(), uid()
    frames = {a: store(server.archive, tmp_path, a, 3), b: store(server.archive, tmp_path, b, 2)}
    for name in ("ann", "bob"):
        auth = httpx.BasicAuth(name, PASSWORD)
        for study, paths in frames.items():
            for path in paths:
                assert server.client.get(path, headers=OCTETS, auth=auth).status_code == 200
            meta = server.client.get(f"/dicom-web/studies/{study}/metadata", auth=auth)
            assert meta.status_code == 200
    sent = wait_recorded(server.archive, 4, event_id="110104")
    accessed = wait_recorded(server.archive, 4, event_id="110103")
    time.sleep(QUIET * 2)
    assert len(recorded(server.archive, event_id="110104")) == 4
    assert sorted((r.user, r.study_instance_uid, sop_counts(r)[CT]) for r in sent) == sorted(
        [("ann", a, 3), ("ann", b, 2), ("bob", a, 3), ("bob", b, 2)]
    )
    assert sorted((r.user, r.study_instance_uid, r.action) for r in accessed) == sorted(
        [("ann", a, "R"), ("ann", b, "R"), ("bob", a, "R"), ("bob", b, "R")]
    )
    assert {sop_counts(r)[CT] for r in accessed if r.study_instance_uid == a} == {3}
    for row in [*sent, *accessed]:
        validate(row.xml)


def test_zero_records_one_message_per_request(tmp_path: Path) -> None:
    """``audit.http_coalesce_seconds = 0``: one message per request, as it comes."""
    for server in start_web(web_settings(tmp_path, audit={"http_coalesce_seconds": 0})):
        study = uid()
        (path,) = store(server.archive, tmp_path, study, 1)
        for _ in range(5):
            assert server.client.get(path, headers=OCTETS).status_code == 200
        rows = wait_recorded(server.archive, 5, event_id="110104")
        assert len(rows) == 5
        assert {(r.study_instance_uid, sop_counts(r)[CT]) for r in rows} == {(study, 1)}


def test_close_records_the_open_tallies(tmp_path: Path) -> None:
    """A tally still inside its quiet period is recorded when the trail closes (the
    stop path of ``serve``: Application Activity Stop, then ``close_trail``) -- before
    the Stop message in the log."""
    settings = web_settings(tmp_path, audit={"http_coalesce_seconds": 60})
    for server in start_web(settings):
        study = uid()
        frames = store(server.archive, tmp_path, study, 4)
        for path in frames * 3:
            assert server.client.get(path, headers=OCTETS).status_code == 200
        time.sleep(0.3)
        assert recorded(server.archive, event_id="110104") == []
        audit.application_activity(server.archive, started=False)
        audit.close_trail(server.archive)
        lines = audit_log_path(settings).read_text(encoding="utf-8").splitlines()
        events = [
            "110104" if 'csd-code="110104"' in line else "110121"
            for line in lines
            if 'csd-code="110104"' in line or 'csd-code="110121"' in line
        ]
        assert events == ["110104", "110121"]
        (row,) = recorded(server.archive, event_id="110104")
        assert (row.study_instance_uid, sop_counts(row)) == (study, {CT: 4})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_sigterm_writes_pending_tallies(tmp_path: Path) -> None:
    """``dicomvault serve`` stopped by SIGTERM within the quiet period: the reads'
    message is in the audit log, before Application Activity Stop -- nothing is lost
    on a graceful stop."""
    data = tmp_path / "data"
    study = uid()
    with Archive.open(load_settings(None, {"storage": {"path": data}})) as archive:
        frames = store(archive, tmp_path, study, 6)
    http_port = _free_port()
    stderr = tmp_path / "serve.log"
    with stderr.open("w") as err:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("dicomvault")), "serve", "--data-dir", str(data),
             "--dicom-port", "0", "--http-port", str(http_port), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=err,
            env={**os.environ, "DICOMVAULT_HTTP__HOST": "127.0.0.1",
                 "DICOMVAULT_AUDIT__HTTP_COALESCE_SECONDS": "60"},
        )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{http_port}"
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, stderr.read_text()
            try:
                if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "serve did not answer in 30 s"
            time.sleep(0.2)
        with httpx.Client(base_url=base, timeout=30) as client:
            for path in frames * 2:
                assert client.get(path, headers=OCTETS).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, stderr.read_text()
    log = data / "audit" / "audit.log"
    lines = log.read_text(encoding="utf-8").splitlines()
    sent = [line for line in lines if 'csd-code="110104"' in line]
    assert len(sent) == 1
    assert f'ParticipantObjectID="{study}"' in sent[0]
    assert 'NumberOfInstances="6"' in sent[0]
    stop = next(i for i, line in enumerate(lines) if 'csd-code="110121"' in line)
    assert lines.index(sent[0]) < stop


def _instance(study: str, sop: str, sop_class: str = CT) -> StoredInstance:
    return StoredInstance(sop, sop_class, study, study + ".1", "1.2.840.10008.1.2.1",
                          "blob", 1, "", "")  # fmt: skip


def test_long_sessions_and_many_uids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tally open longer than ``MAX_OPEN_SECONDS`` is recorded though its reads never
    pause (the next reads open a new one); past ``MAX_TALLY_UIDS`` remembered UIDs,
    instances are still counted."""
    monkeypatch.setattr(audit_trail, "MAX_OPEN_SECONDS", 0.6)
    monkeypatch.setattr(audit_trail, "MAX_TALLY_UIDS", 3)
    settings = load_settings(
        None, {"storage": {"path": tmp_path / "data"}, "audit": {"http_coalesce_seconds": 0.4}}
    )
    with Archive.open(settings) as archive:
        trail = AuditTrail(settings)
        try:
            busy, many = uid(), uid()
            sops = [uid() for _ in range(6)]
            # 6 distinct instances, each read twice: 3 remembered, 3 counted each time.
            for sop in sops * 2:
                trail.http_read([_instance(many, sop)], user="u", host="10.0.0.1")
            end = time.monotonic() + 1.5
            while time.monotonic() < end:  # a read every 0.1 s: never quiet for 0.4 s
                trail.http_read([_instance(busy, "1.2.3")], user="u", host="10.0.0.1")
                time.sleep(0.1)
            deadline = time.monotonic() + 10
            while len(recorded(archive, study=busy)) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(recorded(archive, study=busy)) >= 2  # at least one each 0.6 s
            trail.flush(5)
            (row,) = recorded(archive, study=many)
            assert sop_counts(row) == {CT: 3 + 3 * 2}
        finally:
            trail.close()


def test_a_burst_is_one_write_and_flush_does_not_wait_for_the_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Messages queued within the writer's window (audit_trail.LINGER_SECONDS) go out in one
    batch -- one log append, one index commit -- and each is still recorded; a lone
    message is written once the window passes, without anyone flushing; ``flush`` does
    not sit out the window."""
    monkeypatch.setattr(audit_trail, "LINGER_SECONDS", 1.0)
    settings = load_settings(None, {"storage": {"path": tmp_path / "data"}})
    batches: list[int] = []
    real_write = AuditTrail._write

    def counting(self: AuditTrail, batch: list[object]) -> None:
        batches.append(len(batch))
        real_write(self, batch)

    monkeypatch.setattr(AuditTrail, "_write", counting)
    with Archive.open(settings) as archive:
        trail = audit.trail_of(archive)
        assert trail.flush(5)  # whatever opening the archive recorded
        batches.clear()
        for n in range(20):
            audit.queried(archive, "FINDSCU", "127.0.0.1", "/dicom-web/studies", b"n=%d" % n)
            time.sleep(0.01)  # 0.2 s in all: inside the window, not one instant
        started = time.monotonic()
        assert trail.flush(5)
        assert time.monotonic() - started < 0.9  # not the 1 s window
        assert batches == [20]
        assert len(recorded(archive, event_id="110112")) == 20

        audit.queried(archive, "FINDSCU", "127.0.0.1", "/dicom-web/studies", b"lone")
        assert len(wait_recorded(archive, 21, event_id="110112")) == 21
        assert batches == [20, 1]


def test_closing_the_archive_writes_and_stops_its_trail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Archive.close writes what its trail has queued and stops the writer: nothing is
    written into the data directory afterwards (it may be gone by then)."""
    monkeypatch.setattr(audit_trail, "LINGER_SECONDS", 5.0)
    settings = load_settings(None, {"storage": {"path": tmp_path / "data"}})
    started = time.monotonic()
    with Archive.open(settings) as archive:
        audit.queried(archive, "FINDSCU", "127.0.0.1", "/dicom-web/studies", b"last")
        trail = audit.trail_of(archive)
    assert time.monotonic() - started < 4  # not the 5 s window
    assert trail._thread is not None and not trail._thread.is_alive()
    with Archive.open(settings) as again:
        assert len(recorded(again, event_id="110112")) == 1


def test_a_full_batch_does_not_wait_for_the_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_trail, "LINGER_SECONDS", 10.0)
    settings = load_settings(None, {"storage": {"path": tmp_path / "data"}})
    with Archive.open(settings) as archive:
        trail = audit.trail_of(archive)
        assert trail.flush(5)
        for n in range(2 * audit_trail.BATCH):
            audit.queried(archive, "FINDSCU", "127.0.0.1", "/dicom-web/studies", b"%d" % n)
        # At least the first full batch, well inside the 10 s window (the rest may wait
        # for it: a batch is BATCH items, flush's wake-up marker among them).
        found = wait_recorded(archive, audit_trail.BATCH, timeout=8, event_id="110112")
        assert len(found) >= audit_trail.BATCH


def test_close_on_the_writer_thread_itself(tmp_path: Path) -> None:
    """The archive's finalizer may run on the writer thread (when it drops the last
    reference): closing there must not try to join itself; the writer stops and closes
    its sinks on its own."""
    settings = load_settings(None, {"storage": {"path": tmp_path / "data"}})
    with Archive.open(settings) as archive:
        trail = AuditTrail(archive.settings)
        errors: list[BaseException] = []

        def close_from_writer(subjects: Any) -> None:
            try:
                trail.close()
            except BaseException as exc:
                errors.append(exc)

        trail.record(close_from_writer)
        writer = trail._thread
        assert writer is not None
        writer.join(10)
        assert not writer.is_alive()
        assert errors == []
        assert trail._index is None  # the sinks were closed by the writer
