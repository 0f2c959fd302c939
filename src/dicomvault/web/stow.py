"""STOW-RS, the Store transaction of the Studies Service (PS3.18 10.5).

``POST /studies`` and ``POST /studies/{study}`` with a ``multipart/related`` body
(PS3.18 10.5.1.2), in either form:

- ``type="application/dicom"``: each part a Part 10 file (PS3.18 10.5.1.2.1); a part
  without Content-Type is taken to be of the ``type`` parameter;
- ``type="application/dicom+json"``: the first part an array of DICOM JSON data sets
  (PS3.18 F.2), the others bulk data whose Content-Location is a BulkDataURI of those
  data sets (PS3.18 10.5.1.2.2).

Parts stream into the archive as they arrive (:mod:`web.multipart_reader`,
:class:`archive.stow.StreamedInstance`: up to 1 MiB of a part in memory, the rest of a
larger one straight to the blob store's spool): memory stays bounded whatever the body
size.
While part k+1 is read, part k is parsed, made durable and indexed in the thread pool;
the index writer commits the instances of the request in groups. A part counts as
stored only when its bytes are durable and indexed.

The answer is the Store Instances Response Module (PS3.18 10.5.3, Annex I) as DICOM JSON
with the statuses of Table 10.5.3-1: 200 all stored, 202 some stored and some failed,
409 none stored — 507 Insufficient Storage when none was stored because of the storage
quota (``retention.quota_policy = "reject"``). Failure Reason values (Table I.2-2): see
:data:`FAILURE_REASONS`; each failed item also has an Error Comment (0000,0902) naming
the reason (e.g. the IOCM rejection note that rejected the instance).

Requests that are wrong as a whole get a JSON problem body (``web/errors.py``): 415 for
a Content-Type or Content-Encoding we do not take, 413 past ``http.max_body_bytes`` or
``http.max_parts``, 400 for a broken multipart body. Parts completed before such a
problem *stay stored* — each is durable, indexed and complete, and re-sending the request
is harmless (identical instances are recognised as duplicates) — and the problem body
lists them in a ``"stored"`` member holding the Store Instances Response Module.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from dicomvault import metrics
from dicomvault.archive import Archive
from dicomvault.archive.stow import (
    BulkFile,
    StreamedInstance,
    StudyMismatch,
    json_uids,
    store_json_instance,
)
from dicomvault.dicom.dicomxml import native_xml
from dicomvault.dicom.fromjson import BulkData, load_metadata
from dicomvault.model.digits import ascii_digits
from dicomvault.model.errors import CannotParse, NotDicom, QuotaExceeded, ingest_failure_status
from dicomvault.model.records import StoreResult
from dicomvault.web.audit_api import audit_stored
from dicomvault.web.common import (
    archive_of,
    base_url,
    blocking,
    instance_url,
    path_uid,
    settings_of,
    study_url,
)
from dicomvault.web.errors import HTTPProblem
from dicomvault.web.media import (
    DICOM,
    DICOM_JSON,
    DICOM_XML,
    JSON,
    MULTIPART_RELATED,
    MediaRange,
    accepted,
    choose,
    content_type,
    parse_media_type,
)
from dicomvault.web.multipart_reader import (
    MultipartError,
    MultipartReader,
    PartHeaders,
    check_boundary,
)

log = logging.getLogger("dicomvault.http")

#: Bytes of a part collected before they are written to its spool file in the thread
#: pool: fewer thread hops; an instance up to this size costs one hop in all.
WRITE_BATCH = 1 << 20
#: Parts being made durable and indexed while the next ones are read. Bounds memory
#: (each holds up to WRITE_BATCH bytes) and open spool files; enough to fill the index
#: writer's group commits.
MAX_IN_FLIGHT = 16
#: Largest output of one decompression step (gzip bodies): bounds memory for any ratio.
INFLATE_STEP = 1 << 18
#: Largest DICOM JSON metadata part kept in memory (it is parsed as a whole).
MAX_METADATA_BYTES = 64 * 1024 * 1024

#: PS3.18 Table I.2-2 Failure Reasons beyond the PS3.4 B.2.3 statuses shared with C-STORE
#: (model.errors.INGEST_FAILURE_STATUS: A700, A900, C000).
PROCESSING_FAILURE = 0x0110
#: Not in Table I.2-2, which allows additional codes: the Cxxx ("cannot understand")
#: value dcm4chee-arc reports for an instance of another study than the request's.
STUDY_INSTANCE_UID_MISMATCH = 0xC409

_ENCODINGS = {"gzip": 31, "x-gzip": 31, "deflate": 15}
_ACCEPTED_TYPES = f'{MULTIPART_RELATED}; type="{DICOM}" or type="{DICOM_JSON}"'


class BodyTooLarge(Exception):
    """The (decompressed) body grew past ``http.max_body_bytes``."""


class BadEncoding(Exception):
    """The compressed body is corrupt or truncated."""


@dataclass(slots=True)
class Outcome:
    """What became of one instance of the request."""

    part: int
    result: StoreResult | None = None
    error: BaseException | None = None
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None


def failure_reason(exc: BaseException) -> int:
    """The Failure Reason (0008,1197) for an ingest error (PS3.18 Table I.2-2): the
    C-STORE side's choices, and C409 for an instance of another study."""
    if isinstance(exc, StudyMismatch):
        return STUDY_INSTANCE_UID_MISMATCH
    return ingest_failure_status(exc, PROCESSING_FAILURE)


