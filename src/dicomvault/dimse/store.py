"""Storage SCP handler over the archive (PS3.4 B.2.2): stream in, finish off the loop.

Fragments are collected in a bytearray and handed to ``Reception.write`` in batches of
:data:`WRITE_BATCH` bytes (page-cache writes, cheap enough for the event loop); parsing
and the fsyncs run in the default executor, and the index writer's commit completes the
response's future directly (one thread hand-off fewer than an executor thread waiting).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Future

from dicomvault import metrics
from dicomvault.archive import Archive, Reception
from dicomvault.archive.audit import AuditTrail, trail_of
from dicomvault.dimse.status import status_for_error, status_for_result
from dicomvault.model.records import StoreResult
from dicomvault.net.handlers import DimseStatus, StoreRequest

#: Bytes collected before a write to the spool file. An instance up to this size (CT,
#: MR, most ultrasound frames) never touches the file system on the event loop and is
#: parsed and hashed from memory; a larger one streams. At most this much is buffered
#: per association (64 MiB with the default 64 associations), whatever the size.
WRITE_BATCH = 1 << 20

log = logging.getLogger("dicomvault.dimse")


class ArchiveSink:
    """One instance being received into the archive.

    The reception (a spool file) is opened lazily: an instance smaller than
    :data:`WRITE_BATCH` is parsed from its buffer and written once in one executor call
    (:meth:`Archive.receive_buffered`), so the event loop does no file system work for
    it; a larger one opens its reception on the loop when the first batch is full and
    streams from then on (memory stays bounded).
    """

    __slots__ = ("_archive", "_audit", "_buffer", "_failed", "_reception", "_request")

    def __init__(
        self, archive: Archive, request: StoreRequest, audit: AuditTrail | None = None
    ) -> None:
        self._archive = archive
        self._audit = audit
        self._request = request
        self._reception: Reception | None = None
        self._buffer = bytearray()
        self._failed: BaseException | None = None

    def _open(self) -> Reception:
        request = self._request
        return self._archive.begin_receive(
            sop_class_uid=request.sop_class_uid,
            sop_instance_uid=request.sop_instance_uid,
            transfer_syntax_uid=request.transfer_syntax_uid,
            source_ae=request.association.calling_ae_title,
        )

    def write(self, chunk: memoryview) -> None:
        if self._failed is not None:
            return
        self._buffer += chunk
        if len(self._buffer) >= WRITE_BATCH:
            self._flush()

    def _flush(self) -> None:
        buffer, self._buffer = self._buffer, bytearray()
        try:
            if self._reception is None:
                self._reception = self._open()
            self._reception.write(buffer)
        except Exception as exc:  # disk full: keep reading, answer the failure at the end
            self._failed = exc

    def _complete(self) -> Future[StoreResult]:
        """Runs in the executor: parse, check, make the blob durable; the returned future
        completes on the index writer's thread after the commit (no thread waits)."""
        reception = self._reception
        if reception is None:  # the whole data set is in the buffer: nothing to read back
            request = self._request
            buffer, self._buffer = self._buffer, bytearray()
            return self._archive.receive_buffered(
                sop_class_uid=request.sop_class_uid,
                sop_instance_uid=request.sop_instance_uid,
                transfer_syntax_uid=request.transfer_syntax_uid,
                dataset=buffer,
                source_ae=request.association.calling_ae_title,
            )
        if self._buffer:
            buffer, self._buffer = self._buffer, bytearray()
            reception.write(buffer)
        return reception.finish_async()

    async def finish(self) -> DimseStatus:
        request = self._request
        if self._failed is not None:
            self.abort()
            metrics.INGEST_INSTANCES.inc("dimse", "failed")
            return status_for_error(self._failed)
        loop = asyncio.get_running_loop()
        try:
            indexed = await loop.run_in_executor(None, self._complete)
            result = await asyncio.wrap_future(indexed, loop=loop)
        except Exception as exc:
            if self._reception is not None:
                self._reception.abort()
            log.warning(
                "assoc=%s C-STORE %s refused: %s: %s",
                request.association.id,
                request.sop_instance_uid,
                type(exc).__name__,
                exc,
            )
            metrics.INGEST_INSTANCES.inc("dimse", "failed")
            return status_for_error(exc)
        metrics.INGEST_INSTANCES.inc("dimse", result.status.value)
        if self._audit is not None:  # counted in memory; one message per study at the end
            assoc = request.association
            self._audit.stored(
                assoc.id, assoc.calling_ae_title, assoc.called_ae_title, assoc.peer_host, result
            )
        metrics.INGEST_BYTES.inc("dimse", amount=result.size)
        if result.warnings:
            log.info(
                "assoc=%s C-STORE %s stored with warnings: %s",
                request.association.id,
                result.sop_instance_uid,
                "; ".join(result.warnings),
            )
        return status_for_result(result)

    def abort(self) -> None:
        self._buffer = bytearray()
        if self._reception is not None:
            self._reception.abort()


class ArchiveStoreHandler:
    """C-STORE SCP: each request becomes one ``archive.begin_receive`` (PS3.4 B.2.2)."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.audit = trail_of(archive)

    def begin_store(self, request: StoreRequest) -> ArchiveSink:
        return ArchiveSink(self.archive, request, self.audit)
