"""Acceptor policy (PS3.8 7.1, PS3.7 D.3.3) and serving behaviour (uvloop, shutdown)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from peers import (
    PYDICOM_TEST_FILES,
    FileSink,
    FileStoreHandler,
    Received,
    dcmtk,
    needs_dcmtk,
    start_server,
)

from dicomvault import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dicomvault.net import (
    SUCCESS,
    AcceptorPolicy,
    AssociationAborted,
    AssociationInfo,
    DimseStatus,
    ServiceRegistry,
    StoreRequest,
    associate,
    contexts_for_files,
    negotiate,
    read_file_info,
    serve,
)
from dicomvault.net.items import PresentationContextRQ, RoleSelection, UserInformation
from dicomvault.net.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from dicomvault.net.uids import (
    DEFAULT_TRANSFER_SYNTAXES,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    JPEG_BASELINE,
    STORAGE_SOP_CLASSES,
    VERIFICATION,
)

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def _registry() -> ServiceRegistry:
    registry = ServiceRegistry()
    registry.add_verification()
    registry.add_store(FileStoreHandler(Path("/nonexistent")))
    return registry


def _rq(contexts: list[PresentationContextRQ], **kw: object) -> A_ASSOCIATE_RQ:
    info = UserInformation(max_length=32768, implementation_class_uid="1.2.3", **kw)  # type: ignore[arg-type]
    return A_ASSOCIATE_RQ("DICOMVAULT", "PEER", contexts, info)


def _info() -> AssociationInfo:
    return AssociationInfo("t-1", "127.0.0.1", 1, "", "")


def test_storage_classes_from_pydicom() -> None:
    assert CT_STORAGE in STORAGE_SOP_CLASSES
    assert "1.2.840.10008.5.1.4.1.1.104.1" in STORAGE_SOP_CLASSES  # Encapsulated PDF
    assert "1.2.840.10008.5.1.4.1.1.88.22" in STORAGE_SOP_CLASSES  # Enhanced SR
    assert len(STORAGE_SOP_CLASSES) > 150


def test_context_results_and_first_proposed_syntax() -> None:
    rq = _rq(
        [
            PresentationContextRQ(1, CT_STORAGE, [JPEG_BASELINE, EXPLICIT_VR_LITTLE_ENDIAN]),
            PresentationContextRQ(
                3, CT_STORAGE, ["1.2.840.10008.1.2.4.100", IMPLICIT_VR_LITTLE_ENDIAN]
            ),
            PresentationContextRQ(5, "1.2.840.10008.5.1.4.1.2.2.1", [IMPLICIT_VR_LITTLE_ENDIAN]),
            PresentationContextRQ(7, CT_STORAGE, ["1.2.840.10008.1.2.4.100"]),
            PresentationContextRQ(8, CT_STORAGE, [IMPLICIT_VR_LITTLE_ENDIAN]),  # even ID
            PresentationContextRQ(9, VERIFICATION, [IMPLICIT_VR_LITTLE_ENDIAN]),
        ]
    )
    info = _info()
    ac = negotiate(rq, AcceptorPolicy(), _registry(), info)
    assert isinstance(ac, A_ASSOCIATE_AC)
    results = {ctx.id: (ctx.result, ctx.transfer_syntax) for ctx in ac.presentation_contexts}
    assert results[1] == (0, JPEG_BASELINE)  # the peer's first choice we support
    assert results[3] == (0, IMPLICIT_VR_LITTLE_ENDIAN)
    assert results[5][0] == 3  # abstract syntax not supported (C-FIND not registered)
    assert results[7][0] == 4  # transfer syntaxes not supported
    assert results[8][0] == 2
    assert results[9] == (0, IMPLICIT_VR_LITTLE_ENDIAN)
    assert set(info.contexts) == {1, 3, 9}
    assert ac.user_information.max_length == 262144
    assert ac.user_information.implementation_class_uid == IMPLEMENTATION_CLASS_UID
    assert ac.user_information.implementation_version_name == IMPLEMENTATION_VERSION_NAME
    assert info.peer_max_pdu == 32768


def test_default_transfer_syntaxes() -> None:
    assert DEFAULT_TRANSFER_SYNTAXES[:2] == (IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN)
    assert len(DEFAULT_TRANSFER_SYNTAXES) == 13


@pytest.mark.parametrize(
    ("policy", "calling", "called", "expected"),
    [
        (AcceptorPolicy(), "PEER", "OTHER", (1, 1, 7)),
        (AcceptorPolicy(check_called_ae=False), "PEER", "OTHER", None),
        (AcceptorPolicy(calling_ae_allowed=lambda t: t == "GOOD"), "PEER", "DICOMVAULT", (1, 1, 3)),
        (AcceptorPolicy(calling_ae_allowed=lambda t: t == "GOOD"), "GOOD", "DICOMVAULT", None),
    ],
)
def test_ae_title_checks(
    policy: AcceptorPolicy, calling: str, called: str, expected: tuple[int, int, int] | None
) -> None:
    rq = A_ASSOCIATE_RQ(
        called,
        calling,
        [PresentationContextRQ(1, VERIFICATION, [IMPLICIT_VR_LITTLE_ENDIAN])],
        UserInformation(implementation_class_uid="1.2"),
    )
    out = negotiate(rq, policy, _registry(), _info())
    if expected is None:
        assert isinstance(out, A_ASSOCIATE_AC)
    else:
        assert isinstance(out, A_ASSOCIATE_RJ)
        assert (out.result, out.source, out.reason) == expected


def test_application_context_and_limit() -> None:
    rq = _rq([PresentationContextRQ(1, VERIFICATION, [IMPLICIT_VR_LITTLE_ENDIAN])])
    rq.application_context_name = "1.2.3"
    out = negotiate(rq, AcceptorPolicy(), _registry(), _info())
    assert isinstance(out, A_ASSOCIATE_RJ) and (out.result, out.source, out.reason) == (1, 1, 2)
    rq = _rq([PresentationContextRQ(1, VERIFICATION, [IMPLICIT_VR_LITTLE_ENDIAN])])
    out = negotiate(
        rq, AcceptorPolicy(max_associations=2), _registry(), _info(), active_associations=2
    )
    assert isinstance(out, A_ASSOCIATE_RJ) and (out.result, out.source, out.reason) == (2, 3, 2)


def test_roles_async_and_extended_negotiation() -> None:
    rq = _rq(
        [PresentationContextRQ(1, CT_STORAGE, [IMPLICIT_VR_LITTLE_ENDIAN])],
        async_ops_window=(8, 8),
        roles=[RoleSelection(CT_STORAGE, True, True), RoleSelection("1.2.9", True, True)],
        extended_negotiation={CT_STORAGE: b"\x02\x00\x03"},
    )
    info = _info()
    policy = AcceptorPolicy(extended_negotiation=lambda uid, app: app[:1])
    ac = negotiate(rq, policy, _registry(), info)
    assert isinstance(ac, A_ASSOCIATE_AC)
    assert ac.user_information.async_ops_window == (1, 1)
    assert ac.user_information.roles == [RoleSelection(CT_STORAGE, True, False)]
    assert ac.user_information.extended_negotiation == {CT_STORAGE: b"\x02"}
    assert info.extended_negotiation == {CT_STORAGE: b"\x02\x00\x03"}
    assert info.contexts[1].scu_role and not info.contexts[1].scp_role


@needs_dcmtk
def test_uvloop_server(handler: FileStoreHandler) -> None:
    registry = ServiceRegistry()
    registry.add_verification()
    registry.add_store(handler)
    srv = start_server(registry, AcceptorPolicy(artim_timeout=2), uvloop=True)
    try:
        ct = PYDICOM_TEST_FILES / "CT_small.dcm"
        result = dcmtk("storescu", "-aec", "DICOMVAULT", "--repeat", "5", "127.0.0.1", srv.port, ct)
        assert result.returncode == 0, result.stderr
        assert dcmtk("echoscu", "-aec", "DICOMVAULT", "127.0.0.1", srv.port).returncode == 0
    finally:
        srv.close()
    assert len(handler.received) == 5 and all(r.complete for r in handler.received)


class SlowSink(FileSink):
    async def finish(self) -> DimseStatus:  # type: ignore[override]
        await asyncio.sleep(0.5)
        return super().finish()


class SlowHandler(FileStoreHandler):
    def begin_store(self, request: StoreRequest) -> FileSink:
        record = Received(request, self.folder / f"{len(self.received)}.ds")
        self.received.append(record)
        return SlowSink(record, SUCCESS)


def test_graceful_shutdown_finishes_in_flight(store_dir: Path) -> None:
    """Stop while a C-STORE is being stored: its response still goes out, then the
    association is aborted and serve() returns (PS3.8 7.3 A-ABORT after the last reply)."""
    handler = SlowHandler(store_dir)
    registry = ServiceRegistry()
    registry.add_store(handler)
    ct = PYDICOM_TEST_FILES / "CT_small.dcm"

    async def run() -> tuple[int, bool]:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.setblocking(False)
        port = sock.getsockname()[1]
        stop, ready = asyncio.Event(), asyncio.Event()
        server = asyncio.ensure_future(
            serve(
                registry,
                AcceptorPolicy(artim_timeout=2),
                sock=sock,
                ready=ready,
                stop=stop,
                grace=5,
            )
        )
        await ready.wait()
        aborted = False
        async with associate(
            "127.0.0.1",
            port,
            called_ae="DICOMVAULT",
            contexts=contexts_for_files([read_file_info(ct)]),
        ) as assoc:
            sending = asyncio.ensure_future(assoc.send_file(ct))
            await asyncio.sleep(0.2)
            stop.set()
            status = await sending
            try:
                await assoc.send_file(ct, timeout=2)
            except AssociationAborted:
                aborted = True
        await asyncio.wait_for(server, 5)
        return status.status, aborted

    code, aborted = asyncio.run(run())
    assert code == 0
    assert aborted
    assert handler.received[0].complete
