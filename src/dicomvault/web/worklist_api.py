"""``/api/worklist``: Modality Worklist items over HTTP, JSON in and out (PS3.4 K).

======  ==========================  =======================================================
GET     /api/worklist               items, newest first; filters ``status``, ``patient_id``,
                                    ``accession_number``, ``modality``, ``date``
                                    (``YYYYMMDD`` or ``YYYYMMDD-YYYYMMDD``), ``limit``
POST    /api/worklist               add an item: 201 with the item and a ``Location``
GET     /api/worklist/{item_id}     one item
PUT     /api/worklist/{item_id}     replace its data set (same body as POST)
DELETE  /api/worklist/{item_id}     cancel it (status CANCELLED; kept for the record)
======  ==========================  =======================================================

The body of POST and PUT is one item, in the DICOM JSON Model (PS3.18 F.2) or in
keyword form; see :func:`dicomvault.archive.worklist.add_item`. Errors are JSON
(:mod:`dicomvault.web.errors`): 400 for a body that is not JSON or an invalid item (the
message names the attribute), 404 for an unknown item, 409 for a change the item's status
does not allow (updating or cancelling a completed item), 413 for a body over
``worklist.max_item_bytes``, 415 for a body that is not ``application/json``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from dicomvault.archive import audit, worklist
from dicomvault.security.audit import ActionCode
from dicomvault.web.audit_api import audit_query, requester
from dicomvault.web.common import archive_of, blocking, settings_of
from dicomvault.web.errors import HTTPProblem

log = logging.getLogger("dicomvault.http")

#: Where the worklist API lives (not under /dicom-web: it is not a DICOMweb service).
WORKLIST_ROOT = "/api/worklist"
MAX_LIMIT = 10000


def _problem(exc: worklist.WorklistError) -> HTTPProblem:
    status = 409 if isinstance(exc, worklist.WorklistConflict) else 400
    return HTTPProblem(status, str(exc))


async def _body(request: Request) -> dict[str, Any]:
    """The JSON object of the request body, checked for type, size and syntax."""
    media = request.headers.get("content-type", "application/json").split(";")[0].strip()
    if media.lower() not in ("application/json", "application/dicom+json"):
        raise HTTPProblem(415, f"send the item as application/json, not {media[:60]!r}")
    limit = settings_of(request).worklist.max_item_bytes
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPProblem(
                413, f"the item is larger than {limit} bytes (setting worklist.max_item_bytes)"
            )
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HTTPProblem(400, f"the body is not JSON: {exc}") from None
    if isinstance(value, list) and len(value) == 1:
        value = value[0]  # a DICOM JSON body is an array of data sets (PS3.18 F.2.1)
    if not isinstance(value, dict):
        raise HTTPProblem(400, "the body is not one JSON object (a worklist item)")
    return value


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit", "1000")
    try:
        limit = int(raw)
    except ValueError:
        message = f"limit: {raw[:20]!r} is not an integer"
        raise HTTPProblem(400, message, parameter="limit") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise HTTPProblem(400, f"limit: must be 1 to {MAX_LIMIT}, got {limit}", parameter="limit")
    return limit


_FILTERS = ("status", "patient_id", "accession_number", "modality", "date")


async def list_items(request: Request) -> Response:
    """List worklist items meeting the filters, newest first."""
    params = request.query_params
    unknown = sorted(set(params) - {*_FILTERS, "limit"})
    if unknown:
        raise HTTPProblem(
            400,
            f"unknown parameter {unknown[0]!r}",
            parameter=unknown[0],
            allowed=[*_FILTERS, "limit"],
        )
    filters = {name: params[name] for name in _FILTERS if params.get(name)}
    try:
        items = await blocking(
            worklist.list_items, archive_of(request), limit=_limit(request), **filters
        )
    except worklist.WorklistError as exc:
        _audit_query(request, str(exc))
        raise _problem(exc) from None
    _audit_query(request)  # Query (PS3.15 A.5.3.10), queued
    return JSONResponse([item.to_json() for item in items])


async def add_item(request: Request) -> Response:
    """Add a worklist item; 201 with the stored item."""
    body = await _body(request)
    try:
        item = await blocking(worklist.add_item, archive_of(request), body)
    except worklist.WorklistError as exc:
        raise _problem(exc) from None
    _audit_item(request, item, "C", "added")
    log.info("worklist item %s added (patient %s)", item.id, item.patient_id)
    return JSONResponse(
        item.to_json(), status_code=201, headers={"Location": f"{WORKLIST_ROOT}/{item.id}"}
    )


async def get_item(request: Request) -> Response:
    """One worklist item; 404 when unknown."""
    item_id: str = request.path_params["item_id"]
    item = await blocking(worklist.get_item, archive_of(request), item_id)
    _audit_item(request, item, "R", "read")
    return JSONResponse(item.to_json())


async def update_item(request: Request) -> Response:
    """Replace a worklist item's data set; 409 once it is closed."""
    item_id: str = request.path_params["item_id"]
    body = await _body(request)
    try:
        item = await blocking(worklist.update_item, archive_of(request), item_id, body)
    except worklist.WorklistError as exc:
        raise _problem(exc) from None
    _audit_item(request, item, "U", "updated")
    log.info("worklist item %s updated", item.id)
    return JSONResponse(item.to_json())


async def cancel_item(request: Request) -> Response:
    """Cancel a worklist item: it leaves the worklist, kept as CANCELLED."""
    item_id: str = request.path_params["item_id"]
    try:
        item = await blocking(worklist.cancel_item, archive_of(request), item_id)
    except worklist.WorklistError as exc:
        raise _problem(exc) from None
    _audit_item(request, item, "U", "cancelled")
    log.info("worklist item %s cancelled", item.id)
    return JSONResponse(item.to_json())


def _audit_query(request: Request, failure: str | None = None) -> None:
    """Query (PS3.15 A.5.3.10) for ``GET /api/worklist``: a non-DICOM query, audited
    as QIDO-RS is (:func:`~dicomvault.web.audit_api.audit_query`: the path as a URI,
    the path and query string as the query)."""
    audit_query(request, failure)


def _audit_item(
    request: Request, item: worklist.WorklistItem, action: ActionCode, what: str
) -> None:
    """Procedure Record (PS3.15 A.5.3.15) for one item read or changed over HTTP."""
    user, host = requester(request.scope)
    audit.procedure_record(
        archive_of(request), action=action, user=user, host=host,
        patient_id=item.patient_id, study_uid=item.study_instance_uid,
        accession=item.accession_number, description=f"worklist item {item.id} {what}",
        patient_name=item.patient_name,
    )  # fmt: skip


def routes() -> list[BaseRoute]:
    """The worklist routes, for the top level of the app (``create_app``)."""
    return [
        Route(WORKLIST_ROOT, list_items, methods=["GET"]),
        Route(WORKLIST_ROOT, add_item, methods=["POST"]),
        Route(WORKLIST_ROOT + "/{item_id}", get_item, methods=["GET"]),
        Route(WORKLIST_ROOT + "/{item_id}", update_item, methods=["PUT"]),
        Route(WORKLIST_ROOT + "/{item_id}", cancel_item, methods=["DELETE"]),
    ]
