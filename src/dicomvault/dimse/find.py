"""C-FIND SCP over the archive: Patient Root and Study Root (PS3.4 C.4.1, C.6.1, C.6.2).

The Identifier is decoded with :func:`dicomvault.dicom.identifier.decode_identifier`
(relational when the requestor negotiated it, PS3.4 C.5.1.1.1), the query runs in
:meth:`Archive.find`, and matches stream back: a single worker thread owned by the
request pulls :data:`CHUNK` matches at a time from the archive's cursor and encodes them,
the event loop sends each as a pending response (0xFF00). Nothing is loaded whole.

Pending status: 0xFF00. The archive answers every key of the Identifier (keys it does
not index come back zero-length, which PS3.4 C.2.2.1.1 allows for optional keys that
are returned but not matched), so 0xFF01 is not used. C-CANCEL ends the query with
0xFE00 (PS3.4 C.4.1.3.1); the cursor is closed at once. The cap is answered 0xA700
(see :mod:`dicomvault.dimse.status`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Final

from dicomvault.archive import Archive, audit
from dicomvault.dicom.identifier import IdentifierEncoder, decode_identifier
from dicomvault.dimse.query_threads import QueryThreads
from dicomvault.dimse.status import (
    CANCEL,
    OUT_OF_RESOURCES,
    status_for_query_error,
)
from dicomvault.model.query import FindResult, InformationModel, InvalidQuery, Query
from dicomvault.net.handlers import SUCCESS, DimseStatus, Matches, QueryRequest, Response
from dicomvault.net.uids import (
    PATIENT_ROOT_FIND,
    PATIENT_ROOT_GET,
    PATIENT_ROOT_MOVE,
    STUDY_ROOT_FIND,
    STUDY_ROOT_GET,
    STUDY_ROOT_MOVE,
)

log = logging.getLogger("dicomvault.dimse")

#: The threads queries run on, shared by every handler of the process.
_THREADS: Final = QueryThreads("c-find")

#: Matches pulled and encoded per trip to the worker thread.
CHUNK: Final = 64

#: SOP class -> information model (PS3.4 C.6.1.1, C.6.2.1).
MODEL_OF: Final[dict[str, InformationModel]] = {
    PATIENT_ROOT_FIND: InformationModel.PATIENT_ROOT,
    PATIENT_ROOT_MOVE: InformationModel.PATIENT_ROOT,
    PATIENT_ROOT_GET: InformationModel.PATIENT_ROOT,
    STUDY_ROOT_FIND: InformationModel.STUDY_ROOT,
    STUDY_ROOT_MOVE: InformationModel.STUDY_ROOT,
    STUDY_ROOT_GET: InformationModel.STUDY_ROOT,
}
FIND_SOP_CLASSES: Final = [PATIENT_ROOT_FIND, STUDY_ROOT_FIND]


def decode_request(request: QueryRequest) -> Query:
    """The request's Identifier as a :class:`Query` (raises :class:`InvalidQuery`)."""
    return decode_identifier(
        request.identifier,
        request.transfer_syntax_uid,
        MODEL_OF[request.sop_class_uid],
        relational=request.relational,
    )


def relational_reply(sop_class_uid: str, app_info: bytes) -> bytes | None:
    """SOP Class Extended Negotiation reply (PS3.4 C.5.1.1.1, C.5.2.1.1, C.5.3.1.1).

    Byte 0, relational queries/retrieval: accepted as proposed. Bytes 1-3 (combined
    date-time matching, fuzzy semantic matching of person names, timezone query
    adjustment) are answered 0: not supported.
    """
    if sop_class_uid not in MODEL_OF or not app_info:
        return None
    return bytes((1 if app_info[0] == 1 else 0,)) + bytes(min(len(app_info), 4) - 1)


class ArchiveFindHandler:
    """C-FIND SCP: one :meth:`Archive.find` per request, streamed (PS3.4 C.4.1.2)."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive

    async def handle(self, request: QueryRequest) -> AsyncIterator[Response | Matches]:
        assoc = request.association
        try:
            query = decode_request(request)
        except InvalidQuery as exc:
            log.info("assoc=%s C-FIND refused: %s", request.association.id, exc)
            audit.queried(
                self.archive, assoc.calling_ae_title, assoc.peer_host, request.sop_class_uid,
                request.identifier, transfer_syntax=request.transfer_syntax_uid, failure=str(exc),
            )  # fmt: skip
            yield Response(status_for_query_error(exc))
            return
        # Query (PS3.15 A.5.3.10): the Identifier as received, queued (never waited on).
        audit.queried(
            self.archive, assoc.calling_ae_title, assoc.peer_host, request.sop_class_uid,
            request.identifier, transfer_syntax=request.transfer_syntax_uid,
        )  # fmt: skip
        encoder = IdentifierEncoder(
            query,
            request.transfer_syntax_uid,
            retrieve_ae_title=request.association.called_ae_title,
        )
        loop = asyncio.get_running_loop()
        # One thread for the whole query: the cursor stays on the thread that opened it.
        worker = _THREADS.next()
        result: FindResult | None = None
        try:
            try:
                # The query and its first chunk in one trip: a selective query needs one.
                opened, first = await loop.run_in_executor(
                    worker, _open, self.archive, query, encoder
                )
                result = opened
            except Exception as exc:
                log.warning("assoc=%s C-FIND failed: %r", request.association.id, exc)
                yield Response(status_for_query_error(exc))
                return
            chunk: list[bytes] | Exception = first
            while True:
                if isinstance(chunk, Exception):
                    raise chunk
                if request.cancelled.is_set():
                    yield Response(DimseStatus(CANCEL))
                    return
                yield Matches(chunk)  # pending responses (0xFF00), sent back to back
                if len(chunk) < CHUNK:
                    break
                chunk = await loop.run_in_executor(worker, _take, opened, encoder)
            if opened.truncated:
                yield Response(
                    DimseStatus(
                        OUT_OF_RESOURCES,
                        f"more than {opened.count} matches: first {opened.count} sent; "
                        "narrow the query",
                    )
                )
                return
            yield Response(SUCCESS)
        finally:
            if result is not None and not result.closed:
                await loop.run_in_executor(worker, result.close)


def _open(
    archive: Archive, query: Query, encoder: IdentifierEncoder
) -> tuple[FindResult, list[bytes] | Exception]:
    """Run the query and encode its first chunk (in the query's worker thread); a failure
    while reading or encoding comes back as the exception, the result then closed."""
    result = archive.find(query)
    try:
        return result, _take(result, encoder)
    except Exception as exc:
        result.close()
        return result, exc


def _take(result: FindResult, encoder: IdentifierEncoder) -> list[bytes]:
    """Up to :data:`CHUNK` matches, encoded (runs in the query's worker thread)."""
    out: list[bytes] = []
    for match in result:
        out.append(encoder(match))
        if len(out) >= CHUNK:
            break
    return out
