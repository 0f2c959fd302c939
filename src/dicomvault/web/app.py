"""The ASGI application: DICOMweb at ``/dicom-web`` plus ``/healthz`` and ``/metrics``.

Starlette rather than FastAPI: the services speak DICOM media types (multipart/related,
DICOM JSON, DICOM files) that FastAPI's pydantic request/response models do not describe,
and its per-request validation layer costs time on the hot paths (frames, metadata)
without adding checks we need; the OpenAPI document is generated from the routes here.
Served by uvicorn on the same event loop as the DIMSE listener (``cli/serve.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomvault import metrics
from dicomvault.archive import Archive
from dicomvault.config import Settings
from dicomvault.web import (
    admin_api,
    audit_api,
    auth,
    capabilities,
    delete,
    qido,
    remotes_api,
    rendered,
    stow,
    wado,
    wado_frames,
    workflow_api,
    worklist_api,
)
from dicomvault.web.common import DICOMWEB_ROOT
from dicomvault.web.errors import EXCEPTION_HANDLERS

log = logging.getLogger("dicomvault.http")

#: Never gzip these: already compressed, or large binary that compresses poorly while
#: costing a core (DICOM files, frames, images).
NOT_GZIPPED = (
    "multipart/related",
    "application/dicom",
    "application/octet-stream",
    "image/jpeg",
    "image/png",
    "image/gif",
    "image/jp2",
    "image/jls",
    "image/dicom-rle",
    "image/x-dicom-rle",
    "video/mpeg",
    "video/mp4",
)

ROUTE_KEY = "dicomvault.route"


class _Labelled:
    """Wraps a route's ASGI app to record the route template for metrics and logs."""

    def __init__(self, app: ASGIApp, template: str) -> None:
        self.app = app
        self.template = template

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[ROUTE_KEY] = self.template
        await self.app(scope, receive, send)


def _label(routes: Sequence[BaseRoute], prefix: str = "") -> None:
    for route in routes:
        if isinstance(route, Route):
            route.app = _Labelled(route.app, prefix + route.path)
        elif isinstance(route, Mount):
            _label(route.routes, prefix + route.path)


class RequestLog:
    """Logs each request (client, method, path, status, bytes, milliseconds) and feeds the
    request counters and latency histograms of ``/metrics``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        sent = 0

        async def tracking_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get(ROUTE_KEY, "(unmatched)")
            method = scope["method"]
            metrics.HTTP_REQUESTS.inc(route, method, str(status))
            metrics.HTTP_LATENCY.observe(elapsed, route, method)
            client = scope.get("client")
            peer = f"{client[0]}:{client[1]}" if client else "-"
            query = scope.get("query_string", b"").decode("latin-1")
            path = scope["path"] + (f"?{query}" if query else "")
            log.info(
                "%s %s %s -> %d, %d bytes, %.1f ms",
                peer, method, path, status, sent, elapsed * 1000,
            )


def create_app(archive: Archive, settings: Settings) -> Starlette:
    """The HTTP application serving ``archive``.

    ``settings.http`` gives CORS origins, delete permission, STOW limits, gzip size.
    """
    dicomweb: list[BaseRoute] = [
        *capabilities.routes(),
        *qido.routes(),
        *wado.routes(),
        *wado_frames.routes(),
        *rendered.routes(),
        *stow.routes(),
        *delete.routes(),
    ]
    routes: list[BaseRoute] = [
        *capabilities.top_routes(),
        *admin_api.routes(),
        *audit_api.routes(),
        *remotes_api.routes(),
        *worklist_api.routes(),
        *workflow_api.routes(),
        Mount(DICOMWEB_ROOT, routes=dicomweb),
    ]
    auth.guard(routes)  # RuntimeError for a route without a declared permission
    _label(routes)
    middleware = [Middleware(RequestLog), Middleware(auth.SecurityHeaders)]
    if settings.http.cors_origins:
        # PS3.18 does not define CORS; browsers need it when a viewer is served from
        # another origin. Expose the headers viewers read from responses.
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.http.cors_origins,
                allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
                allow_headers=["*"],
                expose_headers=["Content-Type", "Content-Length", "ETag", "Warning"],
                max_age=600,
            )
        )
    # Inside CORS, so that preflights pass and 401/403 answers carry the CORS headers.
    middleware.append(
        Middleware(auth.Authentication, archive=archive, host=settings.http.host)
    )
    middleware.append(
        Middleware(
            GZipMiddleware,
            minimum_size=settings.http.gzip_min_size,
            exclude_content_types=NOT_GZIPPED,
        )
    )
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers=EXCEPTION_HANDLERS,
    )
    app.state.archive = archive
    app.state.settings = settings
    return app
