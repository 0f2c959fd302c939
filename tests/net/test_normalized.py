"""DIMSE-N plumbing of the engine with test handlers (PS3.7 10): requests routed by
operation and SOP class, the response's command elements, an N-EVENT-REPORT sent by the
acceptor on the requestor's association, and what an unregistered operation gets."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from peers import ServerThread, start_server

from dicomvault.net import (
    SUCCESS,
    AcceptorPolicy,
    DimseStatus,
    NRequest,
    NResponse,
    ServiceRegistry,
    associate,
)
from dicomvault.net import commands as c
from dicomvault.net.service_user import ServiceUser

SOP = "1.2.840.10008.1.20.1"  # any DIMSE-N class will do; this one has N-ACTION + N-EVENT-REPORT
INSTANCE = "1.2.840.10008.1.20.1.1"
CONTEXT = [(SOP, ["1.2.840.10008.1.2.1"])]


class Recorder:
    """Answers every request with its data set reversed; on N-ACTION type 7 it also sends
    an N-EVENT-REPORT back on the same association."""

    def __init__(self) -> None:
        self.requests: list[NRequest] = []
        self.report_status: DimseStatus | None = None

    async def handle(self, request: NRequest) -> NResponse:
        self.requests.append(request)
        if request.type_id == 99:
            raise RuntimeError("handler exploded")
        if request.type_id == 7 and isinstance(request.channel, ServiceUser):
            asyncio.get_running_loop().create_task(self._report(request.channel))
        data = request.data_set[::-1] if request.data_set else None
        created = "1.2.3.4" if request.command_field == c.N_CREATE_RQ else None
        return NResponse(SUCCESS, data_set=data, sop_instance_uid=created)

    async def _report(self, assoc: ServiceUser) -> None:
        answer = await assoc.n_request(
            c.N_EVENT_REPORT_RQ, SOP, INSTANCE, b"\x08\x00\x95\x11\x02\x00\x00\x001\x00", type_id=1
        )
        self.report_status = answer.status


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def server(recorder: Recorder) -> Iterator[ServerThread]:
    registry = ServiceRegistry()
    for field in (c.N_ACTION_RQ, c.N_CREATE_RQ, c.N_SET_RQ):
        registry.add_normalized(field, recorder, [SOP])
    srv = start_server(registry, AcceptorPolicy(ae_title="SCP"))
    yield srv
    srv.close()


def test_requests_and_responses(server: ServerThread, recorder: Recorder) -> None:
    async def run() -> None:
        async with associate("127.0.0.1", server.port, called_ae="SCP", contexts=CONTEXT) as a:
            action = await a.n_request(c.N_ACTION_RQ, SOP, INSTANCE, b"\x01\x02", type_id=3)
            assert action.status == SUCCESS and action.data_set == b"\x02\x01"
            assert action.sop_instance_uid == INSTANCE
            created = await a.n_request(c.N_CREATE_RQ, SOP, None, b"\x05\x06")
            assert created.sop_instance_uid == "1.2.3.4"  # chosen by the SCP
            updated = await a.n_request(c.N_SET_RQ, SOP, "1.2.3.4", None)
            assert updated.status == SUCCESS and updated.data_set is None
            failed = await a.n_request(c.N_ACTION_RQ, SOP, INSTANCE, None, type_id=99)
            assert failed.status.status == 0x0110
            assert failed.status.error_comment == "handler exploded"
            # N-GET is not registered for the class: Unrecognized operation
            unknown = await a.n_request(c.N_GET_RQ, SOP, INSTANCE, None)
            assert unknown.status.status == 0x0211

    asyncio.run(run())
    action, created, updated, _ = recorder.requests
    assert (action.command_field, action.type_id, action.sop_instance_uid) == (
        c.N_ACTION_RQ, 3, INSTANCE
    )  # fmt: skip
    assert created.sop_instance_uid == "" and created.data_set == b"\x05\x06"
    assert updated.sop_class_uid == SOP and updated.data_set is None


def test_event_report_from_the_acceptor(server: ServerThread, recorder: Recorder) -> None:
    received: list[NRequest] = []

    class Sink:
        async def handle(self, request: NRequest) -> NResponse:
            received.append(request)
            return NResponse(SUCCESS)

    registry = ServiceRegistry()
    registry.add_normalized(c.N_EVENT_REPORT_RQ, Sink(), [SOP])

    async def run() -> None:
        async with associate(
            "127.0.0.1", server.port, called_ae="SCP", contexts=CONTEXT, registry=registry
        ) as a:
            await a.n_request(c.N_ACTION_RQ, SOP, INSTANCE, None, type_id=7)
            # Until the acceptor has our N-EVENT-REPORT-RSP (bounded: 10 s).
            for _ in range(500):
                if received and recorder.report_status is not None:
                    break
                await asyncio.sleep(0.02)

    asyncio.run(run())
    (report,) = received
    assert report.command_field == c.N_EVENT_REPORT_RQ and report.type_id == 1
    assert report.sop_instance_uid == INSTANCE and report.data_set is not None
    assert recorder.report_status == SUCCESS
