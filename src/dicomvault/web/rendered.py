"""WADO-RS rendered and thumbnail resources (PS3.18 10.4.1.1.3, 10.4.1.1.4; rendering
query parameters PS3.18 8.3.5.1; Rendered Media Types 8.7.4).

Resources (all ``GET`` under ``/dicom-web``)::

    /studies/{s}/rendered                                      every image of the study
    /studies/{s}/series/{r}/rendered                           every image of the series
    /studies/{s}/series/{r}/instances/{i}/rendered             the instance (frame 1)
    /studies/{s}/series/{r}/instances/{i}/frames/{list}/rendered   the frames listed
    /studies/{s}/thumbnail, …/series/{r}/thumbnail, …/instances/{i}/thumbnail,
    …/frames/{f}/thumbnail                                     one small representative image

What is returned:

- a single image (``image/jpeg`` by default, or ``image/png``) for an instance, one
  frame, and every thumbnail. A multi-frame instance's rendered representation in these
  single-frame media types is its first frame (the GIF/video media types that carry all
  frames, PS3.18 Table 8.7.4-1, are not offered); its frames are rendered through
  ``…/frames/{list}/rendered``;
- ``multipart/related; type="image/jpeg"`` (or ``image/png``) with one part per rendered
  image for a study, a series, and a frame list of more than one frame: PS3.18 defines
  these resources as containing the rendered representations of all their instances
  (frames), and a multipart payload (8.7.1.3) is how one response carries several. Each
  part has ``Content-Location`` naming the single-image resource it renders. Instances
  that are not images (SR, presentation states …) are not part of it; the order is
  series by Series Number, then instances by Instance Number.

Thumbnails (PS3.18 10.4.1.1.4 leaves the choice of content to the origin server): an
instance's thumbnail is its middle frame; a series' is its middle image by Instance
Number (its middle frame when multi-frame); a study's is that of its first series by
Series Number that holds images. Without ``viewport`` a thumbnail fits in 128×128 (never
enlarged).

Status codes (PS3.18 10.4.3, Table 10.4.3-1 lists 400, 404, 406): 400 for malformed UIDs,
parameters and frame numbers (the body names the parameter); 404 for unknown or
mismatched UIDs; 406 when none of the acceptable media types can be produced — including
when the resource holds no image or its pixel data cannot be decoded here (e.g. a
compression no installed codec supports), the body's ``reason`` says which. A 304 answers
``If-None-Match`` with the current ETag: the ETag covers the stored bytes (SHA-256),
the frames and the normalised parameters and media type; responses are ``private,
no-cache`` because an instance can be overwritten in place (``storage.duplicates =
"overwrite"``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from dicomvault.archive import Archive
from dicomvault.dicom.render import (
    DEFAULT_QUALITY,
    JPEG,
    MEDIA_TYPES,
    WINDOW_FUNCTIONS,
    CannotDecode,
    FrameOutOfRange,
    NoPixelData,
    RegionOutsideImage,
    RenderError,
    StoredImage,
    Viewport,
    Window,
    render,
)
from dicomvault.model.attributes import BY_KEYWORD
from dicomvault.model.errors import NotFound
from dicomvault.model.query import InformationModel, Level, Query, QueryKey
from dicomvault.model.records import StoredInstance
from dicomvault.web.audit_api import audit_retrieve
from dicomvault.web.caching import cache_headers, entity_tag, not_modified
from dicomvault.web.common import archive_of, base_url, blocking, instance_url, path_uid
from dicomvault.web.errors import HTTPProblem
from dicomvault.web.media import MULTIPART_RELATED, MediaRange, accepted, not_acceptable
from dicomvault.web.multipart import PART_END, closing, multipart_type, new_boundary, part_head

log = logging.getLogger("dicomvault.http.rendered")

#: The box a thumbnail fits in when the request has no ``viewport``.
THUMBNAIL_SIZE: Final = 128

# -- query parameters (PS3.18 8.3.5.1) ---------------------------------------------------


@dataclass(frozen=True)
class Rendering:
    """The checked rendering parameters of one request."""

    window: Window | None
    viewport: Viewport | None
    quality: int

    def key(self) -> str:
        """A canonical text of the parameters, for the ETag."""
        return f"{self.window!r}|{self.viewport!r}|q={self.quality}"


def _single(request: Request, name: str) -> str | None:
    values = request.query_params.getlist(name)
    if not values:
        return None
    if len(values) > 1:
        raise HTTPProblem(400, f"{name}: given {len(values)} times, at most once", parameter=name)
    return values[0]


def _number(text: str, name: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise HTTPProblem(400, f"{name}: {what} {text!r} is not a number", parameter=name) from None
    if value != value or value in (float("inf"), float("-inf")):
        raise HTTPProblem(400, f"{name}: {what} {text!r} is not a finite number", parameter=name)
    return value


def _integer(text: str, name: str, what: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise HTTPProblem(
            400, f"{name}: {what} {text!r} is not an integer", parameter=name
        ) from None


def parse_window(text: str) -> Window:
    """``window=center,width,function`` (PS3.18 8.3.5.1.4; the function defaults to
    ``linear`` when left out). Width must be > 0, and ≥ 1 for ``linear`` (PS3.3
    C.11.2.1.2.1)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 3):
        raise HTTPProblem(400, f"window: {text!r} is not center,width,function", parameter="window")
    center = _number(parts[0], "window", "center")
    width = _number(parts[1], "window", "width")
    name = parts[2].lower() if len(parts) == 3 else "linear"
    function = WINDOW_FUNCTIONS.get(name)
    if function is None:
        raise HTTPProblem(
            400,
            f"window: function {parts[2]!r} is not one of {', '.join(WINDOW_FUNCTIONS)}",
            parameter="window",
        )
    if width <= 0 or (function == "LINEAR" and width < 1):
        least = "at least 1" if function == "LINEAR" else "greater than 0"
        raise HTTPProblem(
            400, f"window: width {parts[1]} must be {least} for {name}", parameter="window"
        )
    return Window(center, width, function)


