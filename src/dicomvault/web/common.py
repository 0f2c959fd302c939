"""What every DICOMweb handler needs: the archive, the settings, running blocking archive
calls off the event loop, checked path UIDs, and the base URL for RetrieveURL and
BulkDataURI (PS3.18 8.2)."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from starlette.requests import Request

from dicomvault.archive import Archive
from dicomvault.config import Settings
from dicomvault.model.uid import uid_problem
from dicomvault.web.errors import HTTPProblem

#: Where the Studies Service lives (DESIGN.md stable names).
DICOMWEB_ROOT = "/dicom-web"

P = ParamSpec("P")
T = TypeVar("T")


def archive_of(request: Request) -> Archive:
    archive: Archive = request.app.state.archive
    return archive


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()

#: Threads for blocking work of HTTP requests. Its own pool: DIMSE stores use the loop's
#: default executor, and a burst of slow HTTP work must not queue them behind it.
HTTP_THREADS = 16


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        with _POOL_LOCK:
            if _POOL is None:
                _POOL = ThreadPoolExecutor(HTTP_THREADS, thread_name_prefix="dicomvault-http")
    return _POOL


async def blocking(func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a blocking archive call (SQL, file I/O, fsync) in the thread pool so the event
    loop keeps serving DIMSE and other requests meanwhile.

    A plain executor rather than anyio's ``to_thread``: measured on WADO-RS of 50
    instances, anyio's capacity limiter and checkpoints were 40 % of the event loop's
    busy time.
    """
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_pool(), functools.partial(func, *args, **kwargs))


def path_uid(request: Request, name: str, what: str) -> str:
    """The UID in path parameter ``name`` (``study``, ``series``, ``instance``), checked.

    Raises
    ------
    HTTPProblem
        400 naming the parameter when it is not a UID (PS3.5 9.1; leading zeros
        tolerated as on ingest).
    """
    value: str = request.path_params[name]
    problem = uid_problem(value)
    if problem is not None:
        raise HTTPProblem(400, f"{what} {value[:80]!r} {problem}", parameter=what)
    return value


def base_url(request: Request) -> str:
    """The absolute URL of the DICOMweb root as the client reaches it, without a trailing
    slash: setting ``http.base_url`` + ``/dicom-web`` when set (reverse proxies), else
    from the request (scheme and ``Host``)."""
    configured = settings_of(request).http.base_url.rstrip("/")
    if configured:
        return configured + DICOMWEB_ROOT
    return f"{request.url.scheme}://{request.url.netloc}{DICOMWEB_ROOT}"


def study_url(base: str, study: str) -> str:
    return f"{base}/studies/{study}"


def series_url(base: str, study: str, series: str) -> str:
    return f"{base}/studies/{study}/series/{series}"


def instance_url(base: str, study: str, series: str, instance: str) -> str:
    return f"{base}/studies/{study}/series/{series}/instances/{instance}"
