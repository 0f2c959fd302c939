"""The archive's Query/Retrieve SCP (PS3.4 C.4) against DCMTK findscu/movescu/getscu and
pynetdicom: FIND, MOVE, GET, and every refusal the standard names."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from peers import PYDICOM_TEST_FILES, FileStoreHandler, dcmtk, free_port, start_server
from pydicom import Dataset, dcmread
from pynetdicom import AE, build_role, evt
from pynetdicom.pdu_primitives import SOPClassExtendedNegotiation
from qr_peers import AbortingDestination, archive_server, qr_settings, storescp

from dicomvault.net import (
    SUCCESS,
    AcceptorPolicy,
    DimseStatus,
    Response,
    ServiceRegistry,
    StoreHandler,
    StoreRequest,
)

CT = PYDICOM_TEST_FILES / "CT_small.dcm"
MR = PYDICOM_TEST_FILES / "MR_small.dcm"
MR_RLE = PYDICOM_TEST_FILES / "MR_small_RLE.dcm"
MR_J2K = PYDICOM_TEST_FILES / "MR_small_jp2klossless.dcm"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
PATIENT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_GET = "1.2.840.10008.5.1.4.1.2.2.3"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def _ae() -> AE:
    ae = AE(ae_title="PYNET")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    return ae


def _study(uid: str = "") -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = uid
    ds.PatientID = ""
    return ds


@pytest.mark.dcmtk
def test_findscu_study_and_image_levels(tmp_path: Path) -> None:
    with archive_server(qr_settings(tmp_path, {}), [CT, MR]) as (_, port):
        out = tmp_path / "found"
        out.mkdir()
        run = dcmtk(
            "findscu", "-S", "-aec", "DICOMVAULT", "-X", "-od", out,
            "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID", "-k", "PatientID",
            "-k", "PatientName", "127.0.0.1", str(port),
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        found = {dcmread(p).StudyInstanceUID for p in out.iterdir()}
        assert found == {dcmread(CT).StudyInstanceUID, dcmread(MR).StudyInstanceUID}
        ct = dcmread(CT)
        run = dcmtk(
            "findscu", "-P", "-aec", "DICOMVAULT", "-X", "-od", out,
            "-k", "QueryRetrieveLevel=IMAGE", "-k", f"PatientID={ct.PatientID}",
            "-k", f"StudyInstanceUID={ct.StudyInstanceUID}",
            "-k", f"SeriesInstanceUID={ct.SeriesInstanceUID}", "-k", "SOPInstanceUID",
            "127.0.0.1", str(port),
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert ct.SOPInstanceUID in {str(dcmread(p).get("SOPInstanceUID")) for p in out.iterdir()}


def test_pynetdicom_find_relational_and_bad_identifier(tmp_path: Path) -> None:
    with archive_server(qr_settings(tmp_path, {}), [CT, MR]) as (_, port):
        ae = _ae()
        ae.add_requested_context(STUDY_FIND)
        ext = SOPClassExtendedNegotiation()
        ext.sop_class_uid = STUDY_FIND
        ext.service_class_application_information = b"\x01"
        assoc = ae.associate("127.0.0.1", port, ae_title="DICOMVAULT", ext_neg=[ext])
        assert assoc.is_established
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.SOPInstanceUID = dcmread(CT).SOPInstanceUID  # a key below the level: relational
        query.StudyInstanceUID = ""
        results = list(assoc.send_c_find(query, STUDY_FIND))
        assert [s.Status for s, _ in results] == [0xFF00, 0]
        assert results[0][1].StudyInstanceUID == dcmread(CT).StudyInstanceUID
        bad = Dataset()
        bad.PatientID = "x"  # no Query/Retrieve Level
        results = list(assoc.send_c_find(bad, STUDY_FIND))
        assoc.release()
        status = results[-1][0]
        assert status.Status == 0xA900 and status.ErrorComment


def test_find_cap_is_a700_with_comment(tmp_path: Path) -> None:
    with archive_server(qr_settings(tmp_path, {}, max_results=1), [CT, MR]) as (_, port):
        ae = _ae()
        ae.add_requested_context(PATIENT_FIND)
        assoc = ae.associate("127.0.0.1", port, ae_title="DICOMVAULT")
        query = _study()
        results = list(assoc.send_c_find(query, STUDY_FIND if False else PATIENT_FIND))
        assoc.release()
    assert [s.Status for s, _ in results] == [0xFF00, 0xA700]
    assert "narrow" in results[-1][0].ErrorComment


def test_queries_share_a_few_threads(tmp_path: Path) -> None:
    """30 C-FINDs in a row run on the pool's threads, not one new thread per query,
    and each still answers its own matches."""
    import threading

    from dicomvault.dimse.query_threads import THREADS

    def find_threads() -> set[int]:
        return {t.ident or 0 for t in threading.enumerate() if t.name.startswith("c-find")}

    ct = dcmread(CT)
    with archive_server(qr_settings(tmp_path, {}), [CT, MR]) as (_, port):
        ae = _ae()
        ae.add_requested_context(STUDY_FIND)
        assoc = ae.associate("127.0.0.1", port, ae_title="DICOMVAULT")
        seen: set[int] = set()
        for n in range(30):
            query = _study(ct.StudyInstanceUID if n % 2 else "")
            found = [ds.StudyInstanceUID for s, ds in assoc.send_c_find(query, STUDY_FIND) if ds]
            assert len(found) == (1 if n % 2 else 2)
            seen |= find_threads()
        assoc.release()
    assert 1 <= len(seen) <= THREADS


@pytest.mark.dcmtk
def test_movescu_to_storescp_with_transcoding(tmp_path: Path) -> None:
    dest_port = free_port()
    received = tmp_path / "received"
    received.mkdir()
    settings = qr_settings(tmp_path, {"DEST": dest_port})
    with (
        archive_server(settings, [CT, MR_RLE, MR_J2K]) as (archive, port),
        storescp(received, dest_port),
    ):
        before = archive.stats()
        run = dcmtk(
            "movescu", "-S", "-aec", "DICOMVAULT", "-aem", "DEST",
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={_uids(CT, MR_RLE, MR_J2K)}",
            "127.0.0.1", str(port),
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert archive.stats() == before
    files = [dcmread(p) for p in received.iterdir()]
    assert {f.SOPInstanceUID for f in files} == {
        dcmread(p).SOPInstanceUID for p in (CT, MR_RLE, MR_J2K)
    }
    for ds in files:  # storescp accepts only uncompressed syntaxes by default
        assert not ds.file_meta.TransferSyntaxUID.is_compressed
        if ds.SOPInstanceUID == dcmread(MR_RLE).SOPInstanceUID:
            assert (ds.pixel_array == dcmread(MR).pixel_array).all()


def _uids(*paths: Path) -> str:
    return "\\".join(sorted({dcmread(p).StudyInstanceUID for p in paths}))


def _move(port: int, destination: str, uid: str) -> list[tuple[Dataset, Dataset | None]]:
    ae = _ae()
    ae.add_requested_context(STUDY_MOVE)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMVAULT")
    assert assoc.is_established
    try:
        return list(assoc.send_c_move(_study(uid), destination, STUDY_MOVE))
    finally:
        assoc.release()


def test_move_unknown_destination_is_a801(tmp_path: Path) -> None:
    with archive_server(qr_settings(tmp_path, {}), [CT]) as (archive, port):
        before = archive.stats()
        results = _move(port, "NOWHERE", dcmread(CT).StudyInstanceUID)
        assert archive.stats() == before
    status = results[-1][0]
    assert status.Status == 0xA801 and "NOWHERE" in status.ErrorComment


def test_move_to_our_scp_and_refusing_destination(tmp_path: Path) -> None:
    received = tmp_path / "got"
    received.mkdir()
    handler = FileStoreHandler(received)
    accepting = ServiceRegistry()
    accepting.add_store(handler)
    refusing = ServiceRegistry()  # accepts the association, supports no SOP class
    refusing.add_verification()
    good = start_server(accepting, AcceptorPolicy(ae_title="GOOD", artim_timeout=2))
    bad = start_server(refusing, AcceptorPolicy(ae_title="BAD", artim_timeout=2))
    settings = qr_settings(tmp_path, {"GOOD": good.port, "BAD": bad.port})
    try:
        with archive_server(settings, [CT, MR]) as (archive, port):
            uid = dcmread(CT).StudyInstanceUID
            results = _move(port, "GOOD", uid)
            assert results[-1][0].Status == 0
            assert results[-1][0].NumberOfCompletedSuboperations == 1
            request = handler.received[0].request
            assert request.move_originator_ae_title == "PYNET"
            before = archive.stats()
            results = _move(port, "BAD", uid)
            assert archive.stats() == before
            from click.testing import CliRunner

            from dicomvault.cli.main import cli

            target = f"DICOMVAULT@127.0.0.1:{port}"
            result = CliRunner().invoke(
                cli, ["move", target, "--dest", "BAD", "-k", f"StudyInstanceUID={uid}"]
            )
            assert result.exit_code == 1
            assert "0xA702" in result.output
            assert f"failed: {dcmread(CT).SOPInstanceUID}" in result.output
    finally:
        good.close()
        bad.close()
    final, identifier = results[-1]
    assert final.Status == 0xA702 and final.NumberOfFailedSuboperations == 1
    assert "1 of 1 sub-operations failed" in final.ErrorComment
    assert identifier is not None
    assert identifier.FailedSOPInstanceUIDList == dcmread(CT).SOPInstanceUID


def test_move_destination_aborting_half_way(tmp_path: Path) -> None:
    dest = AbortingDestination(after=20000)
    settings = qr_settings(tmp_path, {"DYING": dest.port})
    try:
        with archive_server(settings, [CT, MR, MR_RLE]) as (_, port):
            ae = _ae()
            ae.add_requested_context(STUDY_MOVE)
            assoc = ae.associate("127.0.0.1", port, ae_title="DICOMVAULT")
            query = _study(_uids(CT, MR, MR_RLE))
            results = list(assoc.send_c_move(query, "DYING", STUDY_MOVE))
            assoc.release()
    finally:
        dest.close()
    final, identifier = results[-1]
    assert final.Status in (0xA702, 0xB000)
    assert final.NumberOfFailedSuboperations >= 1 and "receiver lost" in final.ErrorComment
    assert identifier is not None


@pytest.mark.dcmtk
def test_getscu(tmp_path: Path) -> None:
    out = tmp_path / "got"
    out.mkdir()
    with archive_server(qr_settings(tmp_path, {}), [CT, MR]) as (_, port):
        run = dcmtk(
            "getscu", "-S", "-aec", "DICOMVAULT", "-od", out,
            "-k", "QueryRetrieveLevel=STUDY",
            "-k", f"StudyInstanceUID={dcmread(MR).StudyInstanceUID}",
            "127.0.0.1", str(port),
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
    assert [dcmread(p).SOPInstanceUID for p in out.iterdir()] == [dcmread(MR).SOPInstanceUID]


def test_pynetdicom_get_with_and_without_storage_role(tmp_path: Path) -> None:
    got: list[str] = []

    def on_store(event: evt.Event) -> int:
        got.append(event.dataset.SOPInstanceUID)
        return 0

    with archive_server(qr_settings(tmp_path, {}), [CT, MR_J2K]) as (archive, port):
        ae = _ae()
        ae.add_requested_context(STUDY_GET)
        ae.add_requested_context(CT_STORAGE)
        ae.add_requested_context(MR_STORAGE)
        assoc = ae.associate(
            "127.0.0.1",
            port,
            ae_title="DICOMVAULT",
            ext_neg=[build_role(CT_STORAGE, scp_role=True), build_role(MR_STORAGE, scp_role=True)],
            evt_handlers=[(evt.EVT_C_STORE, on_store)],
        )
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = [dcmread(CT).StudyInstanceUID, dcmread(MR_J2K).StudyInstanceUID]
        results = list(assoc.send_c_get(query, STUDY_GET))
        assoc.release()
        assert results[-1][0].Status == 0, results[-1][0]
        assert sorted(got) == sorted(dcmread(p).SOPInstanceUID for p in (CT, MR_J2K))

        before = archive.stats()
        ae = _ae()
        ae.add_requested_context(STUDY_GET)
        assoc = ae.associate("127.0.0.1", port, ae_title="DICOMVAULT")
        results = list(assoc.send_c_get(query, STUDY_GET))
        assoc.release()
        assert archive.stats() == before
    final = results[-1][0]
    assert final.Status == 0xA702 and "SCP role" in final.ErrorComment
    assert final.NumberOfFailedSuboperations == 2


def test_our_scu_against_our_scp(tmp_path: Path) -> None:
    from dicomvault.net import RoleSelection, associate

    received = tmp_path / "r"
    received.mkdir()
    handler = FileStoreHandler(received)
    registry = ServiceRegistry()
    registry.add_store(handler)
    with archive_server(qr_settings(tmp_path, {}), [CT, MR]) as (_, port):

        async def run() -> int:
            from pydicom.filebase import DicomBytesIO
            from pydicom.filewriter import write_dataset

            async with associate(
                "127.0.0.1",
                port,
                called_ae="DICOMVAULT",
                contexts=[(STUDY_GET, ["1.2.840.10008.1.2"]), CT_STORAGE, MR_STORAGE],
                roles=[
                    RoleSelection(CT_STORAGE, False, True),
                    RoleSelection(MR_STORAGE, False, True),
                ],
                registry=registry,
            ) as assoc:
                fp = DicomBytesIO()
                fp.is_little_endian, fp.is_implicit_VR = True, True
                query = _study(dcmread(CT).StudyInstanceUID)
                write_dataset(fp, query)
                responses = [r async for r in assoc.get(STUDY_GET, fp.getvalue())]
                return responses[-1].completed or 0

        assert asyncio.run(run()) == 1
    assert len(handler.by_uid()) == 1


class SlowSink:
    def __init__(self) -> None:
        self.done = False

    def write(self, chunk: memoryview) -> None:
        pass

    async def finish(self) -> DimseStatus:
        await asyncio.sleep(0.2)
        return SUCCESS

    def abort(self) -> None:
        pass


class SlowStore:
    def begin_store(self, request: StoreRequest) -> SlowSink:
        return SlowSink()


GET_FILES = [CT, MR, PYDICOM_TEST_FILES / "rtplan.dcm", PYDICOM_TEST_FILES / "rtdose.dcm"]


def _get_all(
    tmp_path: Path, store: StoreHandler, pending_interval: float, *, cancel_after: int = 0
) -> list[Response]:
    """C-GET of GET_FILES' studies with our SCU into ``store``; C-CANCEL after the
    ``cancel_after``-th response (0: never)."""
    from dicomvault.net import RoleSelection, associate

    registry = ServiceRegistry()
    registry.add_store(store)
    classes = sorted({str(dcmread(p).SOPClassUID) for p in GET_FILES})
    settings = qr_settings(tmp_path, {})
    settings.dicom.get_pending_interval = pending_interval
    with archive_server(settings, GET_FILES) as (_, port):

        async def run() -> list[Response]:
            async with associate(
                "127.0.0.1",
                port,
                called_ae="DICOMVAULT",
                contexts=[(STUDY_GET, ["1.2.840.10008.1.2"]), *classes],
                roles=[RoleSelection(uid, False, True) for uid in classes],
                registry=registry,
            ) as assoc:
                out: list[Response] = []
                stream = assoc.get(STUDY_GET, _implicit(_study(_uids(*GET_FILES))))
                async for response in stream:
                    out.append(response)
                    if len(out) == cancel_after:
                        stream.cancel()
                return out

        return asyncio.run(run())


def test_get_cancel_answers_fe00_with_counts(tmp_path: Path) -> None:
    # A pending response after every sub-operation, to cancel after the first.
    responses = _get_all(tmp_path, SlowStore(), 0, cancel_after=1)
    final = responses[-1]
    assert final.status.status == 0xFE00
    assert final.completed is not None and final.completed < len(GET_FILES)
    assert final.remaining is not None and final.remaining > 0


@pytest.mark.parametrize("interval", [0, 3600])
def test_get_pending_responses_every_interval(tmp_path: Path, interval: float) -> None:
    """Pending C-GET responses are optional (PS3.4 C.4.3.3.1): one after every
    sub-operation with an interval of 0, none in a retrieve shorter than the interval."""
    (tmp_path / "r").mkdir()
    responses = _get_all(tmp_path, FileStoreHandler(tmp_path / "r"), interval)
    pending = [(r.remaining, (r.completed or 0) + (r.failed or 0)) for r in responses if r.pending]
    assert pending == ([(3, 1), (2, 2), (1, 3)] if interval == 0 else [])
    final = responses[-1]
    assert not final.pending and (final.completed or 0) + (final.failed or 0) == 4


def test_move_sends_a_pending_response_per_sub_operation(tmp_path: Path) -> None:
    """A C-MOVE's requester sees nothing else of the retrieve: its pending responses are
    not thinned out like a C-GET's (dicom.get_pending_interval)."""
    (tmp_path / "got").mkdir()
    accepting = ServiceRegistry()
    accepting.add_store(FileStoreHandler(tmp_path / "got"))
    good = start_server(accepting, AcceptorPolicy(ae_title="GOOD", artim_timeout=2))
    files = [CT, MR, PYDICOM_TEST_FILES / "rtplan.dcm"]
    settings = qr_settings(tmp_path, {"GOOD": good.port})
    settings.dicom.get_pending_interval = 3600
    try:
        with archive_server(settings, files) as (_, port):
            results = _move(port, "GOOD", _uids(*files))
    finally:
        good.close()
    statuses = [status for status, _ in results]
    assert [s.Status for s in statuses] == [0xFF00, 0xFF00, 0]
    assert [s.NumberOfRemainingSuboperations for s in statuses[:2]] == [2, 1]


