"""C-GET SCP over the archive (PS3.4 C.4.3): sub-operations on the same association.

The requestor must have proposed the storage SOP classes with the SCP role (SCP/SCU
Role Selection, PS3.7 D.3.3.4, PS3.4 C.4.3.1); the engine grants it when a C-GET
handler is registered. An instance whose SOP class the requestor accepted in no
syntax we can produce fails (0xA702 when all do, 0xB000 when some do), with the
Failed SOP Instance UID List; statuses: :mod:`dicomvault.dimse.status`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from dicomvault.archive import Archive, audit
from dicomvault.archive.anonymize import served_copies
from dicomvault.archive.remotes import effective_remotes
from dicomvault.dimse.retrieve import SubOperations, run_sub_operations, select_instances
from dicomvault.dimse.status import UNABLE_TO_PERFORM_SUB_OPERATIONS
from dicomvault.net.handlers import DimseStatus, QueryRequest, Response
from dicomvault.net.service_user import ServiceUser
from dicomvault.net.uids import PATIENT_ROOT_GET, STUDY_ROOT_GET

GET_SOP_CLASSES = [PATIENT_ROOT_GET, STUDY_ROOT_GET]


class ArchiveGetHandler:
    """C-GET SCP: :meth:`Archive.retrieve_instances`, C-STOREs on the same association."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive

    async def handle(self, request: QueryRequest) -> AsyncIterator[Response]:
        instances = await select_instances(self.archive, request)
        if isinstance(instances, Response):
            yield instances
            return
        channel = request.channel
        assert isinstance(channel, ServiceUser)
        if not any(ctx.scp_role for ctx in channel.accepted_contexts):
            ops = SubOperations(len(instances))
            ops.fail_rest(instances, 0)
            response = ops.final(request.transfer_syntax_uid)
            response.status = DimseStatus(
                UNABLE_TO_PERFORM_SUB_OPERATIONS,
                "no storage SOP class negotiated with the SCP role (PS3.4 C.4.3.1)",
            )
            yield response
            return
        assoc = request.association
        # Begin Transferring / Instances Transferred (PS3.15 A.5.3.3, A.5.3.7): the
        # requestor is the destination.
        # A requestor configured with deidentify = true (any entry with its AE title:
        # when in doubt, de-identify) gets de-identified copies only (PS3.15 Annex E).
        deidentify = any(
            remote.deidentify and remote.ae_title == assoc.calling_ae_title
            for remote in effective_remotes(self.archive).values()
        )
        who: dict[str, Any] = {
            "requestor": assoc.calling_ae_title,
            "requestor_host": assoc.peer_host,
            "destination": assoc.calling_ae_title,
            "destination_host": assoc.peer_host,
            "anonymized": True if deidentify else None,  # A.5.2 Anonymized
        }
        audit.retrieve_started(self.archive, instances, **who)
        async for response in run_sub_operations(
            self.archive,
            channel,
            instances,
            request,
            deidentify=served_copies(self.archive) if deidentify else None,
        ):
            if not response.pending:
                audit.retrieve_finished(
                    self.archive, instances, failed=response.failed or 0, **who
                )
            yield response
