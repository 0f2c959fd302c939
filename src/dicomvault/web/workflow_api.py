"""``/api/mpps`` and ``/api/commitments``: what modalities reported (MPPS, PS3.4 F) and
where the storage commitment reports owed stand (PS3.4 J), as JSON for programs and
dashboards.

- ``GET /api/mpps?status=&study=&limit=`` — performed procedure steps, newest first;
- ``GET /api/mpps/{uid}`` — one step: its data set (DICOM JSON, PS3.18 F.2) and its
  performed series linked to what the archive stores (``stored_instances``);
- ``GET /api/commitments?state=pending|sent|expired&limit=`` — commitment jobs;
- ``GET /api/commitments/{transaction_uid}`` — one job with its failures.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from dicomvault.archive import commitment, mpps
from dicomvault.archive.mpps import PerformedStep
from dicomvault.model.digits import ascii_digits
from dicomvault.model.uid import uid_problem
from dicomvault.web.common import archive_of, blocking, path_uid
from dicomvault.web.errors import HTTPProblem

MAX_LIMIT = 1000
_STATUSES = ("IN PROGRESS", "COMPLETED", "DISCONTINUED")
_STATES = ("pending", "sent", "expired")


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit", "100")
    if not ascii_digits(raw) or not 1 <= int(raw) <= MAX_LIMIT:
        raise HTTPProblem(400, f"limit must be an integer from 1 to {MAX_LIMIT}, not {raw!r}")
    return int(raw)


def _choice(request: Request, name: str, allowed: tuple[str, ...]) -> str | None:
    value = request.query_params.get(name)
    if value is not None and value not in allowed:
        raise HTTPProblem(400, f"{name} must be one of {', '.join(allowed)}, not {value!r}")
    return value


def _step(step: PerformedStep) -> dict[str, object]:
    return {
        "sop_instance_uid": step.sop_instance_uid,
        "status": step.status,
        "calling_ae_title": step.calling_ae_title,
        "patient_id": step.patient_id,
        "study_instance_uid": step.study_instance_uid,
        "accession_number": step.accession_number,
        "modality": step.modality,
        "created_at": step.created_at.isoformat(),
        "updated_at": step.updated_at.isoformat(),
    }


async def list_mpps(request: Request) -> JSONResponse:
    """Performed procedure steps, newest first (``status``, ``study``, ``limit``)."""
    archive = archive_of(request)
    study = request.query_params.get("study")
    if study is not None and (problem := uid_problem(study)):
        raise HTTPProblem(400, f"study {study[:80]!r} {problem}", parameter="study")
    steps = await blocking(
        mpps.list_steps,
        archive,
        status=_choice(request, "status", _STATUSES),
        study_instance_uid=study,
        limit=_limit(request),
    )
    return JSONResponse([_step(s) for s in steps])


async def get_mpps(request: Request) -> JSONResponse:
    """One performed procedure step: its data set and its series linked to the archive."""
    archive = archive_of(request)
    uid = path_uid(request, "uid", "SOP Instance UID")
    step = await blocking(mpps.get_step, archive, uid)
    body = _step(step)
    body["performed_series"] = await blocking(mpps.performed_series, archive, step)
    body["dataset"] = step.dataset
    return JSONResponse(body)


async def list_commitments(request: Request) -> JSONResponse:
    """Storage commitment jobs, newest first (``state``, ``limit``)."""
    jobs = await blocking(
        commitment.list_jobs,
        archive_of(request),
        state=_choice(request, "state", _STATES),
        limit=_limit(request),
    )
    return JSONResponse([job.as_json() for job in jobs])


async def get_commitment(request: Request) -> JSONResponse:
    """One storage commitment job: state, attempts, committed and failed instances."""
    uid = path_uid(request, "uid", "Transaction UID")
    job = await blocking(commitment.get_job, archive_of(request), uid)
    return JSONResponse(job.as_json())


def routes() -> list[BaseRoute]:
    return [
        Route("/api/mpps", list_mpps, methods=["GET"]),
        Route("/api/mpps/{uid}", get_mpps, methods=["GET"]),
        Route("/api/commitments", list_commitments, methods=["GET"]),
        Route("/api/commitments/{uid}", get_commitment, methods=["GET"]),
    ]
