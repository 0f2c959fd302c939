"""Remote AEs over HTTP (issue 7, part 2): JSON in and out, role ``admin``.

- ``GET /api/remotes``: every remote AE, the configuration file's (``"source":
  "config"``, read-only here) and those managed through this API (``"source": "api"``).
- ``GET /api/remotes/{name}``: one entry (404 when unknown).
- ``PUT /api/remotes/{name}``: create (201) or replace (200) an entry from a JSON object
  with ``ae_title``, ``host``, ``port`` and optionally ``tls``, ``permissions``,
  ``check_host``, ``hosts`` (the members of ``[remotes.NAME]``, docs/configuration.md).
  400 with ``"field"`` naming the member in error; 409 for a name of the file.
- ``DELETE /api/remotes/{name}``: 204; 404 when unknown, 409 for a name of the file.

A change applies to new associations within
:data:`~dicomvault.archive.remotes.CACHE_SECONDS` in every worker process, and is
audited as a Security Alert, Software Configuration (PS3.15 A.5.3.11).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from dicomvault.archive import remotes
from dicomvault.model.errors import NotFound
from dicomvault.web.audit_api import requester
from dicomvault.web.common import archive_of, blocking
from dicomvault.web.errors import HTTPProblem

API_ROOT = "/api/remotes"
#: Largest request body accepted.
_MAX_BODY = 64 * 1024


def _problem(exc: Exception) -> HTTPProblem:
    if isinstance(exc, remotes.RemoteConflict):
        return HTTPProblem(409, str(exc))
    if isinstance(exc, remotes.RemoteError):
        return HTTPProblem(400, str(exc), field=exc.field)
    if isinstance(exc, NotFound):
        return HTTPProblem(404, str(exc))
    raise exc


async def list_remotes(request: Request) -> Response:
    """Every remote AE: those of the configuration file (``source`` ``config``) and
    those managed through this API (``source`` ``api``)."""
    found = await blocking(remotes.list_remotes, archive_of(request))
    return JSONResponse([r.as_dict() for r in found])


async def get_remote(request: Request) -> Response:
    """One remote AE by name (404 when neither the file nor the API has it)."""
    try:
        found = await blocking(remotes.get_remote, archive_of(request), request.path_params["name"])
    except NotFound as exc:
        raise _problem(exc) from None
    return JSONResponse(found.as_dict())


async def _body(request: Request) -> dict[str, Any]:
    body = await request.body()
    if len(body) > _MAX_BODY:
        raise HTTPProblem(413, f"the body is larger than {_MAX_BODY} bytes")
    try:
        data: Any = json.loads(body)
    except ValueError as exc:
        raise HTTPProblem(400, f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise HTTPProblem(
            400, 'the body must be a JSON object: {"ae_title": …, "host": …, "port": …}'
        )
    return data


async def put_remote(request: Request) -> Response:
    """Create (201) or replace (200) the remote AE ``name`` from a JSON object with
    ``ae_title``, ``host``, ``port``, ``tls``, ``permissions``, ``check_host`` and
    ``hosts``; 400 naming the ``field`` in error, 409 for an entry of the file."""
    name = request.path_params["name"]
    data = await _body(request)
    actor, _ = requester(request.scope)
    try:
        entry, created = await blocking(
            remotes.put_remote, archive_of(request), name, data, actor=actor
        )
    except (remotes.RemoteError, remotes.RemoteConflict) as exc:
        raise _problem(exc) from None
    return JSONResponse(entry.as_dict(), status_code=201 if created else 200)


async def delete_remote(request: Request) -> Response:
    """Remove the remote AE ``name`` (204); 404 when unknown, 409 for an entry of the
    file."""
    name = request.path_params["name"]
    actor, _ = requester(request.scope)
    try:
        await blocking(remotes.remove_remote, archive_of(request), name, actor=actor)
    except (remotes.RemoteConflict, NotFound) as exc:
        raise _problem(exc) from None
    return Response(status_code=204)


def routes() -> list[BaseRoute]:
    return [
        Route(API_ROOT, list_remotes, methods=["GET"]),
        Route(API_ROOT + "/{name}", get_remote, methods=["GET"]),
        Route(API_ROOT + "/{name}", put_remote, methods=["PUT"]),
        Route(API_ROOT + "/{name}", delete_remote, methods=["DELETE"]),
    ]
