"""Background services ``serve`` runs beside the DIMSE and HTTP listeners (issue 6):
the HL7 v2 order feed of the worklist, the deletion / retention runner, the storage
commitment report sender, the pruning of old audit index rows. Each is a coroutine that
returns once ``stop`` is set; the ones that must run once per archive (not once per
worker process) run in worker 0."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from dicomvault.archive import Archive, audit
from dicomvault.archive.retention import retention_runner
from dicomvault.config import Settings
from dicomvault.dimse.commitment import CommitmentReporter
from dicomvault.hl7.feed import serve_hl7


def background_services(
    archive: Archive, settings: Settings, stop: asyncio.Event, worker: int
) -> list[Coroutine[Any, Any, None]]:
    """The coroutines ``serve`` runs until ``stop`` is set, for worker number ``worker``."""
    services: list[Coroutine[Any, Any, None]] = []
    # Storage commitment reports owed (PS3.4 J.3.3): every worker may send them, each
    # job is claimed in the index before it is worked on.
    services.append(CommitmentReporter(archive).run(stop))
    if worker == 0:
        # Deletion queue, rejected instances past their grace period, retention rules,
        # quota recycling (archive/retention.py): once per archive.
        services.append(retention_runner(archive, stop))
    if worker == 0 and settings.audit.retention_days:
        # Rows of audit_events past audit.retention_days (the log file keeps them all):
        # once per archive.
        services.append(audit.prune_runner(archive, stop))
    if worker == 0 and settings.worklist.hl7_port:
        # The HL7 order feed (docs/hl7.md): one listener per archive, messages applied in
        # arrival order. A port that cannot be bound raises, and serve stops.
        services.append(serve_hl7(archive, settings, stop))
    return services