# -- the request body ------------------------------------------------------------------


async def _body(request: Request, encoding: str | None, limit: int) -> AsyncIterator[bytes]:
    """The body's chunks, decompressed when ``Content-Encoding`` says so (RFC 9110 8.4),
    counted against ``limit`` after decompression."""
    total = 0
    inflater = zlib.decompressobj(_ENCODINGS[encoding]) if encoding else None
    async for chunk in request.stream():
        if inflater is None:
            if total + len(chunk) > limit:
                # The bytes up to the limit still count: parts they complete are stored.
                yield chunk[: limit - total]
                raise BodyTooLarge
            total += len(chunk)
            yield chunk
            continue
        data = chunk
        while data and not inflater.eof:
            try:
                out = inflater.decompress(data, INFLATE_STEP)
            except zlib.error as exc:
                raise BadEncoding(f"the {encoding} body is corrupt: {exc}") from None
            data = inflater.unconsumed_tail
            if total + len(out) > limit:
                yield out[: limit - total]
                raise BodyTooLarge
            total += len(out)
            if out:
                yield out
    if inflater is not None and not inflater.eof:
        raise BadEncoding(f"the {encoding} body ends before its compressed stream does")


# -- parts -------------------------------------------------------------------------------


async def _spool_part(
    reader: MultipartReader, instance: StreamedInstance
) -> list[bytes | memoryview]:
    """Read the current part into ``instance`` in batches of WRITE_BATCH bytes, written in
    the pool; the last batch is returned for the caller to write together with
    ``finish`` in one thread hop. Chunks are passed on as they came (no copy here)."""
    batch: list[bytes | memoryview] = []
    size = 0
    async for chunk in reader.payload():
        batch.append(chunk)
        size += len(chunk)
        if size >= WRITE_BATCH:
            await blocking(instance.write_all, batch)
            batch, size = [], 0
    return batch


async def _complete(
    number: int,
    instance: StreamedInstance,
    rest: list[bytes | memoryview],
    slots: asyncio.Semaphore,
) -> Outcome:
    """Write the tail, parse, make durable, then wait for the index commit."""

    def finish() -> Future[StoreResult]:
        instance.write_all(rest)
        return instance.finish()

    try:
        indexed = await blocking(finish)
        result = await asyncio.wrap_future(indexed)
    except Exception as exc:
        return Outcome(
            number,
            error=exc,
            sop_class_uid=instance.sop_class_uid,
            sop_instance_uid=instance.sop_instance_uid,
        )
    finally:
        slots.release()
    return Outcome(number, result=result)


