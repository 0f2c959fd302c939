"""``GET /dicom-web``: what this server offers (a short list of services, and the OpenAPI
3.1 document generated from the routes at ``/dicom-web/openapi.json``); ``/healthz`` for
load balancers and orchestrators; ``/metrics`` for Prometheus.

PS3.18 8.9 defines the capabilities transaction as ``OPTIONS`` on the root answering a
WADL document; viewers and tools in use read neither, so the root answers JSON here and
the routes are described by OpenAPI, which API tooling reads.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from dicomvault import __version__, metrics
from dicomvault.web.common import DICOMWEB_ROOT, archive_of, base_url, blocking
from dicomvault.web.errors import problem_response

#: The services and the PS3.18 sections they implement.
_LEVELS = "/studies/{study}[/series/{series}[/instances/{instance}]]"
SERVICES = (
    {
        "name": "QIDO-RS",
        "section": "PS3.18 10.6",
        "paths": ["/studies", "/series", "/instances"],
    },
    {
        "name": "WADO-RS",
        "section": "PS3.18 10.4",
        "paths": [_LEVELS, "…/metadata", "…/frames/{frames}", "…/bulkdata/…"],
    },
    {
        "name": "WADO-RS rendered",
        "section": "PS3.18 10.4.1.1.3",
        "paths": ["…/rendered", "…/thumbnail"],
    },
    {"name": "STOW-RS", "section": "PS3.18 10.5", "paths": ["/studies", "/studies/{study}"]},
    {"name": "Delete", "section": "PS3.18 10.4 (delete)", "paths": [_LEVELS]},
)


async def dicomweb_root(request: Request) -> Response:
    """Capabilities: the services this DICOMweb server offers and where its OpenAPI
    document is."""
    base = base_url(request)
    return JSONResponse(
        {
            "server": f"dicomvault {__version__}",
            "root": base,
            "services": list(SERVICES),
            "openapi": f"{base}/openapi.json",
            "delete": request.app.state.settings.http.allow_delete,
        }
    )


_PARAM = re.compile(r"{([^}:]+)(?::[^}]+)?}")


def _walk(routes: list[BaseRoute], prefix: str = "") -> list[tuple[str, Route]]:
    found: list[tuple[str, Route]] = []
    for route in routes:
        if isinstance(route, Route):
            found.append((prefix + route.path, route))
        elif isinstance(route, Mount):
            found.extend(_walk(list(route.routes), prefix + route.path))
    return found


def openapi_document(routes: list[BaseRoute]) -> dict[str, Any]:
    """An OpenAPI 3.1 document of ``routes``: each operation's summary and description
    come from its handler's docstring, its path parameters from the route template."""
    paths: dict[str, dict[str, Any]] = {}
    for path, route in _walk(routes):
        doc = inspect.getdoc(route.endpoint) or ""
        summary, _, description = doc.partition("\n\n")
        template = _PARAM.sub(lambda m: "{" + m.group(1) + "}", path)
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _PARAM.findall(path)
        ]
        for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
            operation: dict[str, Any] = {
                "summary": " ".join(summary.split()),
                "operationId": f"{method.lower()}_{route.name}_{len(paths)}",
                "responses": {"default": {"description": "see PS3.18 for this service"}},
            }
            if description:
                operation["description"] = description
            if parameters:
                operation["parameters"] = parameters
            paths.setdefault(template, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "dicomvault DICOMweb",
            "version": __version__,
            "description": "The Studies Service of PS3.18 (QIDO-RS, WADO-RS, STOW-RS, "
            "delete) plus health and metrics endpoints.",
        },
        "paths": dict(sorted(paths.items())),
    }


async def openapi(request: Request) -> Response:
    """The OpenAPI 3.1 document describing every route of this server."""
    return JSONResponse(openapi_document(list(request.app.routes)))


async def healthz(request: Request) -> Response:
    """Liveness and readiness: 200 ``ok`` when the index answers and the blob store is
    writable, 503 with the reason otherwise."""
    try:
        await blocking(archive_of(request).check_health)
    except Exception as exc:  # every failure is "unhealthy", reported with its reason
        return problem_response(503, str(exc))
    return PlainTextResponse("ok\n")


async def prometheus(_request: Request) -> Response:
    """Metrics in the Prometheus text format: HTTP requests and latency per route, DIMSE
    messages per service and status, instances and bytes ingested."""
    return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")


def top_routes() -> list[BaseRoute]:
    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
        Route(DICOMWEB_ROOT, dicomweb_root, methods=["GET"]),
    ]


def routes() -> list[BaseRoute]:
    return [
        Route("/", dicomweb_root, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
