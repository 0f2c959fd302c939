"""HTTP caching of WADO-RS answers (RFC 9110 8.8.3 ETag, 13.1.2 If-None-Match).

A tag is a hash over the stored instances' SHA-256s and the representation asked for
(media type, transfer syntax, frames, rendering parameters), so it changes when either
does. ``Cache-Control: private, no-cache``: patient data stays out of shared caches, and
stored content can change under ``storage.duplicates = "overwrite"``, so clients
revalidate — cheaply, with ``If-None-Match`` → 304. ``Vary: Accept``: the same URL
answers differently per ``Accept``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from starlette.requests import Request
from starlette.responses import Response

from dicomvault.model.records import StoredInstance

CACHE_CONTROL = "private, no-cache"


def entity_tag(*parts: str) -> str:
    """A strong ETag over ``parts``."""
    digest = hashlib.sha256("\x00".join(parts).encode("utf-8", "replace")).hexdigest()[:40]
    return f'"{digest}"'


def instances_tag(instances: Iterable[StoredInstance], representation: str) -> str:
    """The ETag of an answer made of ``instances`` in ``representation``."""
    return entity_tag(*(instance.sha256 for instance in instances), representation)


def cache_headers(etag: str) -> dict[str, str]:
    return {"ETag": etag, "Cache-Control": CACHE_CONTROL, "Vary": "Accept"}


def not_modified(request: Request, etag: str) -> Response | None:
    """The 304 answer when ``If-None-Match`` names ``etag`` or ``*`` (weak comparison),
    else ``None``."""
    header = request.headers.get("if-none-match")
    if not header:
        return None
    tags = [tag.strip().removeprefix("W/") for tag in header.split(",")]
    if "*" in tags or etag in tags:
        return Response(status_code=304, headers=cache_headers(etag))
    return None
