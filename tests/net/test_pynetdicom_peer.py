"""pynetdicom 3.0.4 as requestor against our acceptor, and as acceptor for our requestor.

Known pynetdicom race (not ours): its requestor can lose a fast response and then wait for
its DIMSE timeout; timeouts are short and each exchange is retried once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from peers import (
    PYDICOM_TEST_FILES,
    FileStoreHandler,
    ServerThread,
    data_set_bytes,
    free_port,
    pynetdicom_associate,
    start_server,
)
from pydicom import dcmread
from pynetdicom import AE, build_role, evt
from pynetdicom.pdu_primitives import (
    AsynchronousOperationsWindowNegotiation,
    UserIdentityNegotiation,
)

from dicomvault.net import (
    AcceptorPolicy,
    AssociationInfo,
    RoleSelection,
    ServiceRegistry,
    UserIdentity,
    associate,
)
from dicomvault.net.uids import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN, VERIFICATION

CT = PYDICOM_TEST_FILES / "CT_small.dcm"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def _pynetdicom_ae() -> AE:
    ae = AE(ae_title="PYNETDICOM")
    ae.acse_timeout = 5
    ae.dimse_timeout = 5
    ae.network_timeout = 5
    return ae


def _retry(action: Callable[[], Any]) -> Any:
    try:
        return action()
    except (AssertionError, AttributeError):  # the pynetdicom race: its reply got lost
        return action()


def test_pynetdicom_echo_and_store(server: ServerThread, handler: FileStoreHandler) -> None:
    ae = _pynetdicom_ae()
    ae.add_requested_context(VERIFICATION)
    ae.add_requested_context(
        CT_IMAGE_STORAGE, [EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN]
    )

    def exchange() -> None:
        assoc = ae.associate("127.0.0.1", server.port, ae_title="DICOMVAULT")
        assert assoc.is_established
        try:
            assert assoc.send_c_echo().Status == 0
            status = assoc.send_c_store(dcmread(CT))
            assert status.Status == 0
        finally:
            assoc.release()

    _retry(exchange)
    record = handler.received[-1]
    assert record.complete
    assert record.request.transfer_syntax_uid == EXPLICIT_VR_LITTLE_ENDIAN
    assert record.request.association.peer_implementation_class_uid.startswith(
        "1.2.826.0.1.3680043.9.3811"
    )


def test_pynetdicom_async_ops_roles_and_identity(store_dir: Path) -> None:
    seen: list[tuple[UserIdentity, AssociationInfo]] = []

    def identity(ident: UserIdentity, info: AssociationInfo) -> bytes:
        seen.append((ident, info))
        return b"welcome"

    handler = FileStoreHandler(store_dir)
    registry = ServiceRegistry()
    registry.add_verification()
    registry.add_store(handler)
    srv = start_server(registry, AcceptorPolicy(artim_timeout=2, user_identity=identity))
    try:
        ae = _pynetdicom_ae()
        ae.add_requested_context(VERIFICATION)
        ae.add_requested_context(CT_IMAGE_STORAGE, [IMPLICIT_VR_LITTLE_ENDIAN])
        async_ops = AsynchronousOperationsWindowNegotiation()
        async_ops.maximum_number_operations_invoked = 5
        async_ops.maximum_number_operations_performed = 5
        user = UserIdentityNegotiation()
        user.user_identity_type = 2
        user.primary_field = b"alice"
        user.secondary_field = b"secret"
        user.positive_response_requested = True
        role = build_role(CT_IMAGE_STORAGE, scu_role=True, scp_role=True)

        def exchange() -> None:
            assoc = ae.associate(
                "127.0.0.1", srv.port, ae_title="DICOMVAULT", ext_neg=[async_ops, user, role]
            )
            assert assoc.is_established
            try:
                acceptor = assoc.acceptor
                assert acceptor.asynchronous_operations == (1, 1)
                assert acceptor.user_identity is not None
                # Username and passcode: a positive response with an empty server
                # response (PS3.7 D.3.3.7.2); the policy's bytes are for types 3-5.
                assert acceptor.user_identity.server_response == b""
                assert assoc.send_c_store(dcmread(CT)).Status == 0
            finally:
                assoc.release()

        _retry(exchange)
    finally:
        srv.close()
    ident, info = seen[0]
    assert (ident.type, ident.primary_field, ident.secondary_field) == (2, b"alice", b"secret")
    assert info.calling_ae_title == "PYNETDICOM"
    assert handler.received[-1].path.read_bytes() != b""


def test_user_identity_refused(store_dir: Path) -> None:
    registry = ServiceRegistry()
    registry.add_verification()
    srv = start_server(
        registry, AcceptorPolicy(artim_timeout=2, user_identity=lambda ident, info: False)
    )
    try:
        ae = _pynetdicom_ae()
        ae.add_requested_context(VERIFICATION)
        user = UserIdentityNegotiation()
        user.user_identity_type = 1
        user.primary_field = b"mallory"
        assoc = pynetdicom_associate(ae, srv.port, ae_title="DICOMVAULT", ext_neg=[user])
        assert assoc.is_rejected
    finally:
        srv.close()


@pytest.fixture
def pynetdicom_scp(tmp_path: Path) -> Iterator[tuple[int, list[Any]]]:
    received: list[Any] = []

    def on_store(event: Any) -> int:
        received.append(
            (
                event.context.transfer_syntax,
                event.request.AffectedSOPInstanceUID,
                bytes(event.request.DataSet.getvalue()),
            )
        )
        return 0x0000

    ae = _pynetdicom_ae()
    ae.add_supported_context(VERIFICATION)
    ae.add_supported_context(
        CT_IMAGE_STORAGE, [EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN]
    )
    port = free_port()
    scp = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        yield port, received
    finally:
        scp.shutdown()


def test_our_requestor_to_pynetdicom(pynetdicom_scp: tuple[int, list[Any]]) -> None:
    port, received = pynetdicom_scp

    async def run() -> None:
        async with associate(
            "127.0.0.1",
            port,
            called_ae="ANY-SCP",
            contexts=[VERIFICATION, (CT_IMAGE_STORAGE, [EXPLICIT_VR_LITTLE_ENDIAN])],
            max_pdu=16384,
            timeout=10,
        ) as assoc:
            assert (await assoc.echo()).status == 0
            assert (await assoc.send_file(CT)).status == 0

    asyncio.run(run())
    syntax, uid, data = received[-1]
    assert syntax == EXPLICIT_VR_LITTLE_ENDIAN
    assert uid == dcmread(CT, stop_before_pixels=True).SOPInstanceUID
    assert data == data_set_bytes(CT)


def test_our_requestor_identity_and_roles_to_pynetdicom() -> None:
    seen: list[tuple[int, bytes, bytes]] = []

    def on_user_id(event: Any) -> tuple[bool, bytes]:
        seen.append((event.user_id_type, event.primary_field, event.secondary_field))
        return True, b"hello"

    ae = _pynetdicom_ae()
    ae.add_supported_context(VERIFICATION)
    ae.add_supported_context(
        CT_IMAGE_STORAGE, [EXPLICIT_VR_LITTLE_ENDIAN], scu_role=True, scp_role=True
    )
    port = free_port()
    scp = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_USER_ID, on_user_id)]
    )

    async def run() -> tuple[int, bytes | None, list[RoleSelection]]:
        async with associate(
            "127.0.0.1",
            port,
            called_ae="ANY-SCP",
            contexts=[VERIFICATION, (CT_IMAGE_STORAGE, [EXPLICIT_VR_LITTLE_ENDIAN])],
            user_identity=UserIdentity(5, True, b"a.jwt.token"),
            roles=[RoleSelection(CT_IMAGE_STORAGE, True, True)],
            timeout=10,
        ) as assoc:
            assert assoc.ac is not None
            info = assoc.ac.user_information
            return (await assoc.echo()).status, info.user_identity_response, info.roles

    try:
        status, response, roles = asyncio.run(run())
    finally:
        scp.shutdown()
    assert status == 0
    assert seen == [(5, b"a.jwt.token", b"")]
    assert response == b"hello"
    assert roles == [RoleSelection(CT_IMAGE_STORAGE, True, True)]
