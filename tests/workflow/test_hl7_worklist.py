"""The HL7 order feed end to end: ORM^O01 over a real MLLP socket into the archive's
Modality Worklist (hl7/feed.py → archive/worklist.py), then a DCMTK ``findscu -W``
against the archive's worklist SCP."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dicomvault.archive import Archive, worklist
from dicomvault.cli.services import background_services
from dicomvault.config import Settings, load_settings
from dicomvault.hl7.feed import serve_hl7
from dicomvault.model.errors import ConfigError
from tests.net.peers import ServerThread, dcmtk, needs_dcmtk
from tests.workflow.hl7_fixtures import MllpClient, msh, order, orm, segment

STATIONS = {"CT": "CT1", "MR": "MR1"}


@pytest.fixture
def workflow_overrides() -> dict[str, Any]:
    return {"worklist": {"hl7_station_ae_titles": STATIONS, "hl7_idle_timeout": 10}}


class Feed:
    def __init__(self, archive: Archive, thread: ServerThread) -> None:
        self.archive = archive
        self.thread = thread
        self.client = MllpClient(thread.port)

    def send(self, message: bytes) -> dict[str, list[str]]:
        return self.client.request(message)

    def items(self, accession: str) -> list[worklist.WorklistItem]:
        return worklist.list_items(self.archive, accession_number=accession)


def _feed(archive: Archive, settings: Settings) -> ServerThread:
    async def run(sock: socket.socket, ready: asyncio.Event, stop: asyncio.Event) -> None:
        await serve_hl7(archive, settings, stop, sock=sock, ready=lambda _address: ready.set())

    return ServerThread(run).start()


@pytest.fixture
def feed(wf_archive: Archive, workflow_settings: Settings) -> Iterator[Feed]:
    thread = _feed(wf_archive, workflow_settings)
    f = Feed(wf_archive, thread)
    try:
        yield f
    finally:
        f.client.close()
        thread.close()


def _value(dataset: dict[str, Any], tag: str) -> Any:
    return dataset[tag]["Value"][0]


def test_new_order_becomes_a_scheduled_item(feed: Feed) -> None:
    ack = feed.send(orm(control_id="N1", zds="ZDS|1.2.826.0.1.3680043.2.1125.7^100^App^DICOM"))
    assert ack["MSA"][1:3] == ["AA", "N1"]
    (item,) = feed.items("A1")
    assert item.status == worklist.SCHEDULED
    assert (item.patient_id, item.requested_procedure_id) == ("P1", "RP1")
    assert item.study_instance_uid == "1.2.826.0.1.3680043.2.1125.7"
    ds = item.dataset
    assert _value(ds, "00100010") == {"Alphabetic": "Doe^John^Q"}
    assert _value(ds, "00100021") == "HOSP"
    assert _value(ds, "00321060") == "CT HEAD"
    assert _value(ds, "00080090") == {"Alphabetic": "Ref^Doc"}
    (step,) = item.steps
    assert (step.modality, step.station_ae_titles, step.scheduled_procedure_step_id) == (
        "CT",
        ("CT1",),
        "SPS1",
    )
    assert (step.start_date, step.start_time) == ("20261126", "101500")


def test_resent_new_order_does_not_duplicate(feed: Feed) -> None:
    assert feed.send(orm(control_id="N1"))["MSA"][1] == "AA"
    assert feed.send(orm(control_id="N1"))["MSA"][1] == "AA"
    assert len(feed.items("A1")) == 1


def test_change_then_cancel(feed: Feed) -> None:
    assert feed.send(orm(control_id="N1"))["MSA"][1] == "AA"
    (before,) = feed.items("A1")
    change = orm(
        order("XO", modality="MR", start="20261127083000", service="MRBRAIN^MR BRAIN^L"),
        control_id="X1",
    )
    ack = feed.send(change)
    assert ack["MSA"][1:3] == ["AA", "X1"]
    (after,) = feed.items("A1")
    assert after.id == before.id
    assert after.status == worklist.SCHEDULED
    (step,) = after.steps
    assert (step.modality, step.station_ae_titles) == ("MR", ("MR1",))
    assert (step.start_date, step.start_time) == ("20261127", "083000")
    assert _value(after.dataset, "00321060") == "MR BRAIN"

    cancel = feed.send(orm(order("CA"), pid=None, pv1=None, control_id="C1"))
    assert cancel["MSA"][1:3] == ["AA", "C1"]
    (gone,) = feed.items("A1")
    assert gone.status == worklist.CANCELLED
    # A repeated cancel is acknowledged; a change of a cancelled order is not.
    assert feed.send(orm(order("CA"), control_id="C2"))["MSA"][1] == "AA"
    refused = feed.send(orm(order("XO"), control_id="X2"))
    assert refused["MSA"][1:3] == ["AE", "X2"]
    assert "only a cancelled" in refused["MSA"][3]


def test_filler_order_number_as_accession_number(feed: Feed) -> None:
    # No OBR-18: the filler order number (ORC-3) is the key, so a cancel without OBR
    # finds the order.
    assert feed.send(orm(order("NW", accession=""), control_id="F1"))["MSA"][1] == "AA"
    (item,) = feed.items("FI-")
    ack = feed.send(orm(order("CA", accession="", obr=False), pid=None, control_id="F2"))
    assert ack["MSA"][1:3] == ["AA", "F2"]
    assert worklist.get_item(feed.archive, item.id).status == worklist.CANCELLED


def test_cancel_keyed_by_obr18(feed: Feed) -> None:
    feed.send(orm(control_id="N1"))
    ack = feed.send(orm(order("DC"), control_id="D1"))
    assert ack["MSA"][1] == "AA"
    assert [i.status for i in feed.items("A1")] == [worklist.CANCELLED]


def test_change_or_cancel_of_unknown_order_is_ae_204(feed: Feed) -> None:
    for control in ("XO", "CA"):
        ack = feed.send(orm(order(control, accession="NOPE"), control_id=f"U-{control}"))
        assert ack["MSA"][1:3] == ["AE", f"U-{control}"]
        assert "NOPE" in ack["MSA"][3]
        assert ack["ERR"][1].startswith("OBR^1^18^204&")
    assert feed.items("NOPE") == []


def test_one_bad_order_group_applies_nothing(feed: Feed) -> None:
    bad_content = orm(order("NW", accession="G1"), order("NW", accession="G2", modality=""))
    ack = feed.send(bad_content)
    assert ack["MSA"][1] == "AE"
    assert "OBR-24" in ack["MSA"][3]
    unknown_key = orm(order("NW", accession="G1"), order("XO", accession="G3"), control_id="M2")
    assert feed.send(unknown_key)["MSA"][1:3] == ["AE", "M2"]
    assert feed.items("G1") == []
    assert feed.items("G2") == []
    both = orm(order("NW", accession="G1"), order("NW", accession="G2"), control_id="M3")
    assert feed.send(both)["MSA"][1:3] == ["AA", "M3"]
    assert len(feed.items("G1")) == len(feed.items("G2")) == 1


def test_completed_item_cannot_be_changed(feed: Feed) -> None:
    feed.send(orm(control_id="N1"))
    assert worklist.set_step_status(feed.archive, accession_number="A1", status="COMPLETED")
    ack = feed.send(orm(order("XO"), control_id="X9"))
    assert ack["MSA"][1:3] == ["AE", "X9"]
    assert "COMPLETED" in ack["MSA"][3]


def test_missing_patient_id_and_broken_header(feed: Feed) -> None:
    no_pid3 = feed.send(orm(pid=segment("PID", {1: "1", 5: "Doe^John"}), control_id="E1"))
    assert no_pid3["MSA"][1:3] == ["AE", "E1"]
    assert "PID-3" in no_pid3["MSA"][3]
    wrong_encoding = feed.send(orm(header=msh("E2", encoding="^~\\#")))
    assert wrong_encoding["MSA"][1:3] == ["AR", "E2"]
    not_orm = feed.send(orm(header=msh("E3", kind="ADT^A01")))
    assert not_orm["MSA"][1:3] == ["AR", "E3"]
    assert feed.items("A1") == []


@needs_dcmtk
def test_findscu_worklist_sees_the_hl7_order(
    feed: Feed, wf_server: ServerThread, tmp_path: Path
) -> None:
    assert feed.send(orm(control_id="N1"))["MSA"][1] == "AA"
    result = dcmtk(
        "findscu",
        "-W",
        "-aec",
        "DICOMVAULT",
        "-k",
        "PatientName",
        "-k",
        "PatientID=P1",
        "-k",
        "AccessionNumber",
        "-k",
        "ScheduledProcedureStepSequence[0].Modality=CT",
        "-k",
        "ScheduledProcedureStepSequence[0].ScheduledStationAETitle=CT1",
        "-k",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20261126",
        "-X",
        "-od",
        tmp_path,
        "127.0.0.1",
        wf_server.port,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    responses = list(tmp_path.glob("rsp*.dcm"))
    assert len(responses) == 1
    import pydicom

    ds = pydicom.dcmread(responses[0])
    assert (ds.PatientID, ds.AccessionNumber, str(ds.PatientName)) == ("P1", "A1", "Doe^John^Q")
    assert ds.ScheduledProcedureStepSequence[0].ScheduledStationAETitle == "CT1"


def test_serve_wiring_and_bind_failure(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    settings = load_settings(
        None,
        {
            "storage": {"path": tmp_path / "data", "fsync": False},
            "worklist": {"hl7_port": port, "hl7_host": "127.0.0.1"},
        },
    )
    try:
        with Archive.open(settings) as archive:

            async def main() -> None:
                stop = asyncio.Event()
                for worker, expected in ((0, 1), (1, 0)):
                    coros = background_services(archive, settings, stop, worker=worker)
                    assert sum("serve_hl7" in repr(c) for c in coros) == expected
                    for coro in coros:
                        coro.close()  # only looked at
                with pytest.raises(ConfigError, match=f"worklist.hl7_port: .*:{port}"):
                    await serve_hl7(archive, settings, stop)

            asyncio.run(main())
    finally:
        taken.close()
