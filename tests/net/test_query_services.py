"""C-FIND / C-GET / C-CANCEL plumbing of the engine with test handlers (PS3.4 C.4)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from peers import PYDICOM_TEST_FILES, FileStoreHandler, ServerThread, dcmtk, start_server
from pydicom import Dataset, dcmread
from pydicom.filewriter import write_dataset
from pynetdicom import AE, build_role

from dicomvault.net import AcceptorPolicy, DimseStatus, RoleSelection, ServiceRegistry, associate
from dicomvault.net import commands as c
from dicomvault.net.handlers import SUCCESS, Matches, QueryRequest, Response
from dicomvault.net.uids import IMPLICIT_VR_LITTLE_ENDIAN, STUDY_ROOT_FIND, STUDY_ROOT_GET

CT = PYDICOM_TEST_FILES / "CT_small.dcm"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def encode(ds: Dataset, syntax: str = IMPLICIT_VR_LITTLE_ENDIAN) -> bytes:
    buf = BytesIO()
    from pydicom.filebase import DicomFileLike

    fp = DicomFileLike(buf)
    fp.is_little_endian = True
    fp.is_implicit_VR = syntax == IMPLICIT_VR_LITTLE_ENDIAN
    write_dataset(fp, ds)
    return buf.getvalue()


def decode(data: bytes, syntax: str) -> Dataset:
    from pydicom.filereader import read_dataset

    return read_dataset(BytesIO(data), syntax == IMPLICIT_VR_LITTLE_ENDIAN, True)


class Finder:
    """Yields ``count`` matches (``None``: forever, slowly) echoing the PatientID key."""

    def __init__(self, count: int | None, fail: bool = False) -> None:
        self.count = count
        self.fail = fail
        self.requests: list[QueryRequest] = []
        self.closed = asyncio.Event()

    async def handle(self, request: QueryRequest) -> AsyncIterator[Response]:
        self.requests.append(request)
        if self.fail:
            raise RuntimeError("index exploded")
        query = decode(request.identifier, request.transfer_syntax_uid)
        n = 0
        try:
            while self.count is None or n < self.count:
                ds = Dataset()
                ds.QueryRetrieveLevel = "STUDY"
                ds.PatientID = str(query.PatientID)
                ds.StudyInstanceUID = f"1.2.3.{n}"
                yield Response(DimseStatus(0xFF00), encode(ds, request.transfer_syntax_uid))
                n += 1
                if self.count is None:
                    await asyncio.sleep(0.01)
        finally:
            self.closed.set()
        yield Response(SUCCESS)


class Getter:
    """Sends CT_small ``count`` times on the requestor's association."""

    def __init__(self, count: int = 3) -> None:
        self.count = count

    async def handle(self, request: QueryRequest) -> AsyncIterator[Response]:
        assert request.channel is not None
        done = 0
        for i in range(self.count):
            if request.cancelled.is_set():
                yield Response(DimseStatus(0xFE00), None, self.count - i, done, 0, 0)
                return
            status = await request.channel.send_file(CT)  # type: ignore[attr-defined]
            done += status.status == 0
            yield Response(DimseStatus(0xFF00), None, self.count - i - 1, done, 0, 0)
        yield Response(SUCCESS, None, None, done, 0, 0)


def serve_with(finder: Finder | None = None, getter: Getter | None = None) -> ServerThread:
    registry = ServiceRegistry()
    registry.add_verification()
    if finder is not None:
        registry.add_query(c.C_FIND_RQ, finder, [STUDY_ROOT_FIND])
    if getter is not None:
        registry.add_query(c.C_GET_RQ, getter, [STUDY_ROOT_GET])
    return start_server(registry, AcceptorPolicy(ae_title="QR", idle_timeout=10, artim_timeout=2))


def _query() -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientID = "PAT1"
    ds.StudyInstanceUID = ""
    return ds


def test_find_streams_pending_responses() -> None:
    finder = Finder(40)
    srv = serve_with(finder)
    try:

        async def run() -> list[Response]:
            async with associate(
                "127.0.0.1",
                srv.port,
                called_ae="QR",
                contexts=[(STUDY_ROOT_FIND, [IMPLICIT_VR_LITTLE_ENDIAN])],
                extended_negotiation={STUDY_ROOT_FIND: b"\x01"},
                max_pdu=16384,
            ) as assoc:
                ctx = assoc.find_context(STUDY_ROOT_FIND)
                assert ctx is not None
                return [r async for r in assoc.find(STUDY_ROOT_FIND, encode(_query()))]

        responses = asyncio.run(run())
    finally:
        srv.close()
    assert [r.status.status for r in responses] == [0xFF00] * 40 + [0]
    assert decode(responses[5].identifier or b"", IMPLICIT_VR_LITTLE_ENDIAN).PatientID == "PAT1"
    assert finder.requests[0].relational  # byte 0 of the extended negotiation


