"""Modality Performed Procedure Step SCP over DIMSE (PS3.4 F.7.2): N-CREATE and N-SET
on the MPPS SOP Class. The rules are in :mod:`dicomvault.archive.mpps` and
:mod:`dicomvault.dicom.mpps`; this turns them into N-CREATE-RSP / N-SET-RSP statuses.

N-CREATE without an Affected SOP Instance UID gets one chosen by the archive and
returned in the response (PS3.7 10.1.5.1.3). Statuses: 0x0111 Duplicate SOP instance,
0x0120 Missing attribute, 0x0106 Invalid attribute value, 0x0112 No such SOP instance
(N-SET), 0x0110 + Error ID A710 for an N-SET after the step ended (PS3.4 F.7.2.2.2).
"""

from __future__ import annotations

import asyncio
import logging

from dicomvault.archive import Archive, audit
from dicomvault.archive import mpps as steps
from dicomvault.dicom.mpps import MppsError, parse_create, summary
from dicomvault.model.uid import uid_problem
from dicomvault.net import commands as c
from dicomvault.net.handlers import SUCCESS, DimseStatus, NRequest, NResponse

log = logging.getLogger("dicomvault.dimse")

#: Our root for UIDs we create (the implementation's own root, PS3.5 9).
_UID_ROOT = "2.25."


def _new_uid() -> str:
    import uuid

    return _UID_ROOT + str(uuid.uuid4().int)


class MppsHandler:
    """N-CREATE and N-SET of Modality Performed Procedure Step (PS3.4 F.7.2.1, F.7.2.2)."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive

    async def handle(self, request: NRequest) -> NResponse:
        try:
            if request.command_field == c.N_CREATE_RQ:
                return await self._create(request)
            return await self._set(request)
        except MppsError as exc:
            log.warning(
                "assoc=%s MPPS %s refused: %s",
                request.association.id,
                request.sop_instance_uid,
                exc,
            )
            return NResponse(DimseStatus(exc.status, str(exc)), error_id=exc.error_id)

    async def _create(self, request: NRequest) -> NResponse:
        uid = request.sop_instance_uid or _new_uid()
        problem = uid_problem(uid)
        if problem:
            raise MppsError(f"Affected SOP Instance UID {problem}", 0x0106)
        ds = parse_create(request.data_set, request.transfer_syntax_uid)
        await asyncio.to_thread(
            steps.create,
            self.archive,
            uid,
            ds,
            calling_ae_title=request.association.calling_ae_title,
        )
        step = summary(ds)
        audit.procedure_record(  # PS3.15 A.5.3.15, action C; queued
            self.archive, action="C", user=request.association.calling_ae_title,
            host=request.association.peer_host, patient_id=step.patient_id,
            study_uid=step.study_instance_uid,
            accession=next((s[1] for s in step.scheduled if s[1]), None),
            description=f"MPPS {uid} created {step.status}", ae=True, mpps_uid=uid,
        )  # fmt: skip
        log.info(
            "assoc=%s MPPS %s created IN PROGRESS by %s",
            request.association.id,
            uid,
            request.association.calling_ae_title,
        )
        return NResponse(SUCCESS, sop_instance_uid=uid)

    async def _set(self, request: NRequest) -> NResponse:
        status = await asyncio.to_thread(
            steps.update,
            self.archive,
            request.sop_instance_uid,
            request.data_set,
            request.transfer_syntax_uid,
        )
        done = await asyncio.to_thread(steps.get_step, self.archive, request.sop_instance_uid)
        audit.procedure_record(  # PS3.15 A.5.3.15, action U; queued
            self.archive, action="U", user=request.association.calling_ae_title,
            host=request.association.peer_host, patient_id=done.patient_id,
            study_uid=done.study_instance_uid, accession=done.accession_number,
            description=f"MPPS {request.sop_instance_uid} set {status}", ae=True,
            mpps_uid=request.sop_instance_uid,
        )  # fmt: skip
        log.info(
            "assoc=%s MPPS %s now %s", request.association.id, request.sop_instance_uid, status
        )
        return NResponse(SUCCESS)
