"""The audit log file over time (issue 7 part 5): in-process rotation at
``audit.max_log_bytes`` keeping ``audit.keep_files`` files, several writers following
each other's rotations, SIGHUP reopening after an external (logrotate) rotation with a
real ``dicomvault serve``, and pruning of the ``audit_events`` index table after
``audit.retention_days`` -- on SQLite and PostgreSQL -- while the log file keeps every
message."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from dicomvault.archive import Archive
from dicomvault.archive import audit as trail_api
from dicomvault.archive.audit import AuditFilter, AuditTrail, audit_log_path, event_row
from dicomvault.archive.audit_log import AuditLog
from dicomvault.cli.main import cli
from dicomvault.cli.services import background_services
from dicomvault.config import Settings, load_settings
from dicomvault.index import audit as index_audit
from dicomvault.security import audit as msg

from .audit_schema import validate_log, validate_logs_under


def _alert(trail: AuditTrail, n: int) -> msg.AuditMessage:
    """A message of a known number (its subject), about 1.2 kB as a log line."""
    return msg.security_alert(
        trail.source, trail.archive_participant(), msg.SOFTWARE_CONFIGURATION,
        subject=f"setting-{n:04d}", description="x" * 300, outcome=msg.SUCCESS,
    )  # fmt: skip


def _numbers(path: Path) -> list[int]:
    """The message numbers in an audit log, in file order."""
    text = path.read_text(encoding="utf-8")
    return [int(part[:4]) for part in text.split('ParticipantObjectID="setting-')[1:]]


def _settings(tmp_path: Path, **audit: Any) -> Settings:
    settings = load_settings(
        None, {"storage": {"path": tmp_path / "data", "fsync": False}, "audit": audit}
    )
    Archive.open(settings).close()  # the index exists
    return settings


def test_rotation_at_the_size_keeps_keep_files(tmp_path: Path) -> None:
    """40 messages of ~1.2 kB into a 5 kB log keeping 3 files: every file stays under
    the limit, audit.log.1 … .3 hold the older messages in order, what is older than
    those is gone, every line is a valid message; the index keeps all 40."""
    settings = _settings(tmp_path, max_log_bytes=5000, keep_files=3)
    trail = AuditTrail(settings)
    try:
        for n in range(40):
            trail.record(_alert(trail, n))
            assert trail.flush(10)  # one message per write: the size is checked each time
    finally:
        trail.close()
    log = audit_log_path(settings)
    files = [log, *(log.with_name(f"audit.log.{n}") for n in (1, 2, 3))]
    assert all(f.exists() for f in files)
    assert not log.with_name("audit.log.4").exists()
    assert all(0 < f.stat().st_size <= 5000 for f in files)
    kept = [n for f in reversed(files) for n in _numbers(f)]
    assert kept == list(range(40 - len(kept), 40))  # the newest, in order, none twice
    per_file = 5000 // len(log.read_bytes().splitlines(keepends=True)[0])
    assert per_file >= 1
    assert [len(_numbers(f)) for f in files[1:]] == [per_file] * 3  # rotated when full
    assert oct(log.stat().st_mode & 0o777) == oct(0o640)
    assert validate_logs_under(log.parent) == len(kept)
    with Archive.open(settings, recover_on_start=False) as archive:
        assert len(trail_api.search(archive, AuditFilter(limit=1000))) == 40


def test_no_rotation_by_default(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert settings.audit.max_log_bytes == 0
    trail = AuditTrail(settings)
    try:
        for n in range(20):
            trail.record(_alert(trail, n))
        assert trail.flush(10)
    finally:
        trail.close()
    log = audit_log_path(settings)
    assert _numbers(log) == list(range(20))
    assert sorted(p.name for p in log.parent.iterdir()) == ["audit.log"]


def test_writers_follow_each_others_rotation(tmp_path: Path) -> None:
    """Two writers on one file (two ``serve`` workers) and a CLI command (``dicomvault
    user add``, written synchronously): whoever rotates, the others write to the new
    file, never to a renamed one; nothing is lost or doubled."""
    path = tmp_path / "data" / "audit" / "audit.log"
    first, second = AuditLog(path, max_bytes=3000, keep=50), AuditLog(path, max_bytes=3000, keep=50)
    trail = AuditTrail(_settings(tmp_path, max_log_bytes=3000, keep_files=50))
    try:
        for n in range(30):
            writer = first if n % 3 else second
            xml = _alert(trail, n).to_xml()
            now = datetime.now(UTC)
            line = msg.syslog_line(xml, outcome=0, when=now, hostname="h", process_id="1")
            writer.append((line + "\n").encode())
    finally:
        first.close()
        second.close()
        trail.close()
    config = tmp_path / "dv.toml"
    config.write_text("[audit]\nmax_log_bytes = 3000\nkeep_files = 50\n")
    added = CliRunner().invoke(
        cli, ["user", "add", "bob", "--role", "viewer", "--password-stdin", "--config",
              str(config), "--data-dir", str(tmp_path / "data")],
        input="correct horse battery\n",
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    rotated = sorted(path.parent.glob("audit.log.*[0-9]"), key=lambda p: -int(p.suffix[1:]))
    assert len(rotated) >= 8
    numbers = [n for f in [*rotated, path] for n in _numbers(f)]
    assert numbers == list(range(30))  # the CLI's message is the last, about user bob
    assert "bob" in path.read_text(encoding="utf-8").splitlines()[-1]
    assert all(f.stat().st_size <= 3000 for f in [*rotated, path])
    assert validate_logs_under(path.parent) == 31


def test_keep_files_lowered_deletes_the_surplus(tmp_path: Path) -> None:
    """Rotated files beyond ``keep`` go, even those a larger earlier ``keep`` left."""
    path = tmp_path / "audit" / "plain.log"  # any file: the rotation does not read it
    wide = AuditLog(path, max_bytes=100, keep=6)
    for n in range(8):
        wide.append(f"{n:03d} {'.' * 80}\n".encode())
    wide.close()
    assert path.with_name("plain.log.6").exists()
    narrow = AuditLog(path, max_bytes=100, keep=2)
    narrow.append(f"{8:03d} {'.' * 80}\n".encode())
    narrow.close()
    names = sorted(p.name for p in path.parent.iterdir() if p.name != "plain.log.lock")
    assert names == ["plain.log", "plain.log.1", "plain.log.2"]
    assert path.read_text()[:3] == "008"
    assert path.with_name("plain.log.2").read_text()[:3] == "006"


@pytest.mark.dcmtk
def test_sighup_reopens_the_log_after_logrotate(tmp_path: Path) -> None:
    """logrotate ``create`` mode with a real server: the log is renamed and a new one
    created, then ``kill -HUP``; the next message (a QIDO-RS Query) goes to the new
    file, none to the renamed one."""
    from tests.core.test_serve import Server

    data = tmp_path / "data"
    server = Server(data)
    log = data / "audit" / "audit.log"
    try:
        _wait(lambda: 'csd-code="110120"' in _text(log))  # Application Start
        rotated = log.with_name("audit.log.1")
        os.rename(log, rotated)  # what logrotate does ...
        log.touch(mode=0o640)  # ... in create mode
        server.proc.send_signal(signal.SIGHUP)
        server.wait_for_log("audit log reopened", timeout=20)
        answer = httpx.get(f"http://127.0.0.1:{server.http_port}/dicom-web/studies", timeout=10)
        assert answer.status_code in (200, 204)
        _wait(lambda: 'csd-code="110112"' in _text(log))
        assert 'csd-code="110112"' not in _text(rotated)
    finally:
        assert server.stop() == 0
    assert 'csd-code="110121"' in _text(log)  # Application Stop, also in the new file
    assert validate_log(log) >= 2 and validate_log(rotated) >= 1


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.exists() else ""


def _wait(condition: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


# -- retention of the index table -----------------------------------------------------


def _event(trail: AuditTrail, n: int, age: timedelta) -> dict[str, Any]:
    message = _alert(trail, n)
    message = msg.AuditMessage(**{**_fields(message), "time": datetime.now(UTC) - age})
    return event_row(message, message.to_xml())


def _fields(message: msg.AuditMessage) -> dict[str, Any]:
    return {name: getattr(message, name) for name in message.__dataclass_fields__}


def test_pruning_deletes_only_rows_past_retention(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """audit.retention_days = 30: rows of 40 and 31 days go, rows of 29 days and now
    stay -- on SQLite and PostgreSQL (the ``settings`` fixture), in batches; the log
    file is not touched."""
    settings.audit.retention_days = 30
    monkeypatch.setattr(index_audit, "PRUNE_BATCH", 3)  # several transactions
    with Archive.open(settings) as archive:
        trail = trail_api.trail_of(archive)
        old = [_event(trail, n, timedelta(days=40 if n % 2 else 31)) for n in range(7)]
        young = [_event(trail, 100 + n, timedelta(days=29 if n else 0)) for n in range(2)]
        index_audit.insert_events(archive.index, [*old[:4], *young, *old[4:]])
        trail.record(_alert(trail, 999))  # through the writer: file and index
        assert trail.flush(10)
        log_before = audit_log_path(settings).read_bytes()
        assert trail_api.prune(archive) == 7
        left = trail_api.search(archive, AuditFilter(limit=1000))
        assert sorted(int(r.xml.split("setting-")[1][:4]) for r in left) == [100, 101, 999]
        assert trail_api.prune(archive) == 0
        assert audit_log_path(settings).read_bytes() == log_before
        settings.audit.retention_days = 0  # keep forever
        index_audit.insert_events(archive.index, [_event(trail, 5, timedelta(days=9999))])
        assert trail_api.prune(archive) == 0
        trail_api.close_trail(archive)


def test_serve_prunes_in_the_background(tmp_path: Path) -> None:
    """``serve`` runs the pruning in worker 0 when audit.retention_days is set (only
    then), first at once, then every interval."""
    settings = _settings(tmp_path, retention_days=1)
    with Archive.open(settings, recover_on_start=False) as archive:
        trail = trail_api.trail_of(archive)
        index_audit.insert_events(archive.index, [_event(trail, 1, timedelta(days=2))])

        def names(worker: int, days: int) -> list[str]:
            settings.audit.retention_days = days
            services = background_services(archive, settings, asyncio.Event(), worker)
            for service in services:
                service.close()  # not run here: only which ones
            return [s.__qualname__ for s in services]

        assert "prune_runner" in names(0, 1)
        assert "prune_runner" not in names(1, 1) and "prune_runner" not in names(0, 0)
        settings.audit.retention_days = 1

        async def run() -> None:
            stop = asyncio.Event()
            task = asyncio.ensure_future(trail_api.prune_runner(archive, stop, interval=0.05))
            deadline = time.monotonic() + 10
            while trail_api.search(archive, AuditFilter()) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            index_audit.insert_events(archive.index, [_event(trail, 2, timedelta(days=3))])
            while trail_api.search(archive, AuditFilter()) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)  # pruned again, by the next round
            stop.set()
            await asyncio.wait_for(task, 5)

        asyncio.run(run())
        assert trail_api.search(archive, AuditFilter()) == []
        trail_api.close_trail(archive)
