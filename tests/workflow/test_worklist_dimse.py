"""The Modality Worklist C-FIND SCP (PS3.4 K.4.1, K.6.1) over a running server: DCMTK
``findscu -W`` (keys and query files), DCMTK's ``wlmscpfs`` on its own sample worklist as
the reference for the same queries, and pynetdicom for statuses, character sets, C-CANCEL
and the refusals."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom import Dataset, config
from pydicom.dataelem import DataElement
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ModalityWorklistInformationFind,
    Verification,
)

from dicomvault.archive import worklist as wl
from tests.web.conftest import WebServer, start_web, web_settings

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
DCMTK_EXAMPLES = Path("/usr/share/doc/dcmtk/examples")


def dcmtk(tool: str, *args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    if not os.path.exists(f"/usr/bin/{tool}"):
        raise AssertionError(f"/usr/bin/{tool} is missing: install DCMTK (apt-get install dcmtk)")
    return subprocess.run(
        [f"/usr/bin/{tool}", *map(str, args)],
        env=DCMTK_ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[WebServer]:
    yield from start_web(web_settings(tmp_path))


def item(
    patient_id: str,
    *,
    name: str = "DOE^JOHN",
    modality: str = "CT",
    station: str = "CT1",
    date: str = "20250310",
    time_: str = "0930",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "PatientID": patient_id,
        "PatientName": name,
        "ScheduledProcedureStepSequence": [
            {
                "Modality": modality,
                "ScheduledStationAETitle": station,
                "ScheduledProcedureStepStartDate": date,
                "ScheduledProcedureStepStartTime": time_,
                "ScheduledProcedureStepID": f"S-{patient_id}",
            }
        ],
        **extra,
    }


def responses(directory: Path) -> list[Dataset]:
    return [pydicom.dcmread(f) for f in sorted(directory.glob("rsp*.dcm"))]


def _ae() -> AE:
    ae = AE(ae_title="MODALITY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(ModalityWorklistInformationFind)
    return ae


def mwl_find(port: int, query: Dataset) -> list[tuple[int, Dataset | None, str | None]]:
    """(status, identifier, error comment) of every response to one C-FIND."""
    assoc = _ae().associate("127.0.0.1", port, ae_title="DICOMVAULT")
    assert assoc.is_established
    try:
        out = []
        for status, identifier in assoc.send_c_find(query, ModalityWorklistInformationFind):
            assert status is not None, "no response"
            out.append((int(status.Status), identifier, status.get("ErrorComment")))
        return out
    finally:
        assoc.release()


def sps_query(**step: str) -> Dataset:
    query = Dataset()
    query.PatientName = ""
    query.PatientID = ""
    sps = Dataset()
    for keyword, value in step.items():
        setattr(sps, keyword, value)
    query.ScheduledProcedureStepSequence = [sps]
    return query


# -- DCMTK findscu -W ---------------------------------------------------------------------


@pytest.mark.dcmtk
def test_findscu_with_keys(server: WebServer, tmp_path: Path) -> None:
    wl.add_item(server.archive, item("P1", station="CT1\\CT2"))
    wl.add_item(server.archive, item("P2", modality="MR", station="MR1", date="20250311"))
    wl.add_item(server.archive, item("P3", date="20250320"))
    out = tmp_path / "out"
    out.mkdir()
    sps = "ScheduledProcedureStepSequence[0]"
    run = dcmtk(
        "findscu", "-W", "-aec", "DICOMVAULT", "-X", "-od", out,
        "-k", "PatientName", "-k", "PatientID", "-k", "AccessionNumber",
        "-k", f"{sps}.Modality=CT",
        "-k", f"{sps}.ScheduledStationAETitle=CT2",
        "-k", f"{sps}.ScheduledProcedureStepStartDate=20250301-20250315",
        "-k", f"{sps}.ScheduledProcedureStepStartTime",
        "-k", f"{sps}.ScheduledProcedureStepStatus",
        "127.0.0.1", str(server.dimse_port),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    (found,) = responses(out)
    assert found.PatientID == "P1" and found.PatientName == "DOE^JOHN"
    assert "AccessionNumber" in found and found.AccessionNumber == ""  # asked, none stored
    step = found.ScheduledProcedureStepSequence
    assert len(step) == 1
    assert step[0].ScheduledStationAETitle == ["CT1", "CT2"]
    assert step[0].ScheduledProcedureStepStartTime == "0930"
    assert step[0].ScheduledProcedureStepStatus == "SCHEDULED"
    assert "QueryRetrieveLevel" not in found  # not a key of the worklist model


@pytest.mark.dcmtk
def test_findscu_query_file_and_cancelled_items(server: WebServer, tmp_path: Path) -> None:
    first = wl.add_item(server.archive, item("P1", AccessionNumber="A1"))
    wl.add_item(server.archive, item("P2", AccessionNumber="A2"))
    wl.add_item(server.archive, item("P3", AccessionNumber="A3"))
    wl.cancel_item(server.archive, first.id)
    wl.set_step_status(server.archive, accession_number="A2", status="COMPLETED")
    query = tmp_path / "query.dcm"
    source = DCMTK_EXAMPLES / "wlistqry" / "wlistqry11.dump"
    made = dcmtk("dump2dcm", source, query)
    assert made.returncode == 0, made.stderr
    out = tmp_path / "out"
    out.mkdir()
    run = dcmtk(
        "findscu", "-W", "-aec", "DICOMVAULT", "-X", "-od", out,
        "127.0.0.1", str(server.dimse_port), query,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    (found,) = responses(out)
    assert found.PatientID == "P3" and found.AccessionNumber == "A3"
    assert found.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID == "S-P3"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _comparable(ds: Dataset) -> str:
    """A response without what the two SCPs legitimately differ on: Specific Character
    Set (theirs ISO_IR 100 from the files, ours none for ASCII), zero-length elements
    (wlmscpfs leaves out an absent sequence and expands an empty sequence item to every
    attribute it knows; we return the zero-length sequence and the stored attributes),
    and Scheduled Procedure Step Status (empty in the sample files, set by our archive)."""

    def strip(model: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for tag, element in model.items():
            if tag in ("00080005", "00400020") or not element.get("Value"):
                continue
            if element["vr"] == "SQ":
                element = {"vr": "SQ", "Value": [strip(i) for i in element["Value"]]}
            out[tag] = element
        return out

    return json.dumps(strip(ds.to_json_dict()), sort_keys=True)


@pytest.mark.dcmtk
def test_same_answers_as_wlmscpfs_on_its_sample_worklist(server: WebServer, tmp_path: Path) -> None:
    """DCMTK's wlmscpfs with its example worklist (dcmtk/examples/wlistdb) is the
    reference: each example query (wlistqry*.dump) gets the same matches, with the same
    values, from both."""
    samples = sorted((DCMTK_EXAMPLES / "wlistdb" / "OFFIS").glob("wklist*.dump"))
    queries = sorted((DCMTK_EXAMPLES / "wlistqry").glob("wlistqry*.dump"))
    if not samples or not queries:
        pytest.skip("DCMTK's worklist examples are not installed (/usr/share/doc/dcmtk)")
    database = tmp_path / "wlistdb" / "OFFIS"
    database.mkdir(parents=True)
    (database / "lockfile").touch()
    for dump in samples:
        target = database / (dump.stem + ".wl")
        assert dcmtk("dump2dcm", "-g", dump, target).returncode == 0
        wl.add_item(server.archive, pydicom.dcmread(target).to_json_dict())
    port = _free_port()
    reference = subprocess.Popen(
        ["/usr/bin/wlmscpfs", "-dfp", str(database.parent), "--single-process", str(port)],
        env=DCMTK_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        else:
            raise AssertionError("wlmscpfs did not start listening")
        matched = 0
        for dump in queries:
            query = tmp_path / (dump.stem + ".dcm")
            assert dcmtk("dump2dcm", dump, query).returncode == 0
            answers = {}
            for name, aet, scp_port in (
                ("wlmscpfs", "OFFIS", port),
                ("dicomvault", "DICOMVAULT", server.dimse_port),
            ):
                out = tmp_path / name / dump.stem
                out.mkdir(parents=True)
                run = dcmtk(
                    "findscu", "-W", "-aec", aet, "-X", "-od", out,
                    "127.0.0.1", str(scp_port), query,
                )  # fmt: skip
                assert run.returncode == 0, (name, dump.name, run.stderr)
                answers[name] = Counter(_comparable(ds) for ds in responses(out))
            assert answers["dicomvault"] == answers["wlmscpfs"], dump.name
            matched += sum(answers["dicomvault"].values())
        assert matched >= 40  # the comparison compared something
    finally:
        reference.terminate()
        reference.wait(timeout=10)


# -- pynetdicom -------------------------------------------------------------------------


def test_pending_then_success_and_utf8(server: WebServer) -> None:
    wl.add_item(server.archive, item("P1", name="Müller^Jörg"))
    wl.add_item(server.archive, item("P2", name="Doe^Jane", modality="MR"))
    query = sps_query(Modality="CT", ScheduledPerformingPhysicianName="")
    query.SpecificCharacterSet = "ISO_IR 100"
    query.PatientName = "müller*"  # Latin-1 on the wire, case-insensitive match
    answers = mwl_find(server.dimse_port, query)
    assert [status for status, _, _ in answers] == [0xFF00, 0x0000]
    found = answers[0][1]
    assert found is not None
    assert found.SpecificCharacterSet == "ISO_IR 192"
    assert found.PatientName == "Müller^Jörg"
    assert found.ScheduledProcedureStepSequence[0].ScheduledPerformingPhysicianName == ""


def test_no_match_is_success_alone(server: WebServer) -> None:
    wl.add_item(server.archive, item("P1"))
    answers = mwl_find(server.dimse_port, sps_query(Modality="US"))
    assert [status for status, _, _ in answers] == [0x0000]


def test_several_steps_answer_one_each(server: WebServer) -> None:
    two = item("P1")
    step = two["ScheduledProcedureStepSequence"][0]
    two["ScheduledProcedureStepSequence"] = [
        step,
        {**step, "ScheduledProcedureStepID": "S-2", "Modality": "MR"},
    ]
    wl.add_item(server.archive, two)
    answers = mwl_find(server.dimse_port, sps_query(Modality="", ScheduledProcedureStepID=""))
    steps = [
        (ds.ScheduledProcedureStepSequence[0].Modality, len(ds.ScheduledProcedureStepSequence))
        for status, ds, _ in answers
        if status == 0xFF00 and ds is not None
    ]
    assert steps == [("CT", 1), ("MR", 1)]


def test_unsupported_key_is_pending_warning(server: WebServer) -> None:
    wl.add_item(server.archive, item("P1"))
    query = sps_query(Modality="CT")
    query.add_new(0x00420011, "OB", b"")  # Encapsulated Document: bulk data
    answers = mwl_find(server.dimse_port, query)
    assert [status for status, _, _ in answers] == [0xFF01, 0x0000]
    found = answers[0][1]
    assert found is not None and found[0x00420011].VM == 0


def test_refusals(server: WebServer) -> None:
    wl.add_item(server.archive, item("P1"))
    ((status, _, comment),) = mwl_find(
        server.dimse_port, sps_query(ScheduledProcedureStepStartDate="20250312-20250310")
    )
    assert status == 0xC000
    # the Error Comment is cut to 64 characters (PS3.7 C.4.2.1.4)
    assert comment is not None and len(comment) <= 64
    assert comment.startswith("ScheduledProcedureStepStartDate: range '20250312-20250310' e")
    uid = Dataset()
    # pydicom would warn about the wild card: it is the point here.
    uid[0x0020000D] = DataElement(0x0020000D, "UI", "1.2.*", validation_mode=config.IGNORE)
    ((status, _, comment),) = mwl_find(server.dimse_port, uid)
    assert status == 0xC000 and comment is not None and "wild card" in comment
    two = sps_query(Modality="CT")
    two.ScheduledProcedureStepSequence.append(Dataset())
    ((status, _, comment),) = mwl_find(server.dimse_port, two)
    assert status == 0xA900 and comment is not None and "one item only" in comment


def test_cancel(server: WebServer) -> None:
    total = 500  # the cancel is seen after the first chunk of 64: a wide margin
    for n in range(total):
        wl.add_item(server.archive, item(f"P{n:04}"))
    assoc = _ae().associate("127.0.0.1", server.dimse_port, ae_title="DICOMVAULT")
    assert assoc.is_established
    statuses = []
    try:
        context = assoc.accepted_contexts[0].context_id
        for status, _ in assoc.send_c_find(
            sps_query(Modality="CT"), ModalityWorklistInformationFind
        ):
            assert status is not None
            statuses.append(int(status.Status))
            if len(statuses) == 1:
                assoc.send_c_cancel(1, context)
    finally:
        assoc.release()
    assert statuses[-1] == 0xFE00
    assert 1 <= len(statuses) - 1 < total
    assert set(statuses[:-1]) == {0xFF00}


def test_cap_answers_a700(tmp_path: Path) -> None:
    for web in start_web(web_settings(tmp_path, query={"max_results": 2})):
        for n in range(3):
            wl.add_item(web.archive, item(f"P{n}"))
        answers = mwl_find(web.dimse_port, sps_query(Modality="CT"))
        assert [status for status, _, _ in answers] == [0xFF00, 0xFF00, 0xA700]
        assert answers[-1][2] is not None and "narrow the query" in answers[-1][2]


def test_disabled_worklist_refuses_the_context(tmp_path: Path) -> None:
    for web in start_web(web_settings(tmp_path, worklist={"enabled": False})):
        ae = _ae()
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", web.dimse_port, ae_title="DICOMVAULT")
        try:
            assert assoc.is_established
            assert [c.abstract_syntax for c in assoc.accepted_contexts] == [Verification]
            assert [c.abstract_syntax for c in assoc.rejected_contexts] == [
                ModalityWorklistInformationFind
            ]
        finally:
            assoc.release()
