"""DICOM access control (issue "Security", part 2; PS3.8 7.1.1.3, 9.3.4, Table 9-18;
PS3.7 C.5) against real peers on 127.0.0.1: pynetdicom and DCMTK.

Every server here but the regression one sets ``security.trust_loopback = false`` so that
a peer on 127.0.0.1 is treated as a remote one.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

_TESTS = Path(__file__).resolve().parent.parent
for _folder in ("net", "dimse"):
    if str(_TESTS / _folder) not in sys.path:
        sys.path.insert(0, str(_TESTS / _folder))

from peers import PYDICOM_TEST_FILES, dcmtk, pynetdicom_associate  # noqa: E402
from pydicom import Dataset, dcmread  # noqa: E402
from pynetdicom import AE, build_role, evt  # noqa: E402
from pynetdicom.association import Association as PynetAssociation  # noqa: E402
from qr_peers import archive_server  # noqa: E402

from dicomvault.config import Settings, load_settings  # noqa: E402
from dicomvault.dimse.access import AccessControl, Grant, is_loopback, permission_for  # noqa: E402
from dicomvault.net import DimseStatus, RoleSelection, associate  # noqa: E402
from dicomvault.net.handlers import AssociationInfo  # noqa: E402

CT = PYDICOM_TEST_FILES / "CT_small.dcm"
VERIFICATION = "1.2.840.10008.1.1"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_GET = "1.2.840.10008.5.1.4.1.2.2.3"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"


def _settings(tmp_path: Path, toml: str, **security: Any) -> Settings:
    """Settings written as a user writes them: a TOML file (remotes), plus overrides."""
    config = tmp_path / "dicomvault.toml"
    config.write_text(toml)
    return load_settings(
        config,
        {
            "storage": {"path": tmp_path / "data", "fsync": False},
            "dicom": {"host": "127.0.0.1", "port": 0, "idle_timeout": 10, "artim_timeout": 2},
            "security": {"trust_loopback": False, **security},
        },
    )


@contextmanager
def _server(settings: Settings, files: tuple[Path, ...] = (CT,)) -> Iterator[int]:
    with archive_server(settings, list(files)) as (_, port):
        yield port


def _ae(title: str) -> AE:
    ae = AE(ae_title=title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    return ae


def _associate(
    port: int, title: str, contexts: tuple[str, ...], **kwargs: Any
) -> tuple[PynetAssociation, list[Any]]:
    """Associate with pynetdicom; also return the A-ASSOCIATE primitives received."""
    ae = _ae(title)
    for uid in contexts:
        ae.add_requested_context(uid, [EXPLICIT_LE, IMPLICIT_LE])
    received: list[Any] = []
    handlers = [(evt.EVT_ACSE_RECV, lambda event: received.append(event.primitive))]
    assoc = pynetdicom_associate(ae, port, ae_title="DICOMVAULT", evt_handlers=handlers, **kwargs)
    return assoc, received


def _study_query() -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    ds.PatientID = ""
    return ds


def _find_statuses(assoc: PynetAssociation) -> list[int]:
    return [int(status.Status) for status, _ in assoc.send_c_find(_study_query(), STUDY_FIND)]


def _result(assoc: PynetAssociation, uid: str) -> int | None:
    for cx in assoc.rejected_contexts:
        if cx.abstract_syntax == uid:
            return int(cx.result)
    return None


def _rejection(received: list[Any]) -> tuple[int, int, int]:
    rj = next(p for p in received if getattr(p, "result", None) in (1, 2))
    return int(rj.result), int(rj.result_source), int(rj.diagnostic)


# -- decisions without a network ------------------------------------------------------


def test_permission_map() -> None:
    assert permission_for(VERIFICATION, False) == "echo"
    assert permission_for(CT_STORAGE, False) == "store"
    assert permission_for(CT_STORAGE, True) == "get"  # C-GET sub-operations to the peer
    assert permission_for(STUDY_FIND, False) == "find"
    assert permission_for(STUDY_MOVE, False) == "move"
    assert permission_for(STUDY_GET, False) == "get"
    assert permission_for("1.2.840.10008.5.1.4.31", False) == "worklist"
    assert permission_for("1.2.840.10008.1.20.1", False) == "commit"
    assert permission_for("1.2.840.10008.3.1.2.3.3", False) == "mpps"
    assert permission_for("1.2.3.4", False) is None
    # A SOP class that maps to no permission is only for peers holding every permission.
    assert not Grant(frozenset({"echo", "store"}))("1.2.3.4", False)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("::ffff:127.0.0.2")
    assert not is_loopback("10.9.9.9")


def test_host_names_resolve_off_the_loop(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        '[remotes.ws]\nae_title = "WS"\nhost = "localhost"\nport = 104\ncheck_host = true\n'
        'permissions = ["echo"]\n',
    )
    control = AccessControl(settings)
    verdict = control(AssociationInfo("t", "127.0.0.1", 5000, "WS", "DICOMVAULT"))
    assert asyncio.iscoroutine(verdict)  # a name: resolved in the executor, not inline
    grant = asyncio.run(verdict)
    assert isinstance(grant, Grant) and grant.permissions == frozenset({"echo"})


# -- unknown calling AEs ----------------------------------------------------------------


def test_unknown_ae_may_echo_and_store_but_not_find(tmp_path: Path) -> None:
    with _server(_settings(tmp_path, "")) as port:
        assoc, _ = _associate(port, "STRANGER", (VERIFICATION, CT_STORAGE, STUDY_FIND))
        try:
            assert assoc.is_established
            accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
            assert accepted == {VERIFICATION, CT_STORAGE}
            assert _result(assoc, STUDY_FIND) == 1  # user-rejection (PS3.8 Table 9-18)
            assert int(assoc.send_c_echo().Status) == 0
            assert int(assoc.send_c_store(dcmread(CT)).Status) == 0
            with pytest.raises(ValueError):  # pynetdicom: no accepted context for it
                _find_statuses(assoc)
        finally:
            assoc.release()


@pytest.mark.dcmtk
def test_unknown_ae_with_dcmtk(tmp_path: Path) -> None:
    with _server(_settings(tmp_path, ""), ()) as port:
        echo = dcmtk("echoscu", "-aet", "STRANGER", "-aec", "DICOMVAULT", "127.0.0.1", str(port))
        assert echo.returncode == 0, echo.stderr
        store = dcmtk("storescu", "-aet", "STRANGER", "-aec", "DICOMVAULT",
                      "127.0.0.1", str(port), CT)  # fmt: skip
        assert store.returncode == 0, store.stderr
        find = dcmtk("findscu", "-S", "-aet", "STRANGER", "-aec", "DICOMVAULT",
                     "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID",
                     "127.0.0.1", str(port))  # fmt: skip
        assert find.returncode != 0
        assert "No Acceptable Presentation Contexts" in find.stdout + find.stderr


def test_unknown_ae_rejected_when_unknown_permissions_empty(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with _server(_settings(tmp_path, "", unknown_ae_permissions=[])) as port:
        with caplog.at_level(logging.WARNING, logger="dicomvault.dimse"):
            assoc, received = _associate(port, "STRANGER", (VERIFICATION,))
        assert assoc.is_rejected
        # rejected-permanent, service-user, calling-AE-title-not-recognized (PS3.8 9.3.4)
        assert _rejection(received) == (1, 1, 3)
    text = caplog.text
    assert "'STRANGER' from 127.0.0.1" in text and "not recognized" in text


@pytest.mark.dcmtk
def test_unknown_ae_rejected_with_dcmtk(tmp_path: Path) -> None:
    with _server(_settings(tmp_path, "", unknown_ae_permissions=[]), ()) as port:
        echo = dcmtk("echoscu", "-aet", "STRANGER", "-aec", "DICOMVAULT", "127.0.0.1", str(port))
        assert echo.returncode != 0
        assert "Calling AE Title Not Recognized" in echo.stdout + echo.stderr


# -- configured AEs --------------------------------------------------------------------

_WORKSTATION = """
[remotes.ws]
ae_title = "WS"
host = "{host}"
port = 104
permissions = {permissions}
check_host = {check_host}
"""


def _ws(host: str = "127.0.0.1", permissions: str = '["echo", "find"]', check: bool = False) -> str:
    return _WORKSTATION.format(host=host, permissions=permissions, check_host=str(check).lower())


def test_known_ae_may_find_but_not_store(tmp_path: Path) -> None:
    with _server(_settings(tmp_path, _ws(), unknown_ae_permissions=[])) as port:
        assoc, _ = _associate(port, "WS", (VERIFICATION, CT_STORAGE, STUDY_FIND))
        try:
            assert assoc.is_established
            accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
            assert accepted == {VERIFICATION, STUDY_FIND}
            assert _result(assoc, CT_STORAGE) == 1
            statuses = _find_statuses(assoc)
            assert statuses[-1] == 0 and statuses.count(0xFF00) == 1  # the one study
        finally:
            assoc.release()


@pytest.mark.dcmtk
def test_known_ae_with_dcmtk(tmp_path: Path) -> None:
    with _server(_settings(tmp_path, _ws())) as port:
        find = dcmtk("findscu", "-S", "-aet", "WS", "-aec", "DICOMVAULT",
                     "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID",
                     "127.0.0.1", str(port))  # fmt: skip
        assert find.returncode == 0, find.stderr
        store = dcmtk("storescu", "-aet", "WS", "-aec", "DICOMVAULT", "127.0.0.1", str(port), CT)
        assert store.returncode != 0


def test_check_host_wrong_host_rejected(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with _server(_settings(tmp_path, _ws("10.9.9.9", check=True))) as port:
        with caplog.at_level(logging.WARNING, logger="dicomvault.dimse"):
            assoc, received = _associate(port, "WS", (VERIFICATION,))
        assert assoc.is_rejected
        assert _rejection(received) == (1, 1, 3)
    assert "host did not match [remotes.ws] 10.9.9.9" in caplog.text
    assert "'WS' from 127.0.0.1" in caplog.text


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_check_host_right_host_accepted(tmp_path: Path, host: str) -> None:
    with _server(_settings(tmp_path, _ws(host, check=True), unknown_ae_permissions=[])) as port:
        assoc, _ = _associate(port, "WS", (VERIFICATION,))
        try:
            assert assoc.is_established
            assert int(assoc.send_c_echo().Status) == 0
        finally:
            assoc.release()


def test_check_host_with_extra_hosts(tmp_path: Path) -> None:
    toml = _ws("10.9.9.9", check=True) + 'hosts = ["10.9.9.10", "127.0.0.1"]\n'
    with _server(_settings(tmp_path, toml)) as port:
        assoc, _ = _associate(port, "WS", (VERIFICATION,))
        try:
            assert assoc.is_established
        finally:
            assoc.release()


def test_get_only_ae_gets_but_may_not_store(tmp_path: Path) -> None:
    """A C-GET's C-STORE sub-operations are part of ``get``; the same storage context
    may not carry the peer's own C-STOREs: a request that arrives on it anyway is
    answered 0x0124 Refused: Not Authorized (PS3.7 C.5)."""
    with _server(_settings(tmp_path, _ws(permissions='["get"]'))) as port:
        ae = _ae("WS")
        ae.add_requested_context(STUDY_GET, [EXPLICIT_LE])
        ae.add_requested_context(CT_STORAGE, [EXPLICIT_LE, IMPLICIT_LE])
        received: list[Dataset] = []

        def on_store(event: Any) -> int:
            received.append(event.dataset)
            return 0

        assoc = ae.associate(
            "127.0.0.1", port, ae_title="DICOMVAULT",
            ext_neg=[build_role(CT_STORAGE, scu_role=True, scp_role=True)],
            evt_handlers=[(evt.EVT_C_STORE, on_store)],
        )  # fmt: skip
        try:
            assert assoc.is_established
            query = _study_query()
            query.StudyInstanceUID = dcmread(CT).StudyInstanceUID
            statuses = [int(s.Status) for s, _ in assoc.send_c_get(query, STUDY_GET)]
            assert statuses[-1] == 0 and len(received) == 1
        finally:
            assoc.release()

        async def store_anyway() -> DimseStatus:
            # Our own requestor does not hold back a C-STORE on a context whose SCU role
            # was refused; pynetdicom would.
            async with associate(
                "127.0.0.1", port, called_ae="DICOMVAULT", calling_ae="WS",
                contexts=[(CT_STORAGE, [EXPLICIT_LE])],
                roles=[RoleSelection(CT_STORAGE, True, True)],
            ) as ours:  # fmt: skip
                ctx = ours.accepted_contexts[0]
                assert (ctx.scu_role, ctx.scp_role) == (False, True)
                return await ours.send_file(CT)

        status = asyncio.run(store_anyway())
        assert status.status == 0x0124
        assert status.error_comment and "may not use" in status.error_comment


def test_move_only_to_configured_destinations(tmp_path: Path) -> None:
    with _server(_settings(tmp_path, _ws(permissions='["move"]'))) as port:
        assoc, _ = _associate(port, "WS", (STUDY_MOVE,))
        try:
            assert assoc.is_established
            query = _study_query()
            query.StudyInstanceUID = dcmread(CT).StudyInstanceUID
            statuses = [int(s.Status) for s, _ in assoc.send_c_move(query, "NOWHERE", STUDY_MOVE)]
            assert statuses[-1] == 0xA801  # Move Destination unknown (PS3.4 C.4.2.1.4)
        finally:
            assoc.release()


# -- the defaults ----------------------------------------------------------------------


def test_loopback_trusted_by_default(tmp_path: Path) -> None:
    """Regression: with the default settings a peer on 127.0.0.1 keeps every service,
    whatever its AE title (and even with unknown_ae_permissions = [])."""
    settings = load_settings(
        None,
        {
            "storage": {"path": tmp_path / "data", "fsync": False},
            "dicom": {"host": "127.0.0.1", "port": 0, "idle_timeout": 10, "artim_timeout": 2},
            "security": {"unknown_ae_permissions": []},
        },
    )
    assert settings.security.trust_loopback
    with _server(settings) as port:
        assoc, _ = _associate(port, "ANYONE", (VERIFICATION, CT_STORAGE, STUDY_FIND, STUDY_GET))
        try:
            assert assoc.is_established
            assert len(assoc.accepted_contexts) == 4
            assert _find_statuses(assoc)[-1] == 0
        finally:
            assoc.release()


def test_allowed_calling_aes_still_applies(tmp_path: Path) -> None:
    """``dicom.allowed_calling_aes`` is an extra allow-list, checked for every peer."""
    settings = _settings(tmp_path, _ws(permissions='["echo"]'))
    settings.dicom.allowed_calling_aes = ["OTHER"]
    with _server(settings) as port:
        assoc, received = _associate(port, "WS", (VERIFICATION,))
        assert assoc.is_rejected
        assert _rejection(received) == (1, 1, 3)