async def _complete_json(
    number: int,
    run: Callable[[], Future[StoreResult]],
    uids: tuple[str | None, str | None],
    slots: asyncio.Semaphore,
) -> Outcome:
    try:
        indexed = await blocking(run)
        result = await asyncio.wrap_future(indexed)
    except Exception as exc:
        return Outcome(number, error=exc, sop_class_uid=uids[0], sop_instance_uid=uids[1])
    finally:
        slots.release()
    return Outcome(number, result=result)


def _part_type(part: PartHeaders, default: str) -> MediaRange:
    value = part.get("content-type")
    if not value:
        return MediaRange(default)
    try:
        return parse_media_type(value, what=f"Content-Type of part {part.number}")
    except ValueError as exc:
        raise MultipartError(str(exc)) from None


class _Store:
    """One STOW-RS request being read."""

    def __init__(self, request: Request, study: str | None) -> None:
        self.request = request
        self.archive: Archive = archive_of(request)
        self.study = study
        self.max_parts = settings_of(request).http.max_parts
        self.slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.tasks: list[asyncio.Task[Outcome]] = []
        self.early: list[Outcome] = []  # parts refused without reaching the archive

    def _count(self, reader: MultipartReader) -> None:
        if reader.parts > self.max_parts:
            raise HTTPProblem(
                413,
                f"more than {self.max_parts} parts (setting http.max_parts)",
                limit=self.max_parts,
            )

    async def dicom_parts(self, reader: MultipartReader) -> None:
        """The application/dicom form: every part a Part 10 file."""
        while (part := await reader.next_part()) is not None:
            self._count(reader)
            media = _part_type(part, DICOM)
            if media.type != DICOM:
                log.warning("STOW-RS part %d refused: Content-Type %s", part.number, media.type)
                self.early.append(
                    Outcome(part.number, error=NotDicom(f"part Content-Type is {media.type}"))
                )
                continue  # next_part() skips its payload
            await self.slots.acquire()
            instance = StreamedInstance(self.archive, study_instance_uid=self.study)
            try:
                rest = await _spool_part(reader, instance)
            except BaseException:
                self.slots.release()
                await blocking(instance.abort)
                raise
            self.tasks.append(
                asyncio.create_task(_complete(part.number, instance, rest, self.slots))
            )

    async def json_parts(self, reader: MultipartReader) -> None:
        """The application/dicom+json form: metadata first, bulk data after."""
        first = await reader.next_part()
        if first is None:
            return
        media = _part_type(first, DICOM_JSON)
        if media.type not in (DICOM_JSON, JSON):
            raise HTTPProblem(
                400, f"the first part must be {DICOM_JSON} (DICOM JSON metadata), not {media.type}"
            )
        metadata = bytearray()
        async for chunk in reader.payload():
            metadata += chunk
            if len(metadata) > MAX_METADATA_BYTES:
                raise HTTPProblem(
                    413, f"the DICOM JSON metadata part is larger than {MAX_METADATA_BYTES} bytes"
                )
        try:
            datasets = load_metadata(bytes(metadata))
        except CannotParse as exc:
            raise HTTPProblem(400, str(exc)) from None
        del metadata
        bulk: dict[str, BulkData] = {}
        try:
            while (part := await reader.next_part()) is not None:
                self._count(reader)
                location = part.get("content-location")
                if not location:
                    raise HTTPProblem(400, f"bulk data part {part.number} has no Content-Location")
                ts = _part_type(part, "application/octet-stream").transfer_syntax
                bulk[location] = await self._spool_bulk(reader, ts)
            for number, dataset in enumerate(datasets, start=1):
                await self.slots.acquire()

                def run(ds: dict[str, Any] = dataset) -> Future[StoreResult]:
                    return store_json_instance(
                        self.archive, ds, bulk, study_instance_uid=self.study
                    )

                self.tasks.append(
                    asyncio.create_task(_complete_json(number, run, json_uids(dataset), self.slots))
                )
            if self.tasks:
                await asyncio.wait(self.tasks)
        finally:
            for item in bulk.values():
                closer = getattr(item.read, "close", None)
                if closer is not None:
                    await blocking(closer)

    async def _spool_bulk(self, reader: MultipartReader, ts: str | None) -> BulkData:
        spool = await blocking(BulkFile, self.archive)
        try:
            buffer = bytearray()
            async for chunk in reader.payload():
                buffer += chunk
                if len(buffer) >= WRITE_BATCH:
                    data, buffer = buffer, bytearray()
                    await blocking(spool.write, data)
            if buffer:
                await blocking(spool.write, buffer)
        except BaseException:
            await blocking(spool.close)
            raise
        return BulkData(spool, ts)

    async def outcomes(self) -> list[Outcome]:
        done = list(await asyncio.gather(*self.tasks)) if self.tasks else []
        return sorted(self.early + done, key=lambda o: o.part)


