"""WADO-RS retrieval of de-identified copies (PS3.18 10.4.1.1.1-3 with PS3.15 Annex E) for
users whose role allows nothing else: permission ``retrieve_deidentified``, role
``researcher`` (archive/users.py). The Basic Application Level Confidentiality Profile with
the options of the ``deidentify.wado_*`` settings is applied to each instance as it is
sent; UIDs and pseudonyms come from the archive's secret, so every download of a study
gives the same de-identified study.

Differences from the identified retrieval (web/wado.py): each part is made in memory
(no zero-copy, no Content-Length for the whole answer), a requested transfer syntax is
produced by transcoding the de-identified file, and an instance with Burned In Annotation
YES refuses the whole request (409, naming it) unless ``deidentify.wado_allow_burned_in``
— decided before the response starts. Other routes (search, metadata, bulk data, frames,
rendered) are closed to these users in web/auth.py: they would show identities.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicomvault.archive import retrieval
from dicomvault.archive.anonymize import burned_in, deid_keys, deidentified_file, wado_options
from dicomvault.archive.users import Principal
from dicomvault.dicom.frames import can_transcode
from dicomvault.model.records import StoredInstance
from dicomvault.web.audit_api import audit_retrieve
from dicomvault.web.auth import AUTH_KEY
from dicomvault.web.caching import cache_headers, instances_tag, not_modified
from dicomvault.web.common import archive_of, blocking
from dicomvault.web.errors import HTTPProblem
from dicomvault.web.media import DICOM, MULTIPART_RELATED
from dicomvault.web.multipart import PART_END, closing, multipart_type, new_boundary, part_head

#: PS3.18 8.7.3.5: "*" as a transfer syntax: as stored.
ANY = "*"


def refuse_untranscodable(instances: Sequence[StoredInstance], syntax: str) -> None:
    """406 when one of ``instances`` cannot be sent in ``syntax`` (PS3.18 8.7.3.5: the
    server answers in an acceptable transfer syntax or not at all)."""
    if syntax == ANY:
        return
    for instance in instances:
        if not can_transcode(instance.transfer_syntax_uid, syntax):
            raise HTTPProblem(
                406,
                f"instance {instance.sop_instance_uid} is stored in "
                f"{instance.transfer_syntax_uid} and cannot be sent in {syntax}",
                available=[f'{MULTIPART_RELATED}; type="{DICOM}"; transfer-syntax=*'],
            )


PERMISSION = "retrieve_deidentified"


def deidentified_only(request: Request) -> bool:
    """Whether the request's user may retrieve de-identified copies and nothing more."""
    auth = request.scope.get(AUTH_KEY)
    return isinstance(auth, Principal) and auth.may(PERMISSION) and not auth.may("retrieve")


async def retrieve_deidentified(request: Request, uids: list[str], syntax: str) -> Response:
    """Retrieve Study / Series / Instance, each instance de-identified (module docstring).

    Raises
    ------
    HTTPProblem
        409 for an instance with burned-in annotation, 406 for a transfer syntax the
        stored one cannot be transcoded to; NotFound (404) as for any retrieval.
    """
    archive = archive_of(request)
    settings = archive.settings
    found = await blocking(retrieval.instances_of, archive, *uids, with_metadata=True)
    instances = [instance for instance, _ in found]
    if not settings.deidentify.wado_allow_burned_in:
        burned = [i.sop_instance_uid for i, metadata in found if burned_in(metadata)]
        if burned:
            raise HTTPProblem(
                409,
                f"instance {burned[0]} has Burned In Annotation YES: it cannot be "
                "de-identified (Clean Pixel Data is not provided)"
                + (f"; {len(burned) - 1} more" if len(burned) > 1 else ""),
                instances=burned,
            )
    refuse_untranscodable(instances, syntax)
    options = wado_options(settings)
    allow = settings.deidentify.wado_allow_burned_in
    # The de-identified bytes follow from the stored ones, the secret and the options.
    etag = instances_tag(instances, f"{DICOM};{syntax};deidentified;{options!r};{allow}")
    cached = not_modified(request, etag)
    if cached is not None:
        return cached
    keys = await blocking(deid_keys, settings)
    audit_retrieve(request, instances)  # Instances Transferred, per study (PS3.15 A.5.3.7)
    boundary = new_boundary()
    target = None if syntax == ANY else syntax

    async def body() -> AsyncIterator[bytes]:
        lead = b""
        for instance in instances:
            data = await blocking(
                deidentified_file, archive, instance, keys, options,
                transfer_syntax=target, allow_burned_in=allow,
            )  # fmt: skip
            sent = target or instance.transfer_syntax_uid
            head = part_head(
                boundary, f"{DICOM}; transfer-syntax={sent}", {"Content-Length": str(len(data))}
            )
            yield lead + head + data
            lead = PART_END
        yield lead + closing(boundary)

    params = {} if syntax == ANY else {"transfer_syntax": syntax}
    return StreamingResponse(
        body(), media_type=multipart_type(DICOM, boundary, **params), headers=cache_headers(etag)
    )
