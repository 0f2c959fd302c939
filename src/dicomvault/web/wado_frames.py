"""WADO-RS frames and bulk data (PS3.18 10.4.1.1.5-6, 8.7.3.3): the pixel-level
resources of an instance, ``…/instances/{i}/frames/{list}`` and
``…/instances/{i}/bulkdata/{path}``; the whole-instance resources and metadata are in
:mod:`dicomvault.web.wado`, whose module docstring gives the transfer-syntax rules both
follow.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from dicomvault.archive import retrieval
from dicomvault.dicom.bulkdata import BadBulkDataPath
from dicomvault.dicom.frames import (
    COMPRESSED_MEDIA_TYPES,
    FrameOutOfRange,
    NoPixelData,
    can_decode,
    check_numbers,
)
from dicomvault.model.digits import ascii_digits
from dicomvault.model.errors import CannotParse
from dicomvault.model.records import StoredInstance
from dicomvault.web.audit_api import audit_retrieve
from dicomvault.web.caching import cache_headers, instances_tag, not_modified
from dicomvault.web.common import (
    archive_of,
    blocking,
)
from dicomvault.web.errors import HTTPProblem
from dicomvault.web.media import (
    MULTIPART_RELATED,
    OCTET_STREAM,
    MediaRange,
    accepted,
    not_acceptable,
)
from dicomvault.web.multipart import PART_END, closing, multipart_type, new_boundary, part_head
from dicomvault.web.wado import (
    ANY,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IN_ONE_WRITE,
    INSTANCE,
    file_chunks,
    path_uids,
)

# -- frames and bulk data (PS3.18 10.4.1.1.5-6, 8.7.3.3) ----------------------------------


@dataclass(frozen=True)
class _FrameAnswer:
    """How frames go out: decompressed or as stored, under which media type."""

    decode: bool
    media_type: str
    syntax: str
    multipart: bool


def _related(media: MediaRange) -> tuple[MediaRange, bool] | None:
    """The range for the parts and whether it asks for multipart; ``None`` when the
    range cannot hold frames."""
    if media.type == MULTIPART_RELATED:
        related = media.related_type or OCTET_STREAM
        return MediaRange(related, {k: v for k, v in media.params.items() if k != "type"}), True
    if media.type in ("*/*", "multipart/*"):
        return MediaRange("*/*", dict(media.params)), True
    return media, False


def _frame_answer(
    ranges: list[MediaRange], stored: str, encapsulated: bool, single: bool
) -> _FrameAnswer:
    """Negotiate frames (PS3.18 8.7.3.3, Tables 8.7.3-4 and -5); see the module
    docstring. ``single``: one frame asked, so a single-part answer is possible."""
    compressed_types = COMPRESSED_MEDIA_TYPES.get(stored, ())
    for media in ranges:
        found = _related(media)
        if found is None:
            continue
        part, multipart = found
        if not multipart and not single:
            continue
        wanted = part.transfer_syntax
        if not encapsulated:
            if part.matches(OCTET_STREAM) and wanted in (None, ANY, EXPLICIT_VR_LITTLE_ENDIAN):
                return _FrameAnswer(False, OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN, multipart)
            continue
        for compressed in compressed_types:
            if part.matches(compressed) and wanted in (None, ANY, stored):
                named = part.type if part.type in compressed_types else compressed
                return _FrameAnswer(False, named, stored, multipart)
        if part.type == OCTET_STREAM and wanted in (ANY, stored):
            return _FrameAnswer(False, OCTET_STREAM, stored, multipart)
        decodable = wanted in (None, EXPLICIT_VR_LITTLE_ENDIAN) and can_decode(stored)
        if part.matches(OCTET_STREAM) and decodable:
            return _FrameAnswer(True, OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN, multipart)
    offered = [f'{MULTIPART_RELATED}; type="{OCTET_STREAM}"']
    offered += [f'{MULTIPART_RELATED}; type="{t}"' for t in compressed_types[:1]]
    raise not_acceptable(ranges, offered)


def _frame_numbers(text: str) -> list[int]:
    """``"1,3,5"`` → ``[1, 3, 5]`` (PS3.18 10.4.1.1.6: a comma-separated list of
    1-based frame numbers).

    Raises
    ------
    HTTPProblem
        400 naming the first item that is not a positive integer.
    """
    numbers: list[int] = []
    for item in text.split(","):
        item = item.strip()
        if not ascii_digits(item) or len(item) > 9 or int(item) < 1:
            raise HTTPProblem(
                400,
                f"frame list {text[:80]!r}: {item[:20]!r} is not a frame number (1 or more)",
                parameter="frames",
            )
        numbers.append(int(item))
    return numbers


async def retrieve_frames(request: Request) -> Response:
    """Retrieve Frames (PS3.18 10.4.1.1.6)."""
    uids = path_uids(request, "study", "series", "instance")
    numbers = _frame_numbers(request.path_params["frames"])
    return await _frames_response(request, uids, numbers, f"frames/{numbers}")


async def _frames_response(
    request: Request, uids: list[str], numbers: list[int] | None, what: str
) -> Response:
    """Frames ``numbers`` (``None``: all) of the instance named by ``uids``."""
    ranges = accepted(request)
    archive = archive_of(request)
    found = await blocking(retrieval.instances_of, archive, *uids)
    instance = found[0][0]
    try:
        layout = await blocking(retrieval.frames_of, archive, instance)
        if numbers is None:
            numbers = list(range(1, layout.frames + 1))
        check_numbers(layout, numbers)
    except NoPixelData as exc:
        raise HTTPProblem(404, f"instance {instance.sop_instance_uid}: {exc}") from None
    except FrameOutOfRange as exc:
        raise HTTPProblem(404, str(exc), frame=exc.number, frames=exc.frames) from None
    except CannotParse as exc:
        raise HTTPProblem(500, f"stored instance {instance.sop_instance_uid}: {exc}") from None
    answer = _frame_answer(
        ranges, layout.transfer_syntax_uid, layout.encapsulated, len(numbers) == 1
    )
    part_type = f"{answer.media_type}; transfer-syntax={answer.syntax}"
    etag = instances_tag([instance], f"{what};{part_type};{answer.multipart}")
    cached = not_modified(request, etag)
    if cached is not None:
        return cached

    async def frame(number: int) -> bytes:
        if answer.decode:
            return await blocking(retrieval.read_decoded_frame, archive, instance, number)
        return await blocking(retrieval.read_stored_frame, archive, instance, layout, number)

    # Decoding may fail on damaged data: do the first frame before answering 200.
    first = await _checked(frame(numbers[0]), instance)
    # Instances Transferred, action R (PS3.15 A.5.3.7): the frames' pixel data leaves
    # the archive. Queued: a viewer's frame-by-frame requests wait on nothing.
    audit_retrieve(request, [instance])
    if not answer.multipart:
        return Response(first, media_type=part_type, headers=cache_headers(etag))
    boundary = new_boundary()
    media_type = multipart_type(answer.media_type, boundary)
    if len(numbers) <= IN_ONE_WRITE:
        # A viewer asks one frame per request: one write for headers and body (a
        # response head then a small body write waits ~40 ms on Nagle + delayed ACK).
        pieces = []
        for position, number in enumerate(numbers):
            data = first if position == 0 else await frame(number)
            pieces += [part_head(boundary, part_type, {"Content-Length": str(len(data))}), data]
            pieces.append(PART_END)
        pieces.append(closing(boundary))
        return Response(b"".join(pieces), media_type=media_type, headers=cache_headers(etag))

    async def body() -> AsyncIterator[bytes]:
        # One write per frame (see retrieve_instances: small writes stall on delayed ACK).
        last = len(numbers) - 1
        for position, number in enumerate(numbers):
            data = first if position == 0 else await frame(number)
            head = part_head(boundary, part_type, {"Content-Length": str(len(data))})
            tail = PART_END + (closing(boundary) if position == last else b"")
            yield b"".join((head, data, tail))

    return StreamingResponse(
        body(),
        media_type=media_type,
        headers=cache_headers(etag),
    )


async def _checked(pending: Awaitable[bytes], instance: StoredInstance) -> bytes:
    try:
        data = await pending
    except CannotParse as exc:
        raise HTTPProblem(500, f"stored instance {instance.sop_instance_uid}: {exc}") from None
    except (ValueError, RuntimeError, NotImplementedError) as exc:
        raise HTTPProblem(
            406,
            f"frames of instance {instance.sop_instance_uid} cannot be decompressed: {exc}",
            available=[f'{MULTIPART_RELATED}; type="{OCTET_STREAM}"; transfer-syntax=*'],
        ) from None
    return data


def _bulk_mode(ranges: list[MediaRange], ranged: bool) -> bool:
    """Whether uncompressed bulk data goes out multipart (PS3.18 8.7.3.3.1: the default)
    or as a single ``application/octet-stream`` body (which takes ``Range``)."""
    for media in ranges:
        wanted = media.transfer_syntax
        if wanted not in (None, ANY, EXPLICIT_VR_LITTLE_ENDIAN):
            continue
        if media.type == MULTIPART_RELATED:
            if MediaRange(media.related_type or OCTET_STREAM).matches(OCTET_STREAM):
                return True
        elif media.type == OCTET_STREAM:
            return False
        elif media.type in ("*/*", "application/*"):
            return not ranged
    raise not_acceptable(ranges, [f'{MULTIPART_RELATED}; type="{OCTET_STREAM}"', OCTET_STREAM])


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """RFC 9110 14.1.2: one ``bytes=`` range → ``(start, end exclusive)``; ``None`` to
    send the whole value (no header, several ranges, or a unit we do not serve).

    Raises
    ------
    HTTPProblem
        416 when the range cannot be satisfied.
    """
    if header is None:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    try:
        if not dash:
            raise ValueError
        if first:
            start = int(first)
            end = int(last) + 1 if last else size
        else:
            start, end = max(size - int(last), 0), size
    except ValueError:
        return None  # RFC 9110 14.2: an invalid Range is ignored
    end = min(end, size)
    if start >= size or start >= end or (not first and int(last) == 0):
        raise HTTPProblem(
            416,
            f"Range {header.strip()!r} is outside the value of {size} bytes",
            headers={"Content-Range": f"bytes */{size}"},
            size=size,
        )
    return start, end


async def retrieve_bulkdata(request: Request) -> Response:
    """Retrieve Bulkdata (PS3.18 10.4.1.1.5, 8.7.3.3): one value, raw little endian bytes;
    the frames of encapsulated Pixel Data."""
    uids = path_uids(request, "study", "series", "instance")
    path: str = request.path_params["path"]
    archive = archive_of(request)
    found = await blocking(retrieval.instances_of, archive, *uids)
    instance = found[0][0]
    try:
        header, value = await blocking(retrieval.bulk_value, archive, instance, path)
    except BadBulkDataPath as exc:
        raise HTTPProblem(400, str(exc), parameter="path") from None
    except CannotParse as exc:
        raise HTTPProblem(500, f"stored instance {instance.sop_instance_uid}: {exc}") from None
    if value.encapsulated:
        return await _frames_response(request, uids, None, f"bulkdata/{path}")
    ranges = accepted(request)
    ranged_header = request.headers.get("range")
    multipart = _bulk_mode(ranges, ranged_header is not None)
    representation = f"bulkdata/{path};{multipart}"
    etag = instances_tag([instance], representation)
    cached = not_modified(request, etag)
    if cached is not None:
        return cached
    audit_retrieve(request, [instance])  # Instances Transferred, R (PS3.15 A.5.3.7); queued
    headers = cache_headers(etag)
    part_type = f"{OCTET_STREAM}; transfer-syntax={EXPLICIT_VR_LITTLE_ENDIAN}"
    direct = not value.deflated and not value.swap
    if multipart:
        data = (
            b"" if direct else await blocking(retrieval.read_bulk, archive, instance, header, value)
        )
        boundary = new_boundary()

        async def parts() -> AsyncIterator[bytes]:
            head = part_head(boundary, part_type, {"Content-Length": str(value.length)})
            if direct:
                fp = await blocking(retrieval.open_blob, archive, instance)
                try:
                    async for chunk in file_chunks(fp, value.offset, value.length):
                        yield head + chunk
                        head = b""
                finally:
                    fp.close()
            else:
                head += data
            yield head + PART_END + closing(boundary)

        return StreamingResponse(
            parts(), media_type=multipart_type(OCTET_STREAM, boundary), headers=headers
        )
    headers["Accept-Ranges"] = "bytes"
    span = _byte_range(ranged_header, value.length)
    start, end = span if span is not None else (0, value.length)
    status = 200
    if span is not None:
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{value.length}"
    headers["Content-Length"] = str(end - start)
    if not direct:
        data = await blocking(retrieval.read_bulk, archive, instance, header, value)
        return Response(data[start:end], status_code=status, media_type=part_type, headers=headers)
    fp = await blocking(retrieval.open_blob, archive, instance)

    async def single() -> AsyncIterator[bytes]:
        try:
            async for chunk in file_chunks(fp, value.offset + start, end - start):
                yield chunk
        finally:
            fp.close()

    return StreamingResponse(single(), status_code=status, media_type=part_type, headers=headers)


def routes() -> list[BaseRoute]:
    """The frames and bulk data routes (PS3.18 Table 10.4.1-1)."""
    return [
        Route(INSTANCE + "/frames/{frames}", retrieve_frames, methods=["GET"]),
        Route(INSTANCE + "/bulkdata/{path:path}", retrieve_bulkdata, methods=["GET"]),
    ]