def test_move_compresses_for_a_destination_taking_only_rle(tmp_path: Path) -> None:
    received = tmp_path / "got"
    received.mkdir()
    handler = FileStoreHandler(received)
    registry = ServiceRegistry()
    registry.add_store(handler)
    rle_only = start_server(
        registry,
        AcceptorPolicy(ae_title="RLEONLY", transfer_syntaxes=("1.2.840.10008.1.2.5",)),
    )
    try:
        with archive_server(qr_settings(tmp_path, {"RLEONLY": rle_only.port}), [CT]) as (_, port):
            results = _move(port, "RLEONLY", dcmread(CT).StudyInstanceUID)
    finally:
        rle_only.close()
    assert results[-1][0].Status == 0
    [record] = handler.received
    assert record.request.transfer_syntax_uid == "1.2.840.10008.1.2.5"


def _implicit(ds: Dataset) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_dataset(fp, ds)
    return bytes(fp.getvalue())


def test_cli_get_into_the_local_archive_and_find(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from dicomvault.cli.main import cli

    local = tmp_path / "local"
    with archive_server(qr_settings(tmp_path, {}), [CT, MR]) as (_, port):
        target = f"DICOMVAULT@127.0.0.1:{port}"
        runner = CliRunner()
        result = runner.invoke(
            cli,
            ["get", target, "-k", f"StudyInstanceUID={_uids(CT, MR)}", "--data-dir", str(local)],
        )
        assert result.exit_code == 0, result.output
        assert "completed" in result.output
        result = runner.invoke(cli, ["find", target, "-k", "PatientID", "-k", "StudyDate", "--csv"])
        assert result.exit_code == 0, result.output
        assert len(result.output.splitlines()) == 3
        result = runner.invoke(
            cli, ["move", target, "--dest", "NOWHERE", "-k", "StudyInstanceUID=1.2"]
        )
        assert result.exit_code == 1 and "0xA801" in result.output
    from dicomvault.archive import Archive
    from dicomvault.config import load_settings

    with Archive.open(load_settings(None, {"storage": {"path": local}})) as archive:
        assert archive.stats().instances == 2


@pytest.mark.dcmtk
def test_movescu_receiving_itself_with_port(tmp_path: Path) -> None:
    own_port = free_port()
    out = tmp_path / "self"
    out.mkdir()
    with archive_server(qr_settings(tmp_path, {"MOVESCU": own_port}), [CT, MR]) as (_, port):
        run = dcmtk(
            "movescu", "-S", "-aet", "MOVESCU", "-aec", "DICOMVAULT", "--port", str(own_port),
            "-od", out, "-k", "QueryRetrieveLevel=STUDY",
            "-k", f"StudyInstanceUID={_uids(CT)}", "127.0.0.1", str(port),
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
    assert [dcmread(p).SOPInstanceUID for p in out.iterdir()] == [dcmread(CT).SOPInstanceUID]