class BigFinder:
    """Yields ``count`` matches of ~``size`` bytes, numbered, then Success; one
    ``Response`` each, or ``Matches`` of up to 64 with ``batched``."""

    def __init__(self, count: int, size: int, *, batched: bool = False) -> None:
        self.count = count
        self.size = size
        self.batched = batched

    async def handle(self, request: QueryRequest) -> AsyncIterator[Response | Matches]:
        ready: list[bytes] = []
        for n in range(self.count):
            ds = Dataset()
            ds.QueryRetrieveLevel = "STUDY"
            ds.StudyInstanceUID = f"1.2.3.{n}"
            # every 50th larger than the PDU: fragmented, the batch flushed before it
            ds.add_new(0x00091001, "UT", "x" * (self.size * (20 if n % 50 == 7 else 1)))
            identifier = encode(ds, request.transfer_syntax_uid)
            if not self.batched:
                yield Response(DimseStatus(0xFF00), identifier)
            elif len(ready := [*ready, identifier]) == 64 or n == self.count - 1:
                yield Matches(ready)
                ready = []
            if n % 100 == 99:
                await asyncio.sleep(0)  # the event loop turns: a batch goes out here
        yield Response(SUCCESS)


@pytest.mark.parametrize("batched", [False, True], ids=["responses", "matches"])
def test_find_many_pending_responses_batched_in_order(batched: bool) -> None:
    srv = serve_with(BigFinder(400, 1000, batched=batched))  # ~400 KB: several batches
    try:

        async def run() -> list[Response]:
            async with associate(
                "127.0.0.1",
                srv.port,
                called_ae="QR",
                contexts=[(STUDY_ROOT_FIND, [IMPLICIT_VR_LITTLE_ENDIAN])],
                max_pdu=16384,
            ) as assoc:
                return [r async for r in assoc.find(STUDY_ROOT_FIND, encode(_query()))]

        responses = asyncio.run(run())
    finally:
        srv.close()
    assert [r.status.status for r in responses] == [0xFF00] * 400 + [0]
    uids = [
        decode(r.identifier or b"", IMPLICIT_VR_LITTLE_ENDIAN).StudyInstanceUID
        for r in responses[:-1]
    ]
    assert uids == [f"1.2.3.{n}" for n in range(400)]


def find_association(port: int) -> Any:
    """Our requester on the test server, Study Root C-FIND in Implicit VR LE proposed."""
    return associate(
        "127.0.0.1",
        port,
        called_ae="QR",
        contexts=[(STUDY_ROOT_FIND, [IMPLICIT_VR_LITTLE_ENDIAN])],
    )


class Stalling:
    """One match, then nothing: the requester's DIMSE timeout has to end the wait, and
    the server's shutdown the handler (it never looks at ``request.cancelled``)."""

    def __init__(self) -> None:
        self.cancelled = False

    async def handle(self, request: QueryRequest) -> AsyncIterator[Response]:
        yield Response(DimseStatus(0xFF00), encode(_query()))
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        yield Response(SUCCESS)


def test_response_stream_times_out_and_aborts() -> None:
    stalling = Stalling()
    srv = serve_with(stalling)
    try:

        async def run() -> tuple[list[int], float, str]:
            async with find_association(srv.port) as assoc:
                seen: list[int] = []
                start = asyncio.get_running_loop().time()
                stream = assoc.find(STUDY_ROOT_FIND, encode(_query()), timeout=0.5)
                with pytest.raises(TimeoutError):
                    async for response in stream:
                        seen.append(response.status.status)
                waited = asyncio.get_running_loop().time() - start
                return seen, waited, assoc.fsm.state

        seen, waited, state = asyncio.run(run())
    finally:
        srv.close()
    assert seen == [0xFF00]
    assert 0.5 <= waited < 5
    assert state in ("Sta1", "Sta13")  # aborted: nothing more can come on it
    assert stalling.cancelled  # by the server's shutdown, not destroyed with its loop


def test_find_cancel_stops_the_handler() -> None:
    finder = Finder(None)
    srv = serve_with(finder)
    try:

        async def run() -> list[Response]:
            async with find_association(srv.port) as assoc:
                out = []
                stream = assoc.find(STUDY_ROOT_FIND, encode(_query()))
                async for response in stream:
                    out.append(response)
                    if len(out) == 3:
                        stream.cancel()
                return out

        responses = asyncio.run(run())
    finally:
        srv.close()
    assert responses[-1].status.status == 0xFE00
    assert all(r.status.status == 0xFF00 for r in responses[:-1])
    assert finder.closed.is_set()


def test_find_handler_failure_is_c311() -> None:
    srv = serve_with(Finder(1, fail=True))
    try:

        async def run() -> list[Response]:
            async with find_association(srv.port) as assoc:
                return [r async for r in assoc.find(STUDY_ROOT_FIND, encode(_query()))]

        responses = asyncio.run(run())
    finally:
        srv.close()
    assert [r.status for r in responses] == [DimseStatus(0xC311, "index exploded")]


