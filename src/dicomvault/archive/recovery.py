"""Start-up recovery and ``dicomvault verify``.

A crash between "blob durable" and "index committed" (DESIGN.md, life of an instance,
steps 3–4) leaves a blob no row names; a crash while spooling leaves a temp file. Neither
was ever acknowledged to a sender, so both are removed. A small received blob is durable
through the index commit that holds its bytes (``blob_journal``) before its file is: a
power cut before that file reached the disk is mended from the journal first. A crash
in the middle of a deletion leaves rows in the deletion queue: :meth:`Archive.open`
finishes them first (``DeletionService.finish_queue``), and blobs the queue still names
(rejected instances in their grace period) are not orphans.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from dicomvault.index import Index
from dicomvault.model.errors import NotFound
from dicomvault.storage import BlobStore


@dataclass
class VerifyReport:
    checked: int = 0
    ok: int = 0
    missing: list[str] = field(default_factory=list)  # SOP Instance UIDs whose blob is gone
    corrupt: list[str] = field(default_factory=list)  # size or SHA-256 differs
    orphans: list[str] = field(default_factory=list)  # blob names no row refers to
    removed_orphans: int = 0
    removed_temp: int = 0

    @property
    def consistent(self) -> bool:
        return not (self.missing or self.corrupt or (self.orphans and not self.removed_orphans))


def restore_journal(index: Index, store: BlobStore) -> int:
    """Rewrite, from the blob journal, every indexed small blob whose file a power cut
    lost or cut short (its bytes were durable in the index's commit before the sender got
    Success; the file was to be flushed later), make them durable and empty the journal.
    Returns how many files were rewritten. Rows of blobs no instance names (deleted since,
    or replaced) are dropped: nothing comes back that was removed."""
    restored = 0
    for name, data in index.journal_entries():
        if index.blob_indexed(name) and store.restore(name, data):
            restored += 1
    flush_journal(index, store)
    return restored


def flush_journal(index: Index, store: BlobStore) -> None:
    """Make the files of every journaled blob committed so far durable (one syncfs), then
    drop their journal rows — those committed later stay (:meth:`Index.journal_mark`)."""
    mark = index.journal_mark()
    if mark:
        store.sync_all()
        index.journal_forget(mark)


def find_orphans(index: Index, store: BlobStore) -> list[str]:
    """Blobs neither an instance row nor the deletion queue names."""
    known = index.blob_names() | index.deletions.queued_blob_names()
    return [name for name in store.names() if name not in known]


def recover(index: Index, store: BlobStore) -> tuple[int, int]:
    """Remove every temp file and orphan blob; only call with the data dir to ourselves."""
    temp = store.remove_stale_temp(0)
    orphans = find_orphans(index, store)
    for name in orphans:
        store.delete(name)
    return temp, len(orphans)


def _sha256(store: BlobStore, name: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with store.open(name) as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def verify(
    index: Index,
    store: BlobStore,
    *,
    repair: bool = False,
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Re-hash every blob against the index; list missing, corrupt and orphan blobs.

    ``repair`` removes orphans (never indexed data: corrupt or missing instances are
    reported for a human to act on, not deleted).
    """
    report = VerifyReport()
    for stored in index.iter_instances():
        report.checked += 1
        try:
            digest, size = _sha256(store, stored.blob_name)
        except NotFound:
            report.missing.append(stored.sop_instance_uid)
        else:
            if digest != stored.sha256 or size != stored.size:
                report.corrupt.append(stored.sop_instance_uid)
            else:
                report.ok += 1
        if progress is not None:
            progress(1)
    report.orphans = find_orphans(index, store)
    if repair:
        for name in report.orphans:
            store.delete(name)
        report.removed_orphans = len(report.orphans)
        # Another process may be spooling right now: only clearly abandoned temp files.
        report.removed_temp = store.remove_stale_temp(3600)
    return report
