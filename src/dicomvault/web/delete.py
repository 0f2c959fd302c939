"""DELETE of studies, series and instances.

PS3.18's Studies Service defines no delete (its retired "Delete" of PS3.18 and the
Reject transactions aside); archives offer ``DELETE`` on the WADO-RS resource paths
(dcm4chee-arc, Orthanc's DICOMweb plugin) and dicomweb-client calls them
(``delete_study``, ``delete_series``, ``delete_instance``). Here:

- ``DELETE /studies/{study}``, ``…/series/{series}``, ``…/instances/{instance}``;
- the path's hierarchy is checked: a series that is not in that study, or an instance
  not in that series, is 404 like an unknown UID (nothing is deleted);
- one implementation with ``dicomvault delete`` and ``/api/…`` (``Archive.deletion``):
  the index rows go and the blobs are queued in one transaction, the blobs are removed
  after the commit, and a crash in between is finished at the next start-up, so no
  reader is ever handed a row whose blob is gone;
- a protected study (``dicomvault protect``) is 409 Conflict: the admin API's
  ``?force=true`` deletes it;
- success is ``204 No Content``; setting ``http.allow_delete = false`` answers 405 with
  an ``Allow`` header (dicomweb-client reports that as "may not support deletion").
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from dicomvault.archive.deletion import DeletionReport, Selection
from dicomvault.model.errors import AmbiguousTarget, Protected
from dicomvault.web.audit_api import audit_deleted, subjects_before_deleting
from dicomvault.web.common import archive_of, blocking, path_uid, settings_of
from dicomvault.web.errors import HTTPProblem

log = logging.getLogger("dicomvault.http")


def check_delete_allowed(request: Request, allow: str) -> None:
    """405 with ``Allow: allow`` when ``http.allow_delete`` is off."""
    if not settings_of(request).http.allow_delete:
        raise HTTPProblem(
            405,
            "deleting is disabled on this server (setting http.allow_delete)",
            headers={"Allow": allow},
        )


async def run_deletion(
    request: Request, selection: Selection, *, force: bool = False, dry_run: bool = False
) -> DeletionReport:
    """Delete (or plan, ``dry_run``) ``selection`` through the archive's deletion
    service, off the event loop.

    Raises
    ------
    HTTPProblem
        409 for a protected study without ``force``, 400 for an ambiguous patient.
    NotFound
        Nothing matches (404 through ``web/errors.py``).
    """
    deletion = archive_of(request).deletion
    try:
        if dry_run:
            return await blocking(deletion.plan, selection)
        subjects = await subjects_before_deleting(request, selection)
        report = await blocking(deletion.delete, selection, force=force)
        audit_deleted(request, selection, report, subjects)  # PS3.15 A.5.3.8
        return report
    except Protected as exc:
        raise HTTPProblem(409, str(exc)) from None
    except AmbiguousTarget as exc:
        raise HTTPProblem(400, str(exc)) from None


async def delete_study(request: Request) -> Response:
    """Delete a study: every instance of it, index rows then blobs.

    204 when done; 404 for an unknown study; 409 when it is protected; 405 when
    ``http.allow_delete`` is off.
    """
    check_delete_allowed(request, "GET, HEAD, POST")
    study = path_uid(request, "study", "Study Instance UID")
    report = await run_deletion(request, Selection("study", study))
    log.info("DELETE study %s: %d instance(s)", study, report.instances)
    return Response(status_code=204)


async def delete_series(request: Request) -> Response:
    """Delete a series of a study: every instance of it, index rows then blobs.

    204 when done; 404 when the series is unknown or not in that study; 409 when the
    study is protected; 405 when ``http.allow_delete`` is off.
    """
    check_delete_allowed(request, "GET, HEAD")
    study = path_uid(request, "study", "Study Instance UID")
    series = path_uid(request, "series", "Series Instance UID")
    report = await run_deletion(request, Selection("series", series, study=study))
    log.info("DELETE series %s of study %s: %d instance(s)", series, study, report.instances)
    return Response(status_code=204)


async def delete_instance(request: Request) -> Response:
    """Delete one instance, index row then blob.

    204 when done; 404 when the instance is unknown or not in that series and study;
    409 when the study is protected; 405 when ``http.allow_delete`` is off.
    """
    check_delete_allowed(request, "GET, HEAD")
    study = path_uid(request, "study", "Study Instance UID")
    series = path_uid(request, "series", "Series Instance UID")
    instance = path_uid(request, "instance", "SOP Instance UID")
    await run_deletion(request, Selection("instance", instance, study=study, series=series))
    log.info("DELETE instance %s of series %s, study %s", instance, series, study)
    return Response(status_code=204)


def routes() -> list[BaseRoute]:
    return [
        Route("/studies/{study}", delete_study, methods=["DELETE"]),
        Route("/studies/{study}/series/{series}", delete_series, methods=["DELETE"]),
        Route(
            "/studies/{study}/series/{series}/instances/{instance}",
            delete_instance,
            methods=["DELETE"],
        ),
    ]
