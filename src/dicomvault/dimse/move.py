"""C-MOVE SCP over the archive (PS3.4 C.4.2): sub-operations on a new association.

The Move Destination (0000,0600) is looked up among the ``[remotes.NAME]`` entries by AE
title; unknown is 0xA801. A sub-association to it (our requestor, calling AE = our
AE title) proposes, for each stored SOP class, one context per stored transfer syntax
alone (so the receiver can take the instance as stored) and one fall-back with
Explicit and Implicit VR Little Endian and the lossless compressed syntaxes we can
encode (:mod:`dicomvault.dicom.transcode`). Statuses: :mod:`dicomvault.dimse.status`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from dicomvault.archive import Archive, audit
from dicomvault.archive.anonymize import served_copies
from dicomvault.archive.remotes import effective_remotes
from dicomvault.config import RemoteAE
from dicomvault.dicom.transcode import LOSSLESS_ENCODINGS
from dicomvault.dimse.remote import associate_remote
from dicomvault.dimse.retrieve import SubOperations, run_sub_operations, select_instances
from dicomvault.dimse.status import (
    MOVE_DESTINATION_UNKNOWN,
)
from dicomvault.model.errors import ConfigError
from dicomvault.model.records import StoredInstance
from dicomvault.net.errors import NetError
from dicomvault.net.handlers import DimseStatus, QueryRequest, Response
from dicomvault.net.uids import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    PATIENT_ROOT_MOVE,
    STUDY_ROOT_MOVE,
)

log = logging.getLogger("dicomvault.dimse")

MOVE_SOP_CLASSES = [PATIENT_ROOT_MOVE, STUDY_ROOT_MOVE]
FALLBACK = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN, *LOSSLESS_ENCODINGS)


def sub_association_contexts(instances: Sequence[StoredInstance]) -> list[tuple[str, list[str]]]:
    """Presentation contexts for sending ``instances`` (PS3.4 C.4.2.2.1, B.2.1): each
    stored (SOP class, syntax) alone, then one fall-back per SOP class; at most 128."""
    own: dict[tuple[str, str], None] = {}
    classes: dict[str, None] = {}
    for inst in instances:
        own[(inst.sop_class_uid, inst.transfer_syntax_uid)] = None
        classes[inst.sop_class_uid] = None
    fallbacks = [(sop, list(FALLBACK)) for sop in classes]
    stored = [
        (sop, [ts])
        for sop, ts in own
        if ts not in (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)
    ]
    return (fallbacks + stored)[:128]


def find_destination(remotes: dict[str, RemoteAE], ae_title: str) -> RemoteAE | None:
    """The ``[remotes]`` entry whose AE title is ``ae_title`` (or whose name is); pass
    :func:`~dicomvault.archive.remotes.effective_remotes` to include those managed over
    HTTP."""
    for remote in remotes.values():
        if remote.ae_title == ae_title:
            return remote
    return remotes.get(ae_title)


class ArchiveMoveHandler:
    """C-MOVE SCP: :meth:`Archive.retrieve_instances`, then a sub-association."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive

    async def handle(self, request: QueryRequest) -> AsyncIterator[Response]:
        settings = self.archive.settings
        destination = request.move_destination or ""
        remote = find_destination(effective_remotes(self.archive), destination)
        if remote is None:
            yield Response(
                DimseStatus(
                    MOVE_DESTINATION_UNKNOWN, f"Move Destination {destination!r} is unknown"
                )
            )
            return
        instances = await select_instances(self.archive, request)
        if isinstance(instances, Response):
            yield instances
            return
        syntax = request.transfer_syntax_uid
        ops = SubOperations(len(instances))
        # Begin Transferring / Instances Transferred (PS3.15 A.5.3.3, A.5.3.7).
        who: dict[str, Any] = {
            "requestor": request.association.calling_ae_title,
            "requestor_host": request.association.peer_host,
            "destination": remote.ae_title,
            "destination_host": remote.host,
            "anonymized": True if remote.deidentify else None,  # A.5.2 Anonymized
        }
        audit.retrieve_started(self.archive, instances, **who)
        try:
            # PS3.15 B.12: a destination configured with tls = true gets its instances
            # over TLS, verified against tls.ca_certificates, with our certificate.
            async with associate_remote(
                settings, remote, sub_association_contexts(instances), logger=log
            ) as sub:
                async for response in run_sub_operations(
                    self.archive,
                    sub,
                    instances,
                    request,
                    move_originator=(request.association.calling_ae_title, request.message_id),
                    # A destination configured with deidentify = true gets de-identified
                    # copies only (PS3.15 Annex E).
                    deidentify=served_copies(self.archive) if remote.deidentify else None,
                ):
                    if not response.pending:
                        # Before the final yield: the service stops iterating after the
                        # final response, so code after it would never run.
                        audit.retrieve_finished(
                            self.archive, instances, failed=response.failed or 0, **who
                        )
                        yield response
                        return
                    yield response
        except (NetError, OSError, TimeoutError, ConfigError) as exc:
            log.warning(
                "assoc=%s C-MOVE to %s failed: %s",
                request.association.id,
                destination,
                exc or type(exc).__name__,
            )
            ops.fail_rest(instances, 0)
            audit.retrieve_finished(
                self.archive, instances, failed=len(instances), description=str(exc), **who
            )
            yield ops.final(syntax, f"{destination}: {exc or type(exc).__name__}")