# -- the response ----------------------------------------------------------------------


def _ui(value: str | None) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def _comment(exc: BaseException) -> str:
    text = " ".join((str(exc) or type(exc).__name__).split())
    return text if len(text) <= 64 else text[:61] + "..."


def store_response(base: str, study: str | None, outcomes: list[Outcome]) -> dict[str, Any]:
    """The Store Instances Response Module (PS3.18 10.5.3, Annex I) as DICOM JSON.

    Retrieve URL (0008,1190) is the study's: the request's, else the one study every
    stored instance belongs to, else empty.
    """
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    studies: set[str] = set()
    for outcome in outcomes:
        result = outcome.result
        if result is not None:
            studies.add(result.study_instance_uid)
            url = instance_url(
                base,
                result.study_instance_uid,
                result.series_instance_uid,
                result.sop_instance_uid,
            )
            referenced.append(
                {
                    "00081150": _ui(result.sop_class_uid),
                    "00081155": _ui(result.sop_instance_uid),
                    "00081190": {"vr": "UR", "Value": [url]},
                }
            )
        else:
            assert outcome.error is not None
            failed.append(
                {
                    "00081150": _ui(outcome.sop_class_uid),
                    "00081155": _ui(outcome.sop_instance_uid),
                    "00081197": {"vr": "US", "Value": [failure_reason(outcome.error)]},
                    # Error Comment (0000,0902) as C-STORE gives it (PS3.7 C.4.2.1.4):
                    # why, e.g. "rejected by KOS <uid>", at most 64 characters (LO).
                    "00000902": {"vr": "LO", "Value": [_comment(outcome.error)]},
                }
            )
    target = study or (next(iter(studies)) if len(studies) == 1 else None)
    body: dict[str, Any] = {
        "00081190": {"vr": "UR", "Value": [study_url(base, target)]} if target else {"vr": "UR"}
    }
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    return body


def _record(outcomes: list[Outcome]) -> None:
    for outcome in outcomes:
        if outcome.result is not None:
            metrics.INGEST_INSTANCES.inc("stow", outcome.result.status.value)
            metrics.INGEST_BYTES.inc("stow", amount=outcome.result.size)
        else:
            metrics.INGEST_INSTANCES.inc("stow", "failed")
            log.warning(
                "STOW-RS part %d (%s) failed: %s: %s",
                outcome.part,
                outcome.sop_instance_uid or "UID unknown",
                type(outcome.error).__name__,
                outcome.error,
            )


# -- the handler -----------------------------------------------------------------------


def _checked_request(request: Request) -> tuple[str, str, str | None]:
    """``(related type, boundary, content encoding)`` of a STOW-RS request, or the
    415/400/413 that says why it cannot be read (PS3.18 10.5.1, 8.6.1.2)."""
    ctype = content_type(request)
    if ctype.type != MULTIPART_RELATED:
        raise HTTPProblem(
            415,
            f"Content-Type {ctype.type} is not accepted; send {_ACCEPTED_TYPES}",
            accepted=[
                f'{MULTIPART_RELATED}; type="{DICOM}"',
                f'{MULTIPART_RELATED}; type="{DICOM_JSON}"',
            ],
        )
    # RFC 2387 requires the type parameter; clients that omit it send Part 10 files.
    related = ctype.related_type or DICOM
    if related not in (DICOM, DICOM_JSON):
        raise HTTPProblem(
            415,
            f"multipart/related type {related!r} is not accepted; send {_ACCEPTED_TYPES}",
            accepted=[DICOM, DICOM_JSON],
        )
    try:
        boundary = check_boundary(ctype.params.get("boundary"))
    except MultipartError as exc:
        raise HTTPProblem(400, f"Content-Type: {exc}") from None
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding == "identity":
        encoding_or_none = None
    elif encoding in _ENCODINGS:
        encoding_or_none = encoding
    else:
        raise HTTPProblem(
            415,
            f"Content-Encoding {encoding!r} is not supported",
            accepted=["identity", "gzip", "deflate"],
        )
    limit = settings_of(request).http.max_body_bytes
    declared = (request.headers.get("content-length") or "").strip()
    if ascii_digits(declared) and int(declared) > limit:
        raise HTTPProblem(
            413,
            f"the body of {int(declared)} bytes is larger than {limit} bytes "
            "(setting http.max_body_bytes)",
            limit=limit,
        )
    return related, boundary, encoding_or_none


