"""WADO-RS: the Retrieve transaction of the Studies Service (PS3.18 10.4).

Resources (PS3.18 10.4.1, Table 10.4.1-1), all ``GET`` under ``/dicom-web``:

- instances of a study, a series, one instance: ``multipart/related;
  type="application/dicom"``, each part a Part 10 file streamed from the blob store;
- ``…/metadata``: ``application/dicom+json`` (PS3.18 F.2), from the index, absolute
  BulkDataURIs;
- ``…/instances/{i}/bulkdata/{path}``: a bulk data value (PS3.18 8.7.3.3);
- ``…/instances/{i}/frames/{list}``: frames of an image (PS3.18 10.4.1.1.6).

Transfer syntax (PS3.18 8.7.3.5, 8.7.3.3): ``transfer-syntax=*`` sends what is stored; a
UID sends that syntax, transcoding when it differs (406 when that is impossible);
without the parameter the default is Explicit VR Little Endian (1.2.840.10008.1.2.1),
transcoded to when stored otherwise. Every part names its ``transfer-syntax``.

Frames stored compressed go out as stored when the client takes them: ``transfer-syntax=*``
or the stored UID on ``application/octet-stream`` (what OHIF asks; parts are then
``application/octet-stream; transfer-syntax=<stored UID>``, which OHIF decodes), or the
compressed media type of PS3.18 Table 8.7.3-5 (``image/jpeg`` …, also for ``*/*``).
Otherwise they are decompressed to Explicit VR Little Endian bytes. Bulk data
``7FE00010`` of an encapsulated image is its frames, one part each (PS3.18 8.7.3.3.2:
"compressed multi-frame image pixel data is encoded as individual frames").

HTTP caching: every answer carries an ``ETag`` over the stored SHA-256 of the instances
it holds and the representation chosen (media type, transfer syntax, base URL for
metadata), ``If-None-Match`` gives 304, and ``Cache-Control: private, no-cache``: the
content behind a URL changes when an instance is re-sent under the ``overwrite``
duplicate policy or deleted, so caches must revalidate (cheap: one index query), and
patient data must not sit in shared caches.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
from collections.abc import AsyncIterator, Sequence
from typing import BinaryIO

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from dicomvault.archive import Archive, retrieval
from dicomvault.dicom.dicomxml import native_xml_many
from dicomvault.model.records import StoredInstance
from dicomvault.model.uid import uid_problem
from dicomvault.web.audit_api import audit_retrieve
from dicomvault.web.caching import cache_headers, instances_tag, not_modified
from dicomvault.web.common import (
    archive_of,
    base_url,
    blocking,
    instance_url,
    path_uid,
)
from dicomvault.web.media import (
    DICOM,
    DICOM_JSON,
    DICOM_XML,
    JSON,
    MULTIPART_RELATED,
    MediaRange,
    accepted,
    not_acceptable,
)
from dicomvault.web.multipart import PART_END, closing, multipart_type, new_boundary, part_head
from dicomvault.web.wado_deidentified import (
    deidentified_only,
    refuse_untranscodable,
    retrieve_deidentified,
)
from dicomvault.web.zerocopy import Part10, ZeroCopy, zero_copy

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
#: Chunk read from a blob per thread-pool call while streaming.
CHUNK = 1 << 20
#: Stored files up to this size are read whole in one pool call (one thread hop per
#: instance); larger ones are streamed in CHUNK pieces.
WHOLE_FILE = 8 << 20
#: PS3.18 8.7.3.3: the default for bulk data and frames; "*" as a transfer syntax.
ANY = "*"
#: Frame requests of up to this many frames are answered from memory in one write.
IN_ONE_WRITE = 16
_ITEMS = '"BulkDataURI":"bulkdata/'

log = logging.getLogger("dicomvault.http")


# -- shared helpers ---------------------------------------------------------------------


def path_uids(request: Request, *names: str) -> list[str]:
    what = {"study": "Study Instance UID", "series": "Series Instance UID"}
    return [path_uid(request, name, what.get(name, "SOP Instance UID")) for name in names]


def _zero_preamble(part10: memoryview) -> None:
    """Zero the 128-byte preamble of a Part 10 file in place (PS3.10 7.1 lets it hold
    anything; a Windows executable there makes a PE/DICOM polyglot, CVE-2019-11687).
    The archive keeps what it received; what it sends never carries a non-zero one."""
    if len(part10) >= 132 and part10[128:132].tobytes() == b"DICM" and any(part10[:128]):
        part10[:128] = bytes(128)


async def file_chunks(
    fp: BinaryIO, start: int = 0, length: int | None = None
) -> AsyncIterator[bytes]:
    """The bytes of ``fp`` from ``start`` (``length`` of them, or to the end), read in the
    thread pool one chunk ahead of the one being sent, so disk and socket overlap."""
    left = length

    def read() -> bytes:
        want = CHUNK if left is None else min(CHUNK, left)
        return fp.read(want) if want else b""

    await blocking(fp.seek, start)
    pending = asyncio.ensure_future(blocking(read))
    try:
        while True:
            chunk = await pending
            if not chunk:
                return
            if left is not None:
                left -= len(chunk)
            pending = asyncio.ensure_future(blocking(read))
            yield chunk
    finally:
        if not pending.done():
            # Never close the file under a read still running in the pool.
            await asyncio.wait([pending])
        if pending.done() and not pending.cancelled():
            pending.exception()  # retrieved: no "never retrieved" warning


# -- instances (PS3.18 10.4.1.1.1-3) ----------------------------------------------------


def _dicom_syntax(ranges: list[MediaRange]) -> str:
    """The transfer syntax asked for ``multipart/related; type="application/dicom"``
    (PS3.18 8.7.3.5.2): a UID, or ``*``; Explicit VR Little Endian by default."""
    for media in ranges:
        if media.type == MULTIPART_RELATED:
            related = media.related_type
            if related not in (None, DICOM, "application/*", "*/*"):
                continue
        elif media.type not in ("*/*", "multipart/*"):
            continue
        syntax = (media.transfer_syntax or EXPLICIT_VR_LITTLE_ENDIAN).strip()
        if syntax != ANY and uid_problem(syntax) is not None:
            continue
        return syntax
    raise not_acceptable(ranges, [f'{MULTIPART_RELATED}; type="{DICOM}"'])


async def retrieve_instances(request: Request) -> Response:
    """Retrieve Study / Series / Instance (PS3.18 10.4.1.1.1-3)."""
    names = [n for n in ("study", "series", "instance") if n in request.path_params]
    uids = path_uids(request, *names)
    syntax = _dicom_syntax(accepted(request))
    if deidentified_only(request):  # role researcher: de-identified copies only
        return await retrieve_deidentified(request, uids, syntax)
    archive = archive_of(request)
    found = await blocking(retrieval.instances_of, archive, *uids)
    instances = [instance for instance, _ in found]
    refuse_untranscodable(instances, syntax)
    etag = instances_tag(instances, f"{DICOM};{syntax}")
    cached = not_modified(request, etag)
    if cached is not None:
        return cached
    audit_retrieve(request, instances)  # Instances Transferred, per study (PS3.15 A.5.3.7)
    boundary = new_boundary()
    params = {} if syntax == ANY else {"transfer_syntax": syntax}
    as_stored = all(syntax in (ANY, i.transfer_syntax_uid) for i in instances)
    heads = [
        part_head(
            boundary,
            f"{DICOM}; transfer-syntax={i.transfer_syntax_uid}",
            {"Content-Length": str(i.size)},
        )
        for i in instances
    ]

    def load(instance: StoredInstance, prefix: bytes) -> bytes | bytearray | BinaryIO:
        """In the pool: ``prefix`` + the whole stored file when small (read straight into
        one buffer: no copy on the loop), else the open file."""
        fp = retrieval.open_blob(archive, instance)
        try:
            size = os.fstat(fp.fileno()).st_size
            if size != instance.size:
                # The Content-Length promised the indexed size: cut the response rather
                # than send a corrupt body; `dicomvault verify` reports the blob.
                raise OSError(
                    f"blob of {instance.sop_instance_uid} is {size} bytes, "
                    f"the index says {instance.size}"
                )
            if size > WHOLE_FILE:
                return fp
            data = bytearray(len(prefix) + size)
            data[: len(prefix)] = prefix
            view = memoryview(data)[len(prefix) :]
            fd = fp.fileno()  # not read through the buffer yet: position 0
            while view:
                n = os.readv(fd, [view])
                if not n:
                    raise OSError(f"blob of {instance.sop_instance_uid} shrank while read")
                view = view[n:]
            _zero_preamble(memoryview(data)[len(prefix) :])
        except BaseException:
            fp.close()
            raise
        fp.close()
        return data

    async def body() -> AsyncIterator[bytes | memoryview]:
        # Each write is one chunk with the part's head (and the previous part's end)
        # glued on: separate small writes meet delayed ACKs and stall ~40 ms each. The
        # next instance is read in the pool while this one is sent, one pool hop each.
        lead = b""
        loaded: asyncio.Future[bytes | bytearray | BinaryIO] | None = None
        try:
            for index, instance in enumerate(instances):
                stored = instance.transfer_syntax_uid
                if syntax not in (ANY, stored):
                    data = await blocking(retrieval.transcoded_file, archive, instance, syntax)
                    yield (
                        lead
                        + part_head(
                            boundary,
                            f"{DICOM}; transfer-syntax={syntax}",
                            {"Content-Length": str(len(data))},
                        )
                        + data
                    )
                    lead = PART_END
                    continue
                if loaded is None:
                    loaded = asyncio.ensure_future(blocking(load, instance, lead + heads[index]))
                content = await loaded
                loaded = None
                following = instances[index + 1] if index + 1 < len(instances) else None
                if following is not None and syntax in (ANY, following.transfer_syntax_uid):
                    prefix = PART_END + heads[index + 1]
                    loaded = asyncio.ensure_future(blocking(load, following, prefix))
                if isinstance(content, bytes | bytearray):
                    yield memoryview(content)  # lead and part head included; no copy
                else:
                    lead += heads[index]
                    try:
                        async for chunk in file_chunks(content):
                            if lead:  # the first chunk: the file's preamble
                                first = bytearray(chunk)
                                _zero_preamble(memoryview(first))
                                chunk = bytes(first)
                            yield lead + chunk
                            lead = b""
                    finally:
                        content.close()
                lead = PART_END
            yield lead + closing(boundary)
        except OSError as exc:
            log.error("WADO-RS response cut: %s", exc)
            raise
        finally:
            if loaded is not None:
                await asyncio.wait([loaded])
                if not loaded.cancelled() and loaded.exception() is None:
                    leftover = loaded.result()
                    if not isinstance(leftover, bytes | bytearray):
                        leftover.close()

    headers = cache_headers(etag)
    if as_stored:
        # Sizes are known from the index: a Content-Length spares the client chunked
        # decoding and lets it show progress.
        total = sum(len(h) + i.size + len(PART_END) for h, i in zip(heads, instances, strict=True))
        headers["Content-Length"] = str(total + len(closing(boundary)))
        zc = zero_copy(request.scope)
        if zc is not None:
            return _ZeroCopyInstances(
                zc, archive, instances, heads, boundary,
                media_type=multipart_type(DICOM, boundary, **params), headers=headers,
            )  # fmt: skip
    return StreamingResponse(
        body(),
        media_type=multipart_type(DICOM, boundary, **params),
        headers=headers,
    )


class _ZeroCopyInstances(Response):
    """The as-stored answer with each file sent by ``sendfile`` (web/zerocopy.py): the
    response head and the closing delimiter through ASGI, each part (head, zeroed
    preamble, file) straight to the socket from the pool."""

    def __init__(
        self,
        zc: ZeroCopy,
        archive: Archive,
        instances: Sequence[StoredInstance],
        heads: list[bytes],
        boundary: str,
        *,
        media_type: str,
        headers: dict[str, str],
    ) -> None:
        super().__init__(None, media_type=media_type, headers=headers)
        self._zc = zc
        self._archive = archive
        self._instances = instances
        self._heads = heads
        self._boundary = boundary

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        parts = [
            Part10(
                (PART_END if index else b"") + self._heads[index],
                functools.partial(retrieval.open_blob, self._archive, instance),
                instance.size,
                instance.sop_instance_uid,
            )
            for index, instance in enumerate(self._instances)
        ]
        try:
            await self._zc.send_parts(parts)
        except (BrokenPipeError, ConnectionResetError):
            log.info("WADO-RS client went away during the answer")
            return
        except OSError as exc:
            log.error("WADO-RS response cut: %s", exc)
            raise
        await send(
            {"type": "http.response.body", "body": PART_END + closing(self._boundary),
             "more_body": False}
        )  # fmt: skip


# -- metadata (PS3.18 10.4.1.1.2) -------------------------------------------------------


async def retrieve_metadata(request: Request) -> Response:
    """Retrieve Study / Series / Instance Metadata (PS3.18 10.4.1.1.2): the DICOM JSON
    of each instance (PS3.18 F.2) as stored in the index, BulkDataURIs made absolute."""
    names = [n for n in ("study", "series", "instance") if n in request.path_params]
    uids = path_uids(request, *names)
    ranges = accepted(request)
    media_type = _json_type(ranges)
    archive = archive_of(request)
    found = await blocking(retrieval.instances_of, archive, *uids, with_metadata=True)
    base = base_url(request)
    etag = instances_tag([i for i, _ in found], f"{media_type};{base}")
    cached = not_modified(request, etag)
    if cached is not None:
        return cached
    audit_retrieve(request, [i for i, _ in found], accessed=True)  # PS3.15 A.5.3.6
    escaped = json.dumps(base)[1:-1]
    parts = []
    for instance, text in found:
        assert text is not None
        if _ITEMS in text:
            url = instance_url(
                escaped,
                instance.study_instance_uid,
                instance.series_instance_uid,
                instance.sop_instance_uid,
            )
            text = text.replace(_ITEMS, f'"BulkDataURI":"{url}/bulkdata/')
        parts.append(text)
    if media_type == DICOM_XML:
        # PS3.18 8.7.2 / PS3.19 A.1: one Native DICOM Model document per instance.
        boundary = new_boundary()
        documents = await blocking(native_xml_many, [json.loads(text) for text in parts])
        xml = b"".join(part_head(boundary, DICOM_XML) + d + PART_END for d in documents)
        return Response(
            xml + closing(boundary),
            media_type=multipart_type(DICOM_XML, boundary),
            headers=cache_headers(etag),
        )
    body = ("[" + ",".join(parts) + "]").encode("utf-8")
    return Response(body, media_type=media_type, headers=cache_headers(etag))


def _json_type(ranges: list[MediaRange]) -> str:
    """The metadata representation: DICOM JSON (also as ``application/json``) or
    ``multipart/related; type="application/dicom+xml"`` (PS3.18 8.7.2)."""
    for media in ranges:
        if media.type == MULTIPART_RELATED:
            if media.related_type == DICOM_XML:
                return DICOM_XML
            continue
        if media.matches(DICOM_JSON):
            return DICOM_JSON
        if media.matches(JSON):
            return JSON
    raise not_acceptable(ranges, [DICOM_JSON, JSON, f'{MULTIPART_RELATED}; type="{DICOM_XML}"'])


STUDY = "/studies/{study}"
SERIES = STUDY + "/series/{series}"
INSTANCE = SERIES + "/instances/{instance}"


def routes() -> list[BaseRoute]:
    """The WADO-RS routes of whole instances and metadata (PS3.18 Table 10.4.1-1); frames
    and bulk data are :func:`dicomvault.web.wado_frames.routes`."""
    return [
        Route(STUDY, retrieve_instances, methods=["GET"]),
        Route(SERIES, retrieve_instances, methods=["GET"]),
        Route(INSTANCE, retrieve_instances, methods=["GET"]),
        Route(STUDY + "/metadata", retrieve_metadata, methods=["GET"]),
        Route(SERIES + "/metadata", retrieve_metadata, methods=["GET"]),
        Route(INSTANCE + "/metadata", retrieve_metadata, methods=["GET"]),
    ]
