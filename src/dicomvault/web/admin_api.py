"""The admin API of deletion (issue 6 part 4): JSON in and out, role ``admin``
(permission ``delete``).

- ``DELETE /api/patients/{patient_id}[?issuer=I]``, ``DELETE /api/studies/{study}``,
  ``…/series/{series}``, ``…/instances/{instance}``: 200 with what went (patients,
  studies and series that went whole, instances, bytes, the UIDs). ``?dry_run=true``
  answers what *would* go and changes nothing; ``?force=true`` deletes protected
  studies (otherwise 409). One implementation with ``dicomvault delete`` and the
  DICOMweb DELETE (``Archive.deletion``); ``http.allow_delete = false`` turns them all
  off (405).
- ``PUT`` / ``DELETE /api/studies/{study}/protection``: protect a study from retention
  rules and quota recycling (and from deletion without ``force``), or lift that; the
  ``PUT`` body may be ``{"note": "…"}``.
- ``GET /api/deletions[?limit=N]``: the deletion queue (blobs waiting for removal:
  rejected instances in their grace period, deletions a crash interrupted) and the
  instances IOCM rejection notes rejected.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from dicomvault.archive.deletion import Selection
from dicomvault.model.digits import ascii_digits
from dicomvault.web.common import archive_of, blocking, path_uid
from dicomvault.web.delete import check_delete_allowed, run_deletion
from dicomvault.web.errors import HTTPProblem

API_ROOT = "/api"

_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no", "")
#: Longest Patient ID (PS3.5 LO: 64 characters) and Issuer accepted.
_LO_MAX = 64


def _flag(request: Request, name: str) -> bool:
    value = request.query_params.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise HTTPProblem(400, f"{name}: expected true or false, got {value[:20]!r}", parameter=name)


def _text(value: str, what: str) -> str:
    if not value or len(value) > _LO_MAX or not value.isprintable() or "\\" in value:
        raise HTTPProblem(
            400,
            f"{what} {value[:80]!r} is not a value of 1 to {_LO_MAX} printable characters "
            "without a backslash",
            parameter=what,
        )
    return value


async def _delete(request: Request, selection: Selection) -> Response:
    dry_run = _flag(request, "dry_run")
    force = _flag(request, "force")
    if not dry_run:
        check_delete_allowed(request, "")
    report = await run_deletion(request, selection, force=force, dry_run=dry_run)
    return JSONResponse(report.as_dict())


async def delete_patient(request: Request) -> Response:
    """Delete a patient (Patient ID + ``?issuer=``) and all of their studies
    (``?dry_run=true``, ``?force=true``)."""
    patient_id = _text(request.path_params["patient_id"], "Patient ID")
    issuer = request.query_params.get("issuer")
    if issuer is not None and issuer != "":
        issuer = _text(issuer, "Issuer of Patient ID")
    return await _delete(request, Selection("patient", patient_id, issuer=issuer))


async def delete_study(request: Request) -> Response:
    """Delete a study (``?dry_run=true``: say what would go; ``?force=true``: even if
    protected)."""
    study = path_uid(request, "study", "Study Instance UID")
    return await _delete(request, Selection("study", study))


async def delete_series(request: Request) -> Response:
    """Delete a series of a study (``?dry_run=true``, ``?force=true``)."""
    study = path_uid(request, "study", "Study Instance UID")
    series = path_uid(request, "series", "Series Instance UID")
    return await _delete(request, Selection("series", series, study=study))


async def delete_instance(request: Request) -> Response:
    """Delete an instance of a series of a study (``?dry_run=true``, ``?force=true``)."""
    study = path_uid(request, "study", "Study Instance UID")
    series = path_uid(request, "series", "Series Instance UID")
    instance = path_uid(request, "instance", "SOP Instance UID")
    return await _delete(request, Selection("instance", instance, study=study, series=series))


async def _note(request: Request) -> str:
    body = await request.body()
    if not body.strip():
        return ""
    try:
        data: Any = json.loads(body)
    except ValueError as exc:
        raise HTTPProblem(400, f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict) or set(data) - {"note"}:
        raise HTTPProblem(400, 'the body must be a JSON object with at most a "note" member')
    note = data.get("note", "")
    if not isinstance(note, str) or len(note) > 1024:
        raise HTTPProblem(400, "note: expected a string of at most 1024 characters")
    return note


async def protect_study(request: Request) -> Response:
    """Protect a study (200 ``{"protected": true, "changed": …}``; 404 when unknown)."""
    study = path_uid(request, "study", "Study Instance UID")
    note = await _note(request)
    changed = await blocking(archive_of(request).deletion.protect, study, note)
    return JSONResponse({"study_instance_uid": study, "protected": True, "changed": changed})


async def unprotect_study(request: Request) -> Response:
    """Lift a study's protection (200 ``{"protected": false, "changed": …}``)."""
    study = path_uid(request, "study", "Study Instance UID")
    changed = await blocking(archive_of(request).deletion.unprotect, study)
    return JSONResponse({"study_instance_uid": study, "protected": False, "changed": changed})


async def list_deletions(request: Request) -> Response:
    """The deletion queue and the rejected instances (the first ``limit`` of each)."""
    raw = request.query_params.get("limit", "1000")
    if not ascii_digits(raw) or not 1 <= int(raw) <= 100_000:
        raise HTTPProblem(400, f"limit: expected 1 to 100000, got {raw[:20]!r}", parameter="limit")
    body = await blocking(archive_of(request).deletion.pending, int(raw))
    return JSONResponse(body)


_STUDY = API_ROOT + "/studies/{study}"
_SERIES = _STUDY + "/series/{series}"


def routes() -> list[BaseRoute]:
    return [
        Route(API_ROOT + "/patients/{patient_id:path}", delete_patient, methods=["DELETE"]),
        Route(_STUDY, delete_study, methods=["DELETE"]),
        Route(_SERIES, delete_series, methods=["DELETE"]),
        Route(_SERIES + "/instances/{instance}", delete_instance, methods=["DELETE"]),
        Route(_STUDY + "/protection", protect_study, methods=["PUT"]),
        Route(_STUDY + "/protection", unprotect_study, methods=["DELETE"]),
        Route(API_ROOT + "/deletions", list_deletions, methods=["GET"]),
    ]