async def store_instances(request: Request) -> Response:
    """Store instances (STOW-RS, PS3.18 10.5): a multipart/related body of DICOM files
    or of DICOM JSON metadata plus bulk data.

    Answers the Store Instances Response Module (PS3.18 10.5.3) as DICOM JSON (or DICOM
    XML when asked for ``application/dicom+xml``): 200 when
    every instance was stored, 202 when some failed, 409 when none was stored. With
    ``/studies/{study}``, instances of other studies fail (Failure Reason C409).
    """
    study = (
        path_uid(request, "study", "Study Instance UID") if "study" in request.path_params else None
    )
    response_type = choose(accepted(request), [DICOM_JSON, JSON, DICOM_XML])
    related, boundary, encoding = _checked_request(request)
    limit = settings_of(request).http.max_body_bytes
    reader = MultipartReader(_body(request, encoding, limit), boundary)
    store = _Store(request, study)
    problem: HTTPProblem | None = None
    try:
        if related == DICOM:
            await store.dicom_parts(reader)
        else:
            await store.json_parts(reader)
    except HTTPProblem as exc:
        problem = exc
    except MultipartError as exc:
        problem = HTTPProblem(400, f"malformed multipart/related body: {exc}")
    except BadEncoding as exc:
        problem = HTTPProblem(400, str(exc))
    except BodyTooLarge:
        problem = HTTPProblem(
            413,
            f"the body is larger than {limit} bytes (setting http.max_body_bytes)",
            limit=limit,
        )
    except ClientDisconnect:
        outcomes = await store.outcomes()
        _record(outcomes)
        audit_stored(request, [o.result for o in outcomes if o.result is not None])
        log.warning(
            "STOW-RS client went away after %d part(s); %d stored",
            reader.parts,
            sum(o.result is not None for o in outcomes),
        )
        return Response(status_code=400)
    outcomes = await store.outcomes()
    _record(outcomes)
    # Instances Transferred, action C, per study of the request (PS3.15 A.5.3.7).
    audit_stored(request, [o.result for o in outcomes if o.result is not None])
    base = base_url(request)
    body = store_response(base, study, outcomes)
    if problem is not None:
        # The request as a whole is refused, but what completed stays stored: say what.
        problem.details["stored"] = body
        problem.details["parts"] = reader.parts
        raise problem
    if not outcomes:
        raise HTTPProblem(400, "the multipart/related body has no parts")
    stored = sum(o.result is not None for o in outcomes)
    status = 200 if stored == len(outcomes) else 202 if stored else 409
    if not stored and all(isinstance(o.error, QuotaExceeded) for o in outcomes):
        # RFC 4918 11.5 Insufficient Storage: the archive's quota, not the request, is
        # what stands in the way (retention.quota_policy "reject").
        status = 507
    if response_type == DICOM_XML:
        # PS3.18 10.5.3: the response module as one Native DICOM Model document.
        return Response(native_xml(body), status_code=status, media_type=DICOM_XML)
    return JSONResponse(body, status_code=status, media_type=response_type)


def routes() -> list[BaseRoute]:
    return [
        Route("/studies", store_instances, methods=["POST"]),
        Route("/studies/{study}", store_instances, methods=["POST"]),
    ]
