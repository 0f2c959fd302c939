"""Storage Commitment Push Model SCU (PS3.4 J.3): ask another archive to commit to
instances and wait for its N-EVENT-REPORT.

The report may come on the association of the request (we keep it open while we wait)
or on a new association the SCP opens to us (PS3.4 J.3.3): with ``listen_port`` we
accept it there, as the SCU of Storage Commitment taking the N-EVENT-REPORT, when the
SCP proposes the SCP role (SCP/SCU Role Selection, PS3.7 D.3.3.4).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl as _ssl
import uuid
from collections.abc import Sequence

from dicomvault.dicom.commitment import (
    REQUEST_COMMITMENT,
    CommitmentRequest,
    CommitmentResult,
    Reference,
    encode_commitment_request,
    parse_commitment_result,
)
from dicomvault.model.errors import CannotParse
from dicomvault.net import commands as c
from dicomvault.net.acceptor import serve
from dicomvault.net.errors import NetError
from dicomvault.net.handlers import SUCCESS, DimseStatus, NRequest, NResponse, ServiceRegistry
from dicomvault.net.negotiation import AcceptorPolicy
from dicomvault.net.requestor import associate
from dicomvault.net.uids import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    STORAGE_COMMITMENT_INSTANCE,
    STORAGE_COMMITMENT_PUSH,
)

log = logging.getLogger("dicomvault.dimse")


class CommitmentRefused(NetError):
    """The SCP answered the N-ACTION with a failure status."""


def new_transaction_uid() -> str:
    """A Transaction UID never used before (PS3.4 J.3.2.1.1): a UUID-derived UID."""
    return "2.25." + str(uuid.uuid4().int)


class _Waiter:
    """The N-EVENT-REPORT handler (both associations): resolves the transaction's future."""

    def __init__(self, transaction_uid: str) -> None:
        self.transaction_uid = transaction_uid
        self.result: asyncio.Future[CommitmentResult] = asyncio.get_running_loop().create_future()

    async def handle(self, request: NRequest) -> NResponse:
        try:
            result = parse_commitment_result(request.data_set, request.transfer_syntax_uid)
        except CannotParse as exc:
            return NResponse(DimseStatus(0x0110, str(exc)))
        if result.transaction_uid != self.transaction_uid:
            return NResponse(
                DimseStatus(0x0115, f"unknown Transaction UID {result.transaction_uid}")
            )
        if not self.result.done():
            self.result.set_result(result)
        return NResponse(SUCCESS)


async def request_commitment(
    host: str,
    port: int,
    references: Sequence[Reference],
    *,
    called_ae: str,
    calling_ae: str,
    timeout: float = 60.0,
    listen_port: int | None = None,
    listen_host: str = "0.0.0.0",
    ssl: _ssl.SSLContext | None = None,
    max_pdu: int = 262144,
) -> CommitmentResult:
    """Request Storage Commitment of ``references`` and return the SCP's result.

    Raises
    ------
    CommitmentRefused
        The N-ACTION was answered with a failure (its status and comment in the message).
    TimeoutError
        No report within ``timeout`` seconds.
    AssociationRejected, AssociationAborted, OSError
        As :func:`~dicomvault.net.requestor.associate`.
    """
    transaction = new_transaction_uid()
    waiter = _Waiter(transaction)
    registry = ServiceRegistry()
    registry.add_normalized(c.N_EVENT_REPORT_RQ, waiter, [STORAGE_COMMITMENT_PUSH])
    registry.scu_of.add(STORAGE_COMMITMENT_PUSH)
    stop = asyncio.Event()
    listener: asyncio.Task[None] | None = None
    if listen_port is not None:
        ready = asyncio.Event()
        listener = asyncio.ensure_future(
            serve(
                registry,
                AcceptorPolicy(ae_title=calling_ae, check_called_ae=False),
                host=listen_host,
                port=listen_port,
                ready=ready,
                stop=stop,
                logger=log,
                grace=2.0,
            )
        )
        await asyncio.wait([listener, asyncio.ensure_future(ready.wait())], timeout=timeout,
                           return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        if listener.done():
            listener.result()  # the port could not be bound: raise that
    try:
        async with associate(
            host,
            port,
            called_ae=called_ae,
            calling_ae=calling_ae,
            contexts=[
                (STORAGE_COMMITMENT_PUSH, [EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN])
            ],
            registry=registry,
            timeout=timeout,
            max_pdu=max_pdu,
            ssl=ssl,
            logger=log,
        ) as assoc:
            ctx = assoc.normalized_context(STORAGE_COMMITMENT_PUSH)
            if ctx is None:
                raise CommitmentRefused(f"{called_ae} does not offer Storage Commitment")
            answer = await assoc.n_request(
                c.N_ACTION_RQ,
                STORAGE_COMMITMENT_PUSH,
                STORAGE_COMMITMENT_INSTANCE,
                encode_commitment_request(
                    CommitmentRequest(transaction, tuple(references)), ctx.transfer_syntax
                ),
                type_id=REQUEST_COMMITMENT,
            )
            if answer.status.category != "success":
                raise CommitmentRefused(
                    f"N-ACTION answered 0x{answer.status.status:04X}"
                    + (f": {answer.status.error_comment}" if answer.status.error_comment else "")
                )
            log.info("commitment %s requested for %d instances", transaction, len(references))
            # The report comes on this association or, with a listener, on a new one.
            return await asyncio.wait_for(asyncio.shield(waiter.result), timeout)
    finally:
        stop.set()
        if listener is not None:
            with contextlib.suppress(Exception):
                await listener
