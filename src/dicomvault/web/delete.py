"""DELETE of studies, series and instances.

PS3.18's Studies Service defines no delete (its retired "Delete" of PS3.18 and the
Reject transactions aside); archives offer ``DELETE`` on the WADO-RS resource paths
(dcm4chee-arc, Orthanc's DICOMweb plugin) and dicomweb-client calls them
(``delete_study``, ``delete_series``, ``delete_instance``). Here:

- ``DELETE /studies/{study}``, ``…/series/{series}``, ``…/instances/{instance}``;
- the path's hierarchy is checked: a series that is not in that study, or an instance
  not in that series, is 404 like an unknown UID (nothing is deleted);
- index rows go first, then blobs (``Archive.delete_*``), so no reader is ever handed
  a row whose blob is gone, and a crash in between leaves only orphan blobs, which
  ``dicomvault verify --repair`` and start-up recovery remove;
- success is ``204 No Content``; setting ``http.allow_delete = false`` answers 405 with
  an ``Allow`` header (dicomweb-client reports that as "may not support deletion").
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from dicomvault.archive import Archive
from dicomvault.model.errors import NotFound
from dicomvault.model.query import InformationModel, Level, Query, QueryKey
from dicomvault.web.common import archive_of, blocking, path_uid, settings_of
from dicomvault.web.errors import HTTPProblem

log = logging.getLogger("dicomvault.http")

_STUDY = QueryKey(0x0020000D, "StudyInstanceUID", "UI", None)
_SERIES = QueryKey(0x0020000E, "SeriesInstanceUID", "UI", None)


def _allowed(request: Request, allow: str) -> None:
    if not settings_of(request).http.allow_delete:
        raise HTTPProblem(
            405,
            "deleting is disabled on this server (setting http.allow_delete)",
            headers={"Allow": allow},
        )


def _delete_series(archive: Archive, study: str, series: str) -> int:
    """Delete ``series`` after checking that it is in ``study``."""
    query = Query(
        InformationModel.STUDY_ROOT,
        Level.SERIES,
        (
            QueryKey(_STUDY.tag, _STUDY.keyword, _STUDY.vr, study),
            QueryKey(_SERIES.tag, _SERIES.keyword, _SERIES.vr, series),
        ),
    )
    if not archive.retrieve_instances(query):
        raise NotFound(f"no series {series} in study {study}")
    return archive.delete_series(series)


def _delete_instance(archive: Archive, study: str, series: str, instance: str) -> int:
    """Delete ``instance`` after checking that it is in ``series`` of ``study``."""
    stored = archive.get_instance(instance)  # NotFound when unknown
    if stored.study_instance_uid != study or stored.series_instance_uid != series:
        raise NotFound(f"no instance {instance} in series {series} of study {study}")
    if not archive.delete_instances([instance]):
        raise NotFound(f"no instance with SOP Instance UID {instance}")
    return 1


async def delete_study(request: Request) -> Response:
    """Delete a study: every instance of it, index rows then blobs.

    204 when done; 404 for an unknown study; 405 when ``http.allow_delete`` is off.
    """
    _allowed(request, "GET, HEAD, POST")
    study = path_uid(request, "study", "Study Instance UID")
    archive = archive_of(request)
    count = await blocking(archive.delete_study, study)
    log.info("DELETE study %s: %d instance(s)", study, count)
    return Response(status_code=204)


async def delete_series(request: Request) -> Response:
    """Delete a series of a study: every instance of it, index rows then blobs.

    204 when done; 404 when the series is unknown or not in that study; 405 when
    ``http.allow_delete`` is off.
    """
    _allowed(request, "GET, HEAD")
    study = path_uid(request, "study", "Study Instance UID")
    series = path_uid(request, "series", "Series Instance UID")
    count = await blocking(_delete_series, archive_of(request), study, series)
    log.info("DELETE series %s of study %s: %d instance(s)", series, study, count)
    return Response(status_code=204)


async def delete_instance(request: Request) -> Response:
    """Delete one instance, index row then blob.

    204 when done; 404 when the instance is unknown or not in that series and study;
    405 when ``http.allow_delete`` is off.
    """
    _allowed(request, "GET, HEAD")
    study = path_uid(request, "study", "Study Instance UID")
    series = path_uid(request, "series", "Series Instance UID")
    instance = path_uid(request, "instance", "SOP Instance UID")
    await blocking(_delete_instance, archive_of(request), study, series, instance)
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