def parse_viewport(text: str) -> Viewport:
    """``viewport=vw,vh[,sx,sy,sw,sh]`` (PS3.18 8.3.5.1.3): ``vw``, ``vh`` positive;
    ``sx``, ``sy`` not negative, ``sw``, ``sh`` not zero (negative flips); any of the
    last four may be empty for its default."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 6):
        raise HTTPProblem(
            400, f"viewport: {text!r} is not vw,vh or vw,vh,sx,sy,sw,sh", parameter="viewport"
        )
    vw = _integer(parts[0], "viewport", "vw")
    vh = _integer(parts[1], "viewport", "vh")
    if vw <= 0 or vh <= 0:
        raise HTTPProblem(400, f"viewport: {vw}×{vh} must be at least 1×1", parameter="viewport")
    if len(parts) == 2:
        return Viewport(vw, vh)
    names = ("sx", "sy", "sw", "sh")
    region = [
        _integer(p, "viewport", n) if p else None for p, n in zip(parts[2:], names, strict=True)
    ]
    sx, sy, sw, sh = region
    if (sx is not None and sx < 0) or (sy is not None and sy < 0):
        raise HTTPProblem(400, "viewport: sx and sy must not be negative", parameter="viewport")
    if sw == 0 or sh == 0:
        raise HTTPProblem(400, "viewport: sw and sh must not be 0", parameter="viewport")
    return Viewport(vw, vh, sx, sy, sw, sh)


def parse_quality(text: str) -> int:
    """``quality=1..100`` (PS3.18 8.3.5.1.2)."""
    value = _integer(text, "quality", "value")
    if not 1 <= value <= 100:
        raise HTTPProblem(400, f"quality: {value} is not between 1 and 100", parameter="quality")
    return value


def rendering_of(request: Request) -> Rendering:
    """The rendering parameters of ``request``, checked. Parameters PS3.18 defines that
    this server does not implement (``annotation``, ``charset``, ``iccprofile``,
    ``presentation…``) are ignored, as PS3.18 8.3.5.1 allows an origin server to."""
    window = _single(request, "window")
    viewport = _single(request, "viewport")
    quality = _single(request, "quality")
    return Rendering(
        window=parse_window(window) if window is not None else None,
        viewport=parse_viewport(viewport) if viewport is not None else None,
        quality=parse_quality(quality) if quality is not None else DEFAULT_QUALITY,
    )


def parse_frames(text: str) -> list[int]:
    """A frame list ``1,3,5`` (PS3.18 8.3.4.1 / 10.4.1.1.3): positive integers."""
    frames: list[int] = []
    for piece in text.split(","):
        try:
            frame = int(piece.strip())
        except ValueError:
            raise HTTPProblem(
                400, f"frame {piece.strip()!r} is not a frame number", parameter="frame"
            ) from None
        if frame < 1:
            raise HTTPProblem(
                400, f"frame {frame}: frame numbers start at 1", parameter="frame", frame=frame
            )
        frames.append(frame)
    return frames


# -- media types ----------------------------------------------------------------------


def negotiate(request: Request, *, several: bool) -> str:
    """The Rendered Media Type to answer with (PS3.18 8.3.3): ``image/jpeg`` (the
    default) or ``image/png``. For resources of several images, ``multipart/related;
    type=…`` ranges also select the type of the parts.

    Raises
    ------
    HTTPProblem
        406 naming what was asked and what is available.
    """
    ranges = accepted(request)
    inner: list[MediaRange] = []
    for media_range in ranges:
        if media_range.type == MULTIPART_RELATED:
            if several:
                inner.append(MediaRange(media_range.related_type or JPEG, q=media_range.q))
            continue
        inner.append(media_range)
    for media_range in inner:
        for media_type in MEDIA_TYPES:
            if media_range.matches(media_type):
                return media_type
    raise not_acceptable(ranges, list(MEDIA_TYPES))


def _render_problem(exc: RenderError) -> HTTPProblem:
    if isinstance(exc, FrameOutOfRange):
        return HTTPProblem(400, str(exc), parameter="frame", frame=exc.frame)
    if isinstance(exc, RegionOutsideImage):
        return HTTPProblem(400, str(exc), parameter="viewport")
    reason = "not-an-image" if isinstance(exc, NoPixelData) else "cannot-decode"
    assert isinstance(exc, NoPixelData | CannotDecode)
    return HTTPProblem(
        406,
        f"cannot render as an image: {exc}",
        reason=reason,
        available=[],
    )


# -- selecting instances through the archive ------------------------------------------


def _key(keyword: str, value: str = "") -> QueryKey:
    attribute = BY_KEYWORD[keyword]
    return QueryKey(attribute.tag, attribute.keyword, attribute.vr, value)


@dataclass(frozen=True)
class _Image:
    stored: StoredInstance
    frames: int | None  # Number of Frames from the index (None: single frame)


def instance_in(archive: Archive, study: str, series: str, instance: str) -> StoredInstance:
    """The instance, when it belongs to that study and series (PS3.18 10.4.1: the path
    names the hierarchy).

    Raises
    ------
    NotFound
    """
    stored = archive.get_instance(instance)
    if stored.study_instance_uid != study or stored.series_instance_uid != series:
        raise NotFound(f"no instance {instance} in series {series} of study {study}")
    return stored


def images_of(archive: Archive, study: str, series: str | None) -> list[_Image]:
    """The image instances of a study or series, series by Series Number, then by
    Instance Number (storage order breaks ties and orders what has no number).

    Raises
    ------
    NotFound
        No such study / series.
    """
    keys = [_key("StudyInstanceUID", study)]
    if series is not None:
        keys.append(_key("SeriesInstanceUID", series))
    level = Level.STUDY if series is None else Level.SERIES
    stored = archive.retrieve_instances(Query(InformationModel.STUDY_ROOT, level, tuple(keys)))
    if not stored:
        what = f"series {series} in study {study}" if series else f"study {study}"
        raise NotFound(f"no {what}")
    image_keys = (
        _key("StudyInstanceUID", study),
        _key("SeriesInstanceUID", series or ""),
        _key("SeriesNumber"),
        _key("SOPInstanceUID"),
        _key("InstanceNumber"),
        _key("Rows"),
        _key("NumberOfFrames"),
    )
    found: dict[str, tuple[object, object, object, object]] = {}
    with archive.find(Query(InformationModel.STUDY_ROOT, Level.IMAGE, image_keys)) as matches:
        for match in matches:
            values = match.values
            found[str(values[BY_KEYWORD["SOPInstanceUID"].tag])] = (
                values.get(BY_KEYWORD["SeriesNumber"].tag),
                values.get(BY_KEYWORD["InstanceNumber"].tag),
                values.get(BY_KEYWORD["Rows"].tag),
                values.get(BY_KEYWORD["NumberOfFrames"].tag),
            )
    series_rank: dict[str, int] = {}
    for item in stored:
        series_rank.setdefault(item.series_instance_uid, len(series_rank))

    def number(value: object) -> float:
        return float(value) if isinstance(value, int) else float("inf")

    def order(pair: tuple[int, StoredInstance]) -> tuple[float, int, float, int]:
        position, item = pair
        series_number, instance_number, _, _ = found.get(item.sop_instance_uid, (None,) * 4)
        return (
            number(series_number),
            series_rank[item.series_instance_uid],
            number(instance_number),
            position,
        )

    images: list[_Image] = []
    for _, item in sorted(enumerate(stored), key=order):
        entry = found.get(item.sop_instance_uid)
        # An instance the capped C-FIND did not list is tried; rendering skips it if it
        # turns out not to be an image.
        if entry is not None and entry[2] is None:
            continue
        frames = entry[3] if entry is not None and isinstance(entry[3], int) else None
        images.append(_Image(item, frames))
    return images


def representative(images: list[_Image]) -> _Image:
    """The thumbnail's instance: the middle image of the first series with images."""
    first_series = images[0].stored.series_instance_uid
    of_series = [image for image in images if image.stored.series_instance_uid == first_series]
    return of_series[(len(of_series) - 1) // 2]


def middle_frame(frames: int) -> int:
    return (frames + 1) // 2


# -- rendering off the event loop -------------------------------------------------------


def render_frames(
    archive: Archive,
    stored: StoredInstance,
    frames: list[int] | None,
    media_type: str,
    rendering: Rendering,
    *,
    thumbnail: bool = False,
) -> list[bytes]:
    """Render ``frames`` of one instance (``None``: its middle frame, for thumbnails).

    Raises
    ------
    RenderError
    """
    with archive.open_instance(stored.sop_instance_uid) as stream:
        image = StoredImage(stream)
        wanted = frames if frames is not None else [middle_frame(image.number_of_frames)]
        for frame in wanted:
            image.check_frame(frame)
        return [_render(image, frame, media_type, rendering, thumbnail) for frame in wanted]


def _render(
    image: StoredImage, frame: int, media_type: str, rendering: Rendering, thumbnail: bool
) -> bytes:
    viewport = rendering.viewport
    if thumbnail and viewport is None:
        viewport = Viewport(THUMBNAIL_SIZE, THUMBNAIL_SIZE)
    return render(
        image,
        frame,
        media_type,
        window=rendering.window,
        viewport=viewport,
        quality=rendering.quality,
        upscale=not (thumbnail and rendering.viewport is None),
    )


def _first_renderable(
    archive: Archive, images: list[_Image], media_type: str, rendering: Rendering
) -> tuple[int, bytes]:
    """The index and rendering of the first image of ``images`` that renders, so that a
    study or series none of whose images render is refused with a status, not an empty
    multipart body.

    Raises
    ------
    RenderError
        The first image's error, when none renders.
    """
    first_error: RenderError | None = None
    for position, image in enumerate(images):
        try:
            return position, render_frames(archive, image.stored, [1], media_type, rendering)[0]
        except (NoPixelData, CannotDecode) as exc:
            first_error = first_error or exc
    assert first_error is not None
    raise first_error


# -- handlers ---------------------------------------------------------------------------


def _image_response(body: bytes, media_type: str, etag: str) -> Response:
    return Response(body, media_type=media_type, headers=cache_headers(etag))


def _multipart(parts: Iterator[tuple[bytes, str]], media_type: str, etag: str) -> StreamingResponse:
    boundary = new_boundary()

    def body() -> Iterator[bytes]:
        for payload, location in parts:
            yield part_head(boundary, media_type, {"Content-Location": location})
            yield payload + PART_END
        yield closing(boundary)

    # A sync iterator: Starlette runs each step in the thread pool, so rendering the
    # next part never blocks the event loop.
    return StreamingResponse(
        body(),
        media_type=multipart_type(media_type, boundary),
        headers=cache_headers(etag),
    )


async def _instance_common(request: Request, *, thumbnail: bool, frame_list: bool) -> Response:
    study = path_uid(request, "study", "StudyInstanceUID")
    series = path_uid(request, "series", "SeriesInstanceUID")
    instance = path_uid(request, "instance", "SOPInstanceUID")
    frames: list[int] | None = None
    if frame_list:
        frames = parse_frames(request.path_params["frames"])
        if thumbnail and len(frames) != 1:
            raise HTTPProblem(400, "a frame thumbnail takes one frame number", parameter="frame")
    elif not thumbnail:
        frames = [1]
    rendering = rendering_of(request)
    media_type = negotiate(request, several=frames is not None and len(frames) > 1)
    archive = archive_of(request)
    stored = await blocking(instance_in, archive, study, series, instance)
    kind = "thumbnail" if thumbnail else "rendered"
    frames_key = ",".join(map(str, frames)) if frames is not None else "middle"
    etag = entity_tag(kind, stored.sha256, frames_key, rendering.key(), media_type)
    if (cached := not_modified(request, etag)) is not None:
        return cached
    try:
        bodies = await blocking(
            render_frames, archive, stored, frames, media_type, rendering, thumbnail=thumbnail
        )
    except RenderError as exc:
        raise _render_problem(exc) from exc
    # Instances Transferred, action R (PS3.15 A.5.3.7): the instance's pixel data leaves
    # the archive, rendered. Queued: nothing is waited on.
    audit_retrieve(request, [stored])
    if len(bodies) == 1:
        return _image_response(bodies[0], media_type, etag)
    assert frames is not None
    url = instance_url(base_url(request), study, series, instance)
    return _multipart(
        (
            (body, f"{url}/frames/{frame}/rendered")
            for body, frame in zip(bodies, frames, strict=True)
        ),
        media_type,
        etag,
    )


async def rendered_instance(request: Request) -> Response:
    """Retrieve a rendered instance (PS3.18 10.4.1.1.3): frame 1 as image/jpeg or
    image/png.

    Query parameters ``window``, ``viewport``, ``quality``, ``accept`` (PS3.18 8.3.5.1).
    """
    return await _instance_common(request, thumbnail=False, frame_list=False)


async def rendered_frames(request: Request) -> Response:
    """Retrieve rendered frames (PS3.18 10.4.1.1.3): one frame as an image, several as
    multipart/related of images.

    Query parameters ``window``, ``viewport``, ``quality``, ``accept`` (PS3.18 8.3.5.1).
    """
    return await _instance_common(request, thumbnail=False, frame_list=True)


async def instance_thumbnail(request: Request) -> Response:
    """Retrieve an instance thumbnail (PS3.18 10.4.1.1.4): its middle frame, fitting in
    128×128 unless ``viewport`` says otherwise."""
    return await _instance_common(request, thumbnail=True, frame_list=False)


async def frame_thumbnail(request: Request) -> Response:
    """Retrieve a frame thumbnail (PS3.18 10.4.1.1.4): that frame, fitting in 128×128
    unless ``viewport`` says otherwise."""
    return await _instance_common(request, thumbnail=True, frame_list=True)


async def _collection(request: Request, *, series_level: bool, thumbnail: bool) -> Response:
    study = path_uid(request, "study", "StudyInstanceUID")
    series = path_uid(request, "series", "SeriesInstanceUID") if series_level else None
    rendering = rendering_of(request)
    media_type = negotiate(request, several=not thumbnail)
    archive = archive_of(request)
    images = await blocking(images_of, archive, study, series)
    if not images:
        what = "series" if series_level else "study"
        raise HTTPProblem(
            406,
            f"cannot render as an image: the {what} holds no image",
            reason="not-an-image",
            available=[],
        )
    if thumbnail:
        chosen = representative(images)
        etag = entity_tag("thumbnail", chosen.stored.sha256, "middle", rendering.key(), media_type)
        if (cached := not_modified(request, etag)) is not None:
            return cached
        try:
            bodies = await blocking(
                render_frames,
                archive,
                chosen.stored,
                None,
                media_type,
                rendering,
                thumbnail=True,
            )
        except RenderError as exc:
            raise _render_problem(exc) from exc
        audit_retrieve(request, [chosen.stored])  # Instances Transferred, R (A.5.3.7)
        return _image_response(bodies[0], media_type, etag)
    etag = entity_tag(
        "rendered", *(image.stored.sha256 for image in images), rendering.key(), media_type
    )
    if (cached := not_modified(request, etag)) is not None:
        return cached
    try:
        start, first = await blocking(_first_renderable, archive, images, media_type, rendering)
    except RenderError as exc:
        raise _render_problem(exc) from exc
    # Instances Transferred, action R (PS3.15 A.5.3.7), for the images of the answer.
    audit_retrieve(request, [image.stored for image in images[start:]])
    base = base_url(request)

    def location(image: _Image) -> str:
        s = image.stored
        return instance_url(base, s.study_instance_uid, s.series_instance_uid, s.sop_instance_uid)

    def parts() -> Iterator[tuple[bytes, str]]:
        yield first, location(images[start]) + "/rendered"
        for image in images[start + 1 :]:
            try:
                body = render_frames(archive, image.stored, [1], media_type, rendering)[0]
            except (RenderError, NotFound) as exc:
                # Deleted meanwhile, or not renderable: not part of the rendered
                # representation (the headers are already sent).
                log.warning("rendered: skipping %s: %s", image.stored.sop_instance_uid, exc)
                continue
            yield body, location(image) + "/rendered"

    return _multipart(parts(), media_type, etag)


async def rendered_study(request: Request) -> Response:
    """Retrieve a rendered study (PS3.18 10.4.1.1.3): multipart/related of every image of
    the study rendered (frame 1 of each).

    Query parameters ``window``, ``viewport``, ``quality``, ``accept`` (PS3.18 8.3.5.1).
    """
    return await _collection(request, series_level=False, thumbnail=False)


async def rendered_series(request: Request) -> Response:
    """Retrieve a rendered series (PS3.18 10.4.1.1.3): multipart/related of every image of
    the series rendered (frame 1 of each).

    Query parameters ``window``, ``viewport``, ``quality``, ``accept`` (PS3.18 8.3.5.1).
    """
    return await _collection(request, series_level=True, thumbnail=False)


async def study_thumbnail(request: Request) -> Response:
    """Retrieve a study thumbnail (PS3.18 10.4.1.1.4): the middle image of its first
    series, fitting in 128×128 unless ``viewport`` says otherwise."""
    return await _collection(request, series_level=False, thumbnail=True)


async def series_thumbnail(request: Request) -> Response:
    """Retrieve a series thumbnail (PS3.18 10.4.1.1.4): its middle image, fitting in
    128×128 unless ``viewport`` says otherwise."""
    return await _collection(request, series_level=True, thumbnail=True)


def routes() -> list[BaseRoute]:
    instance = "/studies/{study}/series/{series}/instances/{instance}"
    return [
        Route("/studies/{study}/rendered", rendered_study, methods=["GET"]),
        Route("/studies/{study}/thumbnail", study_thumbnail, methods=["GET"]),
        Route("/studies/{study}/series/{series}/rendered", rendered_series, methods=["GET"]),
        Route("/studies/{study}/series/{series}/thumbnail", series_thumbnail, methods=["GET"]),
        Route(f"{instance}/rendered", rendered_instance, methods=["GET"]),
        Route(f"{instance}/thumbnail", instance_thumbnail, methods=["GET"]),
        Route(f"{instance}/frames/{{frames}}/rendered", rendered_frames, methods=["GET"]),
        Route(f"{instance}/frames/{{frames}}/thumbnail", frame_thumbnail, methods=["GET"]),
    ]
