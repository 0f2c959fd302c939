"""The audit trail over HTTP: ``GET /api/audit`` (role admin) searches the recorded
DICOM Audit Messages (PS3.15 A.5), and the helpers the DICOMweb handlers and the
authentication middleware call to produce them (through ``archive/audit.py``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from datetime import datetime

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Scope

from dicomvault.archive import Archive, audit
from dicomvault.archive.deletion import DeletionReport, Selection
from dicomvault.archive.users import Principal
from dicomvault.model.digits import ascii_digits
from dicomvault.model.records import StoredInstance, StoreResult
from dicomvault.web.common import archive_of, blocking
from dicomvault.web.errors import HTTPProblem

#: ``web.auth.AUTH_KEY`` (not imported: auth imports this module for its login hook).
_AUTH_KEY = "dicomvault.auth"


def requester(scope: Scope) -> tuple[str, str | None]:
    """(user name, client address) of a request; ``anonymous`` when no user exists."""
    auth = scope.get(_AUTH_KEY)
    name = auth.name if isinstance(auth, Principal) else "anonymous"
    client = scope.get("client")
    return name, (str(client[0]) if client else None)


def audit_login(
    archive: Archive, scope: Scope, principal: Principal | None, failure: str | None
) -> None:
    """User Authentication (PS3.15 A.5.3.12) for a request's credentials: ``principal``
    on success, else ``failure`` (the attempted user name is read from a Basic header)."""
    client = scope.get("client")
    host = str(client[0]) if client else "-"
    if principal is not None:
        audit.login(archive, principal.name, host)
        return
    audit.login(archive, _attempted_user(scope), host, failure=failure or "refused")


def _attempted_user(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "basic":
                try:
                    decoded = base64.b64decode(credentials.strip(), validate=True).decode()
                except (binascii.Error, UnicodeDecodeError):
                    return "-"
                return decoded.partition(":")[0][:128] or "-"
            return f"({scheme.lower()[:16]} token)"
    return "-"


def audit_query(request: Request, failure: str | None = None) -> None:
    """Query (PS3.15 A.5.3.10) for an HTTP query (QIDO-RS, the worklist API): a
    non-DICOM query, so the queried object is the path (ID type 12 URI) and the query
    the path and query string, as the protocol has it (A.5.3.10, note 2)."""
    user, host = requester(request.scope)
    text = request.url.path + ("?" + request.url.query if request.url.query else "")
    audit.queried(archive_of(request), user, host, request.url.path, text.encode(), failure=failure)


def audit_retrieve(
    request: Request, instances: Iterable[StoredInstance], *, accessed: bool = False
) -> None:
    """WADO-RS: Instances Transferred, action R (instances, frames, bulk data, rendered
    images, thumbnails; PS3.15 A.5.3.7) or Instances Accessed (metadata, A.5.3.6):
    counted in the tally of the user, client address and study, one message per pause
    of ``audit.http_coalesce_seconds`` (docs/audit.md). Memory only: nothing waits."""
    user, host = requester(request.scope)
    audit.http_instances(archive_of(request), instances, user=user, host=host, accessed=accessed)


def audit_stored(request: Request, results: Iterable[StoreResult]) -> None:
    """STOW-RS: Instances Transferred (C) per study of the request."""
    user, host = requester(request.scope)
    audit.http_stored(archive_of(request), results, user=user, host=host)


def _time(request: Request, name: str) -> datetime | None:
    raw = request.query_params.get(name)
    if not raw:
        return None
    try:
        return datetime.fromisoformat(raw)
    except ValueError:
        raise HTTPProblem(400, f"{name} must be an ISO 8601 date-time", parameter=name) from None


def _int(request: Request, name: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not ascii_digits(raw) or not low <= int(raw) <= high:
        raise HTTPProblem(400, f"{name} must be an integer from {low} to {high}", parameter=name)
    return int(raw)


async def search_audit(request: Request) -> Response:
    """Search the audit trail (issue 7 part 5; PS3.15 A.5 messages as recorded).

    Query parameters: ``since``, ``until`` (ISO 8601), ``event`` (an Audit Event ID of
    PS3.16 CID 400, e.g. 110112), ``user``, ``patient``, ``study``, ``outcome``
    (0/4/8/12), ``limit`` (1-1000, default 100), ``offset``. Answers a JSON list, newest
    first, each entry with its XML message. Role admin only.
    """
    params = request.query_params
    for name in params:
        if name not in ("since", "until", "event", "user", "patient", "study", "outcome",
                        "limit", "offset"):  # fmt: skip
            raise HTTPProblem(400, f"unknown query parameter {name!r}", parameter=name)
    outcome = _int(request, "outcome", None, 0, 12)
    if outcome is not None and outcome not in (0, 4, 8, 12):
        raise HTTPProblem(400, "outcome must be 0, 4, 8 or 12", parameter="outcome")
    where = audit.AuditFilter(
        since=_time(request, "since"),
        until=_time(request, "until"),
        event_id=params.get("event") or None,
        user=params.get("user") or None,
        patient=params.get("patient") or None,
        study=params.get("study") or None,
        outcome=outcome,
        limit=_int(request, "limit", 100, 1, audit.MAX_LIMIT) or 100,
        offset=_int(request, "offset", 0, 0, 1 << 31) or 0,
    )
    rows = await blocking(audit.search, archive_of(request), where)
    return JSONResponse([row.as_dict() for row in rows])


def routes() -> list[BaseRoute]:
    return [Route("/api/audit", search_audit, methods=["GET"])]


async def subjects_before_deleting(
    request: Request, selection: Selection
) -> dict[str, tuple[str, str]]:
    """The patient of the study a deletion names, looked up before it goes."""
    study = selection.uid if selection.level == "study" else selection.study
    if not study:
        return {}
    return await blocking(audit.study_subjects_now, archive_of(request), [study])


def audit_deleted(
    request: Request,
    selection: Selection,
    report: DeletionReport,
    subjects: dict[str, tuple[str, str]],
) -> None:
    """Per study the deletion touched: DICOM Study Deleted (PS3.15 A.5.3.8) when it
    went whole, DICOM Instances Accessed with action D (A.5.3.6) when only some of its
    instances did."""
    user, host = requester(request.scope)
    audit.selection_deleted(archive_of(request), selection, report, subjects, user=user, host=host)
