"""Modality Worklist C-FIND SCP (PS3.4 K.4.1, K.6.1; SOP Class 1.2.840.10008.5.1.4.31).

The Identifier is decoded with :func:`dicomvault.dicom.worklist.decode_worklist_identifier`
(its Specific Character Set applied as for Query/Retrieve), the query runs in
:func:`dicomvault.archive.worklist_find.find`, and each matching Scheduled Procedure Step
goes back as a pending response: 0xFF00, or 0xFF01 when a key is not supported (PS3.4
Table K.4-2: "one or more Optional Keys were not supported"). As in
:mod:`dicomvault.dimse.find`, one worker thread owned by the request reads and encodes
:data:`CHUNK` matches at a time; C-CANCEL ends the query with 0xFE00 (PS3.4 K.4.1.3.1)
and closes the cursor.

Failures (PS3.4 Table K.4-2), with the reason as Error Comment: 0xA900 "Identifier does
not match SOP Class" (a Scheduled Procedure Step Sequence of several items), 0xC000
"Unable to process" (an Identifier that cannot be read, a malformed range or date, a wild
card in a UID), 0xA700 when the matches pass setting ``query.max_results`` (the pending
responses sent stay valid).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Final

from dicomvault.archive import Archive, audit
from dicomvault.archive.worklist_find import WorklistMatches, find
from dicomvault.dicom.worklist import decode_worklist_identifier, encode_worklist_response
from dicomvault.dimse.query_threads import QueryThreads
from dicomvault.dimse.status import (
    CANCEL,
    OUT_OF_RESOURCES,
    PENDING,
    status_for_query_error,
)
from dicomvault.model.query import InvalidQuery, QueryKey
from dicomvault.net.handlers import SUCCESS, DimseStatus, QueryRequest, Response
from dicomvault.net.uids import MODALITY_WORKLIST_FIND

log = logging.getLogger("dicomvault.dimse")

#: The threads queries run on, shared by every handler of the process.
_THREADS: Final = QueryThreads("mwl-find")

#: Matches read and encoded per trip to the worker thread.
CHUNK: Final = 64
#: PS3.4 Table K.4-2: "Matches are continuing - Warning that one or more Optional Keys
#: were not supported for existence for this Identifier".
PENDING_WARNING: Final = 0xFF01
WORKLIST_SOP_CLASSES: Final = [MODALITY_WORKLIST_FIND]


class ArchiveWorklistHandler:
    """Modality Worklist C-FIND SCP: one query of the archive's worklist per request."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive

    async def handle(self, request: QueryRequest) -> AsyncIterator[Response]:
        assoc = request.association.id
        try:
            keys = decode_worklist_identifier(request.identifier, request.transfer_syntax_uid)
        except InvalidQuery as exc:
            log.info("assoc=%s worklist C-FIND refused: %s", assoc, exc)
            _audit_query(self.archive, request, str(exc))
            yield Response(status_for_query_error(exc))
            return
        _audit_query(self.archive, request)  # Query (PS3.15 A.5.3.10): queued, never waited on
        loop = asyncio.get_running_loop()
        # One thread for the whole query: the cursor stays on the thread that opened it.
        worker = _THREADS.next()
        result: WorklistMatches | None = None
        try:
            try:
                opened, first = await loop.run_in_executor(
                    worker, _open, self.archive, keys, request.transfer_syntax_uid
                )
                result = opened
            except Exception as exc:  # InvalidQuery (0xC000) or the index failing
                log.info("assoc=%s worklist C-FIND failed: %s", assoc, exc)
                yield Response(status_for_query_error(exc))
                return
            pending = DimseStatus(PENDING_WARNING if opened.query.unsupported else PENDING)
            chunk = first
            while True:
                for identifier in chunk:
                    if request.cancelled.is_set():
                        yield Response(DimseStatus(CANCEL))
                        return
                    yield Response(pending, identifier)
                if len(chunk) < CHUNK:
                    break
                chunk = await loop.run_in_executor(
                    worker, _take, opened, request.transfer_syntax_uid
                )
            if opened.truncated:
                yield Response(
                    DimseStatus(
                        OUT_OF_RESOURCES,
                        f"more than {opened.count} worklist matches: first {opened.count} "
                        "sent; narrow the query",
                    )
                )
                return
            yield Response(SUCCESS)
        finally:
            if result is not None and not result.closed:
                await loop.run_in_executor(worker, result.close)


def _audit_query(archive: Archive, request: QueryRequest, failure: str | None = None) -> None:
    """Query (PS3.15 A.5.3.10; a worklist query is audited as a Query, as the note of
    A.5.3.15 says): the Identifier as received, with its SOP class and transfer syntax."""
    assoc = request.association
    audit.queried(
        archive, assoc.calling_ae_title, assoc.peer_host, request.sop_class_uid,
        request.identifier, transfer_syntax=request.transfer_syntax_uid, failure=failure,
    )  # fmt: skip


def _open(
    archive: Archive, keys: tuple[QueryKey, ...], transfer_syntax_uid: str
) -> tuple[WorklistMatches, list[bytes]]:
    """Run the query and encode its first chunk (in the query's worker thread)."""
    result = find(archive, keys)
    try:
        return result, _take(result, transfer_syntax_uid)
    except BaseException:
        result.close()
        raise


def _take(result: WorklistMatches, transfer_syntax_uid: str) -> list[bytes]:
    """Up to :data:`CHUNK` matches, encoded (runs in the query's worker thread)."""
    out: list[bytes] = []
    for dataset in result:
        out.append(encode_worklist_response(dataset, transfer_syntax_uid))
        if len(out) >= CHUNK:
            break
    return out
