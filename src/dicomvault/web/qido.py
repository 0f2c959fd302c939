"""QIDO-RS: the Search transaction of the Studies Service (PS3.18 10.6).

Six resources (PS3.18 Table 10.6.1-1), all ``GET``:

==========================================================  =============  ============
resource                                                    level          query type
==========================================================  =============  ============
``/studies``                                                STUDY          hierarchical
``/studies/{study}/series``                                 SERIES         hierarchical
``/series``                                                 SERIES         relational
``/studies/{study}/series/{series}/instances``              IMAGE          hierarchical
``/studies/{study}/instances``                              IMAGE          relational
``/instances``                                              IMAGE          relational
==========================================================  =============  ============

One matching engine, two front ends: the request becomes a Study Root
:class:`~dicomvault.model.query.Query` (PS3.4 C.6.2) answered by
:meth:`~dicomvault.archive.Archive.find`, exactly as a C-FIND is, so wild cards, ranges,
UID lists, person-name folding and the ``query.max_results`` cap behave the same on both
transports. Query parameters (PS3.18 8.3.4):

- ``{attributeID}={value}`` — keyword (``PatientName``) or tag (``00100010``), a dotted
  path into sequences (``RequestAttributesSequence.RequestedProcedureID``); values with
  the C-FIND matching rules (PS3.4 C.2.2.2); a UID list is comma- (or backslash-)
  separated, or the key repeated (PS3.18 8.3.4.1);
- ``includefield`` — repeatable and comma-separated keywords or tags, or ``all``
  (PS3.18 8.3.4.3); attributes of levels below the resource's are not returned;
- ``fuzzymatching`` — ``true``/``false``; fuzzy semantic matching of person names is not
  implemented, so ``true`` adds the Warning PS3.18 8.3.4.2 prescribes;
- ``limit``/``offset`` — paging (PS3.18 8.3.4.4); without ``limit`` the setting
  ``http.default_limit`` applies (0: up to ``query.max_results``).

Answers (PS3.18 10.6.3): ``application/dicom+json`` (default; also for
``application/json`` and ``*/*``) or ``multipart/related; type="application/dicom+xml"``
with one Native DICOM Model part per match (PS3.19 A.1); anything else is 406. 200 with
the matches, 204 without any (PS3.18 8.3.4.4.1). When more matches exist than were
returned (``limit`` or the server's cap), a ``Warning: 299`` header says so.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from dicomvault.dicom.dicomxml import native_xml
from dicomvault.model.attributes import ATTRIBUTES, BY_KEYWORD, level_of
from dicomvault.model.digits import ascii_digits
from dicomvault.model.query import (
    InformationModel,
    Level,
    Query,
    QueryKey,
)
from dicomvault.web.audit_api import audit_query
from dicomvault.web.common import (
    archive_of,
    base_url,
    blocking,
    path_uid,
    settings_of,
)
from dicomvault.web.errors import HTTPProblem
from dicomvault.web.match_json import (
    SERIES_UID,
    STUDY_UID,
    run_datasets,
    run_json,
)
from dicomvault.web.media import (
    DICOM_JSON,
    DICOM_XML,
    JSON,
    MULTIPART_RELATED,
    accepted,
    not_acceptable,
)
from dicomvault.web.multipart import PART_END, closing, multipart_type, new_boundary, part_head

MODEL: Final = InformationModel.STUDY_ROOT
#: PS3.18 8.3.4: the parameters that are not attribute keys.
FUZZY, INCLUDE, LIMIT, OFFSET = "fuzzymatching", "includefield", "limit", "offset"
#: PS3.18 8.3.3.1 / 8.3.3.2: content negotiation parameters (``accept`` is read by
#: :func:`dicomvault.web.media.accepted`; JSON and XML are always UTF-8, so ``charset``
#: has nothing to choose).
NEGOTIATION: Final = frozenset({"accept", "charset"})
OFFERED: Final = [DICOM_JSON, JSON, f'{MULTIPART_RELATED}; type="{DICOM_XML}"']
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")

# fmt: off
#: PS3.18 Table 10.6.3-3 Study Resources Search Response Payload (Retrieve URL is added
#: here, not asked of the engine).
STUDY_REQUIRED: Final = (
    0x00080020, 0x00080030, 0x00080050, 0x00080056, 0x00080061, 0x00080090, 0x00080201,
    0x00100010, 0x00100020, 0x00100030, 0x00100040, 0x0020000D, 0x00200010, 0x00201206,
    0x00201208,
)
#: PS3.18 Table 10.6.3-4 Series Resources Search Response Payload; Request Attributes
#: Sequence (0040,0275) with its Scheduled Procedure Step ID and Requested Procedure ID.
SERIES_REQUIRED: Final = (
    0x00080060, 0x00080201, 0x0008103E, 0x0020000E, 0x00200011, 0x00201209, 0x00400244,
    0x00400245, 0x00400275,
)
#: PS3.18 Table 10.6.3-5 Instance Resources Search Response Payload.
INSTANCE_REQUIRED: Final = (
    0x00080016, 0x00080018, 0x00080056, 0x00080201, 0x00200013, 0x00280010, 0x00280011,
    0x00280100, 0x00280008,
)
# fmt: on
REQUIRED: Final = {
    Level.STUDY: STUDY_REQUIRED,
    Level.SERIES: SERIES_REQUIRED,
    Level.IMAGE: INSTANCE_REQUIRED,
}
FUZZY_WARNING: Final = (
    "The fuzzymatching parameter is not supported. Only literal matching has been performed."
)
MORE_WARNING: Final = "There are additional results that can be requested"


@dataclass(frozen=True)
class Resource:
    """One search resource of PS3.18 Table 10.6.1-1.

    ``levels`` are the levels whose attributes are returned (PS3.18 10.6.3.3: a search of
    All Series also returns the Study attributes, Study's Instances the Series ones, All
    Instances both).
    """

    level: Level
    relational: bool
    levels: tuple[Level, ...]
    path: tuple[tuple[str, int, str], ...] = ()  # (path parameter, tag, what)


STUDIES: Final = Resource(Level.STUDY, False, (Level.STUDY,))
STUDY_SERIES: Final = Resource(
    Level.SERIES, False, (Level.SERIES,), (("study", STUDY_UID, "StudyInstanceUID"),)
)
ALL_SERIES: Final = Resource(Level.SERIES, True, (Level.STUDY, Level.SERIES))
SERIES_INSTANCES: Final = Resource(
    Level.IMAGE,
    False,
    (Level.IMAGE,),
    (("study", STUDY_UID, "StudyInstanceUID"), ("series", SERIES_UID, "SeriesInstanceUID")),
)
STUDY_INSTANCES: Final = Resource(
    Level.IMAGE, True, (Level.SERIES, Level.IMAGE), (("study", STUDY_UID, "StudyInstanceUID"),)
)
ALL_INSTANCES: Final = Resource(Level.IMAGE, True, (Level.STUDY, Level.SERIES, Level.IMAGE))


# -- attributes ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Attribute:
    tag: int
    keyword: str
    vr: str


@lru_cache(maxsize=4096)
def _lookup(name: str) -> _Attribute | None:
    """An attribute by keyword or ``GGGGEEEE`` tag: the query tables first (their VRs are
    the ones the index uses), then the data dictionary."""
    if _TAG.match(name):
        tag = int(name, 16)
        known = ATTRIBUTES.get(tag)
        if known is not None:
            return _Attribute(tag, known.keyword, known.vr)
        try:
            vr = str(dictionary_VR(tag))
        except KeyError:
            return None
        return _Attribute(tag, keyword_for_tag(tag) or name.upper(), vr.split(" or ")[0])
    known = BY_KEYWORD.get(name)
    if known is not None:
        return _Attribute(known.tag, known.keyword, known.vr)
    found = tag_for_keyword(name)
    if found is None:
        return None
    return _Attribute(found, name, str(dictionary_VR(found)).split(" or ")[0])


def _attribute(name: str, parameter: str) -> _Attribute:
    attribute = _lookup(name.strip())
    if attribute is None:
        raise HTTPProblem(
            400,
            f"{parameter}: {name!r} is neither a DICOM keyword nor a tag (GGGGEEEE) of the "
            "data dictionary (PS3.18 8.3.4.1)",
            parameter=parameter,
        )
    return attribute


def _level(tag: int) -> Level | None:
    known = ATTRIBUTES.get(tag)
    return None if known is None else level_of(known, MODEL)


# -- request → Query ----------------------------------------------------------------


@dataclass
class _Node:
    """A key being assembled: value (``None`` = return key) and sequence item keys."""

    attribute: _Attribute
    value: str | None = None
    items: dict[int, _Node] = field(default_factory=dict)

    def key(self) -> QueryKey:
        a = self.attribute
        if a.vr == "SQ":
            items = tuple(self.items[t].key() for t in sorted(self.items)) or None
            return QueryKey(a.tag, a.keyword, a.vr, None, items)
        return QueryKey(a.tag, a.keyword, a.vr, self.value)


@dataclass
class Search:
    """A parsed QIDO-RS request."""

    query: Query
    fuzzy: bool


def _uint(request: Request, name: str) -> int | None:
    values = request.query_params.getlist(name)
    if not values:
        return None
    if len(values) > 1:
        raise HTTPProblem(400, f"{name}: given {len(values)} times, once at most", parameter=name)
    text = values[0].strip()
    if not ascii_digits(text):
        raise HTTPProblem(
            400, f"{name}: {values[0]!r} is not an unsigned integer (PS3.18 8.3.4.4)",
            parameter=name,
        )
    return int(text)


def _fuzzy(request: Request) -> bool:
    values = request.query_params.getlist(FUZZY)
    answer = False
    for value in values:
        lowered = value.strip().lower()
        if lowered not in ("true", "false"):
            raise HTTPProblem(
                400, f"{FUZZY}: {value!r} is neither true nor false (PS3.18 8.3.4.2)",
                parameter=FUZZY,
            )
        answer = answer or lowered == "true"
    return answer


def _path_node(keys: dict[int, _Node], path: str, parameter: str) -> _Node:
    """The node of a (possibly dotted, PS3.18 8.3.4.1) attribute path, created as needed."""
    parts = path.split(".")
    level = keys
    node: _Node | None = None
    for index, part in enumerate(parts):
        attribute = _attribute(part, parameter)
        if index < len(parts) - 1 and attribute.vr != "SQ":
            raise HTTPProblem(
                400,
                f"{parameter}: {attribute.keyword} in {path!r} is not a sequence",
                parameter=parameter,
            )
        node = level.get(attribute.tag)
        if node is None:
            node = level[attribute.tag] = _Node(attribute)
        level = node.items
    assert node is not None
    return node


def _match_value(node: _Node, value: str, name: str) -> None:
    vr = node.attribute.vr
    if vr == "SQ":
        raise HTTPProblem(
            400,
            f"{name}: a sequence is matched through its items "
            f"({node.attribute.keyword}.Keyword=value, PS3.18 8.3.4.1)",
            parameter=name,
        )
    if vr == "UI":
        # PS3.18 8.3.4.1: a UID list is comma-separated (or the key repeated); the engine
        # reads it as a C-FIND UID list, backslash-separated.
        value = value.replace(",", "\\")
        node.value = value if not node.value else f"{node.value}\\{value}"
        return
    if node.value is not None:
        raise HTTPProblem(
            400,
            f"{name}: given twice; only UID keys may be repeated (PS3.18 8.3.4.1)",
            parameter=name,
        )
    node.value = value


def _include_all(keys: dict[int, _Node], resource: Resource) -> None:
    """``includefield=all``: every optional key of the returned levels (PS3.18 10.6.3.3
    refers to PS3.4 C.6.1.1.x / C.6.2.1) that the archive supports."""
    for attribute in ATTRIBUTES.values():
        if level_of(attribute, MODEL) in resource.levels and attribute.tag not in keys:
            keys[attribute.tag] = _Node(_Attribute(attribute.tag, attribute.keyword, attribute.vr))


def _included(keys: dict[int, _Node], text: str, resource: Resource) -> None:
    for name in text.split(","):
        name = name.strip()
        if not name:
            continue
        if name.lower() == "all":
            _include_all(keys, resource)
            continue
        first = _attribute(name.split(".")[0], INCLUDE)
        level = _level(first.tag)
        if level is not None and level.depth > resource.level.depth:
            # PS3.18 10.6.3.3.x: attributes of levels below the resource's "shall not be
            # returned" (OHIF asks /studies for Modality 00080060, for instance).
            continue
        _path_node(keys, name, INCLUDE)


def parse(request: Request, resource: Resource) -> Search:
    """The request as a Study Root query.

    Raises
    ------
    HTTPProblem
        400 naming the parameter: unknown attribute, repeated non-UID key, ``limit`` or
        ``offset`` not an unsigned integer, ``fuzzymatching`` neither true nor false, a
        path UID that is not a UID.
    """
    keys: dict[int, _Node] = {}
    for parameter, tag, what in resource.path:
        keys[tag] = _Node(_Attribute(tag, what, "UI"), path_uid(request, parameter, what))
    from_path = set(keys)
    limit = _uint(request, LIMIT)
    offset = _uint(request, OFFSET) or 0
    fuzzy = _fuzzy(request)
    for name, value in request.query_params.multi_items():
        if name in (LIMIT, OFFSET, FUZZY) or name.lower() in NEGOTIATION:
            continue
        if name == INCLUDE:
            _included(keys, value, resource)
            continue
        node = _path_node(keys, name, name)
        if node.attribute.tag in from_path:
            raise HTTPProblem(
                400, f"{name}: given by the path of this resource already", parameter=name
            )
        _match_value(node, value, name)
    for level in resource.levels:
        for tag in REQUIRED[level]:
            if tag not in keys:
                required = _lookup(f"{tag:08X}")
                assert required is not None  # the tables above are dictionary tags
                keys[tag] = _Node(required)
    if limit is None or limit == 0:
        limit = settings_of(request).http.default_limit or None
    query = Query(
        model=MODEL,
        level=resource.level,
        keys=tuple(keys[tag].key() for tag in sorted(keys)),
        relational=resource.relational,
        max_results=limit,
        offset=offset,
    )
    return Search(query, fuzzy)


# -- responses ----------------------------------------------------------------------


def _negotiate(request: Request) -> str:
    """The answer's media type (PS3.18 10.6.2 / 8.3.3): DICOM JSON unless the client
    prefers ``multipart/related; type="application/dicom+xml"``."""
    ranges = accepted(request)
    for media_range in ranges:
        if media_range.type.startswith("multipart/"):
            if media_range.matches(MULTIPART_RELATED) and media_range.related_type == DICOM_XML:
                return DICOM_XML
            continue
        if media_range.type in (DICOM_JSON, JSON):
            return media_range.type
        if media_range.matches(DICOM_JSON):
            return DICOM_JSON
    raise not_acceptable(ranges, OFFERED)


def _warning(request: Request, text: str) -> str:
    # RFC 7234 5.5: warn-code SP warn-agent SP warn-text (a quoted string).
    return f'299 {request.url.netloc or "dicomvault"} "{text}"'


def _respond(
    request: Request, status: int, body: bytes, media: str, warnings: list[str]
) -> Response:
    # PS3.18 8.3.4.4.1: no results is 204 (No Content), without a body.
    response = Response(body, media_type=media) if status == 200 else Response(status_code=204)
    for text in warnings:
        response.headers.append("Warning", _warning(request, text))
    return response


def _xml_body(datasets: list[dict[str, Any]]) -> tuple[bytes, str]:
    """PS3.18 10.6.3.2: one Native DICOM Model part per match."""
    boundary = new_boundary()
    parts: list[bytes] = []
    for dataset in datasets:
        parts.append(part_head(boundary, DICOM_XML))
        parts.append(native_xml(dataset))
        parts.append(PART_END)
    parts.append(closing(boundary))
    return b"".join(parts), multipart_type(DICOM_XML, boundary)


async def search(request: Request, resource: Resource) -> Response:
    """Answer one Search transaction (PS3.18 10.6)."""
    media = _negotiate(request)
    parsed = parse(request, resource)
    audit_query(request)  # Query (PS3.15 A.5.3.10): queued, never waited on
    archive, base = archive_of(request), base_url(request)
    if media == DICOM_XML:
        datasets, truncated = await blocking(run_datasets, archive, parsed.query, base)
        count = len(datasets)
        body, media = _xml_body(datasets) if datasets else (b"", media)
    else:
        body, count, truncated = await blocking(run_json, archive, parsed.query, base)
    warnings = []
    if parsed.fuzzy:
        warnings.append(FUZZY_WARNING)  # PS3.18 8.3.4.2
    if truncated:
        warnings.append(MORE_WARNING)  # PS3.18 8.3.4.4.1
    return _respond(request, 200 if count else 204, body, media, warnings)


async def search_studies(request: Request) -> Response:
    """Search for studies (QIDO-RS, PS3.18 10.6).

    Attribute keys by keyword or tag with C-FIND matching, ``includefield``,
    ``fuzzymatching``, ``limit``, ``offset``; DICOM JSON or multipart DICOM XML.
    """
    return await search(request, STUDIES)


async def search_study_series(request: Request) -> Response:
    """Search for the series of a study (QIDO-RS, PS3.18 10.6)."""
    return await search(request, STUDY_SERIES)


async def search_series(request: Request) -> Response:
    """Search for series across all studies (QIDO-RS, relational, PS3.18 10.6)."""
    return await search(request, ALL_SERIES)


async def search_series_instances(request: Request) -> Response:
    """Search for the instances of a series (QIDO-RS, PS3.18 10.6)."""
    return await search(request, SERIES_INSTANCES)


async def search_study_instances(request: Request) -> Response:
    """Search for the instances of a study (QIDO-RS, relational, PS3.18 10.6)."""
    return await search(request, STUDY_INSTANCES)


async def search_instances(request: Request) -> Response:
    """Search for instances across all studies (QIDO-RS, relational, PS3.18 10.6)."""
    return await search(request, ALL_INSTANCES)


_ROUTES: Final[tuple[tuple[str, Callable[[Request], Any]], ...]] = (
    ("/studies", search_studies),
    ("/studies/{study}/series", search_study_series),
    ("/series", search_series),
    ("/studies/{study}/series/{series}/instances", search_series_instances),
    ("/studies/{study}/instances", search_study_instances),
    ("/instances", search_instances),
)


def routes() -> list[BaseRoute]:
    """The QIDO-RS routes, relative to the DICOMweb root."""
    return [Route(path, endpoint, methods=["GET"]) for path, endpoint in _ROUTES]