@pytest.mark.dcmtk
def test_find_by_pynetdicom_and_findscu() -> None:
    srv = serve_with(Finder(5))
    try:
        ae = AE(ae_title="PYNET")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
        ae.add_requested_context(STUDY_ROOT_FIND)
        assoc = ae.associate("127.0.0.1", srv.port, ae_title="QR")
        assert assoc.is_established
        statuses = [s.Status for s, _ in assoc.send_c_find(_query(), STUDY_ROOT_FIND)]
        assoc.release()
        assert statuses == [0xFF00] * 5 + [0]
        run = dcmtk(
            "findscu", "-S", "-aec", "QR", "-k", "QueryRetrieveLevel=STUDY",
            "-k", "PatientID=X", "-k", "StudyInstanceUID", "127.0.0.1", str(srv.port),
            timeout=30,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert run.stderr.count("Find Response:") == 5 or run.stdout.count("(0020,000d)") >= 5
    finally:
        srv.close()


def test_get_sends_on_the_same_association(tmp_path: Path) -> None:
    srv = serve_with(getter=Getter(3))
    handler = FileStoreHandler(tmp_path)
    registry = ServiceRegistry()
    registry.add_store(handler)
    try:

        async def run() -> list[Response]:
            async with associate(
                "127.0.0.1",
                srv.port,
                called_ae="QR",
                contexts=[(STUDY_ROOT_GET, [IMPLICIT_VR_LITTLE_ENDIAN]), CT_STORAGE],
                roles=[RoleSelection(CT_STORAGE, False, True)],
                registry=registry,
            ) as assoc:
                return [r async for r in assoc.get(STUDY_ROOT_GET, encode(_query()))]

        responses = asyncio.run(run())
    finally:
        srv.close()
    assert responses[-1].status == SUCCESS and responses[-1].completed == 3
    assert [r.remaining for r in responses[:-1]] == [2, 1, 0]
    assert len(handler.by_uid()) == 1 and len(handler.received) == 3


def test_get_by_pynetdicom_with_role_selection() -> None:
    srv = serve_with(getter=Getter(2))
    received: list[str] = []
    try:
        from pynetdicom import evt

        def on_store(event: object) -> int:
            received.append(event.request.AffectedSOPInstanceUID)  # type: ignore[attr-defined]
            return 0

        ae = AE(ae_title="PYNET")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
        ae.add_requested_context(STUDY_ROOT_GET)
        ae.add_requested_context(CT_STORAGE)
        assoc = ae.associate(
            "127.0.0.1",
            srv.port,
            ae_title="QR",
            ext_neg=[build_role(CT_STORAGE, scp_role=True)],
            evt_handlers=[(evt.EVT_C_STORE, on_store)],
        )
        assert assoc.is_established
        statuses = [s.Status for s, _ in assoc.send_c_get(_query(), STUDY_ROOT_GET)]
        assoc.release()
    finally:
        srv.close()
    assert statuses[-1] == 0
    assert received == [dcmread(CT).SOPInstanceUID] * 2


@pytest.mark.parametrize("role", [True, False])
def test_role_selection_reply(role: bool) -> None:
    from dicomvault.net.handlers import AssociationInfo
    from dicomvault.net.items import PresentationContextRQ, UserInformation
    from dicomvault.net.negotiation import negotiate
    from dicomvault.net.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ

    registry = ServiceRegistry()
    if role:
        registry.add_query(c.C_GET_RQ, Getter(), [STUDY_ROOT_GET])
    rq = A_ASSOCIATE_RQ(
        "QR",
        "ME",
        [PresentationContextRQ(1, CT_STORAGE, [IMPLICIT_VR_LITTLE_ENDIAN])],
        UserInformation(
            max_length=0,
            implementation_class_uid="1.2",
            roles=[RoleSelection(CT_STORAGE, False, True)],
        ),
    )
    info = AssociationInfo("x", "", 0, "", "")
    ac = negotiate(rq, AcceptorPolicy(ae_title="QR"), registry, info)
    assert isinstance(ac, A_ASSOCIATE_AC)
    assert (ac.presentation_contexts[0].result == 0) is role
    if role:
        assert ac.user_information.roles == [RoleSelection(CT_STORAGE, False, True)]
        assert info.contexts[1].scp_role


@pytest.mark.dcmtk
def test_findscu_cancel() -> None:
    finder = Finder(None)
    srv = serve_with(finder)
    try:
        run = dcmtk(
            "findscu", "-S", "-v", "--cancel", "3", "-aec", "QR",
            "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=X",
            "127.0.0.1", str(srv.port), timeout=30,
        )  # fmt: skip
    finally:
        srv.close()
    assert run.returncode == 0, run.stderr
    assert "Final Find Response (Cancel: MatchingTerminatedDueToCancelRequest)" in run.stderr
    assert finder.closed.is_set()
