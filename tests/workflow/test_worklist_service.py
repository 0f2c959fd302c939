"""The worklist service layer (archive/worklist.py, archive/worklist_find.py) on both
index backends: items in both input forms, validation, statuses, MPPS transitions, and
C-FIND matching on the stored items (PS3.4 K.6.1.2, C.2.2.2)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from dicomvault.archive import Archive
from dicomvault.archive import worklist as wl
from dicomvault.archive.worklist_find import find
from dicomvault.model.errors import NotFound
from dicomvault.model.query import InvalidQuery, QueryKey


def keyword_item(
    patient_id: str = "P1",
    *,
    name: str = "DOE^JOHN",
    accession: str = "ACC1",
    modality: str = "CT",
    date: str = "20250310",
    time: str = "0930",
    station: str | list[str] = "CT1",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "PatientID": patient_id,
        "PatientName": name,
        "AccessionNumber": accession,
        "ScheduledProcedureStepSequence": [
            {
                "Modality": modality,
                "ScheduledStationAETitle": station,
                "ScheduledProcedureStepStartDate": date,
                "ScheduledProcedureStepStartTime": time,
                "ScheduledPerformingPhysicianName": "SMITH^ANN",
            }
        ],
        **extra,
    }


def sps_key(*items: QueryKey) -> QueryKey:
    return QueryKey(0x00400100, "ScheduledProcedureStepSequence", "SQ", None, tuple(items))


def modality(value: str) -> QueryKey:
    return QueryKey(0x00080060, "Modality", "CS", value)


def start_date(value: str) -> QueryKey:
    return QueryKey(0x00400002, "ScheduledProcedureStepStartDate", "DA", value)


def start_time(value: str) -> QueryKey:
    return QueryKey(0x00400003, "ScheduledProcedureStepStartTime", "TM", value)


def station(value: str) -> QueryKey:
    return QueryKey(0x00400001, "ScheduledStationAETitle", "AE", value)


PATIENT_ID = QueryKey(0x00100020, "PatientID", "LO", "")


def found(archive: Archive, *keys: QueryKey) -> list[dict[str, Any]]:
    result = find(archive, (PATIENT_ID, *keys))
    try:
        return list(result)
    finally:
        result.close()


def ids(archive: Archive, *keys: QueryKey) -> list[str]:
    return [r["00100020"]["Value"][0] for r in found(archive, *keys)]


# -- items ---------------------------------------------------------------------------


def test_keyword_and_json_forms_store_the_same_model(archive: Archive) -> None:
    a = wl.add_item(archive, keyword_item(StudyInstanceUID="1.2.3.4", RequestedProcedureID="R1"))
    model = copy.deepcopy(a.dataset)
    model["00400100"]["Value"][0].pop("00400020")  # the archive sets the status
    b = wl.add_item(archive, model)
    assert b.dataset == a.dataset
    assert b.id != a.id and len(b.id) == 32
    assert a.dataset["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "DOE^JOHN"}]}
    assert a.steps[0].station_ae_titles == ("CT1",)
    assert a.status == "SCHEDULED" and a.steps[0].status == "SCHEDULED"
    assert a.dataset["00400100"]["Value"][0]["00400020"]["Value"] == ["SCHEDULED"]
    assert wl.get_item(archive, a.id) == a


def test_identifiers_are_generated_when_absent(archive: Archive) -> None:
    item = wl.add_item(archive, keyword_item())
    assert item.study_instance_uid.startswith("2.25.")
    assert item.requested_procedure_id and len(item.requested_procedure_id) <= 16
    sps_id = item.steps[0].scheduled_procedure_step_id
    assert sps_id and len(sps_id) <= 16
    assert item.dataset["00400100"]["Value"][0]["00400009"]["Value"] == [sps_id]


def test_several_station_titles_and_values(archive: Archive) -> None:
    item = wl.add_item(archive, keyword_item(station="CT1\\CT2"))
    assert item.steps[0].station_ae_titles == ("CT1", "CT2")
    item = wl.add_item(archive, keyword_item(station=["MR1", "MR2"]))
    assert item.dataset["00400100"]["Value"][0]["00400001"]["Value"] == ["MR1", "MR2"]


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"PatientID": "1"}, "ScheduledProcedureStepSequence (0040,0100) with at least one"),
        ({"PatientID": "1", "ScheduledProcedureStepSequence": []}, "at least one item"),
        ({**keyword_item(), "PatientID": ""}, "PatientID (0010,0020) is required"),
        (keyword_item(date="2025-03-10"), "StartDate: Invalid value for VR DA: '2025-03-10'"),
        (keyword_item(date="20250230"), "'20250230' is not a calendar date"),
        (keyword_item(time="25"), "StartTime: Invalid value for VR TM"),
        (keyword_item(modality=""), "Modality is required"),
        (keyword_item(StudyInstanceUID="1.2.abc"), "StudyInstanceUID: Invalid value for VR UI"),
        (keyword_item(station="A" * 17), "exceeds the maximum length of 16"),
        ({**keyword_item(), "NoSuchKeyword": "x"}, "NoSuchKeyword: not a DICOM attribute keyword"),
        ({**keyword_item(), "00100010": {"vr": "PN"}}, "mixed"),
        ({"00100020": {"vr": "SH", "Value": ["1"]}}, "PatientID: VR SH, but PS3.6 gives LO"),
        ({"00100020": {"vr": "LO", "Value": "1"}}, "Value must be an array"),
        (
            {
                "00100020": {"vr": "LO", "Value": ["1"]},
                "7FE00010": {"vr": "OW", "InlineBinary": ""},
            },
            "bulk data is not accepted",
        ),
        ([], "a non-empty JSON object"),
    ],
)
def test_invalid_items_are_refused(archive: Archive, item: Any, message: str) -> None:
    with pytest.raises(wl.WorklistError) as caught:
        wl.add_item(archive, item)
    assert message in str(caught.value)
    assert wl.list_items(archive) == []


def test_duplicate_step_ids_in_one_item(archive: Archive) -> None:
    item = keyword_item()
    step = dict(item["ScheduledProcedureStepSequence"][0], ScheduledProcedureStepID="S1")
    item["ScheduledProcedureStepSequence"] = [step, step]
    with pytest.raises(wl.WorklistError, match="'S1' appears twice"):
        wl.add_item(archive, item)


def test_update_keeps_identifiers_and_step_status(archive: Archive) -> None:
    item = wl.add_item(archive, keyword_item())
    step_id = item.steps[0].scheduled_procedure_step_id
    assert wl.set_step_status(archive, scheduled_procedure_step_id=step_id, status="IN PROGRESS")
    changed = wl.update_item(archive, item.id, keyword_item(name="DOE^JOHNNY", modality="MR"))
    assert changed.id == item.id and changed.created_at == item.created_at
    assert changed.updated_at > item.updated_at
    assert changed.patient_name == "DOE^JOHNNY"
    assert changed.study_instance_uid == item.study_instance_uid
    assert changed.requested_procedure_id == item.requested_procedure_id
    assert changed.steps[0].scheduled_procedure_step_id == step_id
    assert changed.steps[0].status == "IN PROGRESS" and changed.status == "IN PROGRESS"
    assert changed.steps[0].modality == "MR"


def test_cancel_then_no_change(archive: Archive) -> None:
    item = wl.add_item(archive, keyword_item())
    cancelled = wl.cancel_item(archive, item.id)
    assert cancelled.status == "CANCELLED" and cancelled.steps[0].status == "CANCELLED"
    assert cancelled.dataset["00400100"]["Value"][0]["00400020"]["Value"] == ["CANCELED"]
    assert wl.cancel_item(archive, item.id) == cancelled  # idempotent
    with pytest.raises(wl.WorklistConflict, match="is CANCELLED: it cannot be changed"):
        wl.update_item(archive, item.id, keyword_item())
    assert wl.set_step_status(archive, accession_number="ACC1", status="COMPLETED") == 0


def test_unknown_items(archive: Archive) -> None:
    for call in (
        lambda: wl.get_item(archive, "0" * 32),
        lambda: wl.get_item(archive, "../../etc/passwd"),
        lambda: wl.cancel_item(archive, "f" * 32),
        lambda: wl.update_item(archive, "a" * 32, keyword_item()),
    ):
        with pytest.raises(NotFound, match="no worklist item"):
            call()


def test_mpps_transitions(archive: Archive) -> None:
    item = wl.add_item(archive, keyword_item(StudyInstanceUID="1.2.3.9"))
    other = wl.add_item(archive, keyword_item("P2", accession="ACC2"))
    with pytest.raises(wl.WorklistError, match="is needed"):
        wl.set_step_status(archive, status="COMPLETED")
    with pytest.raises(wl.WorklistError, match="'SCHEDULED' is not one of"):
        wl.set_step_status(archive, accession_number="ACC1", status="SCHEDULED")
    # every identifier given must match
    assert (
        wl.set_step_status(
            archive, study_instance_uid="1.2.3.9", accession_number="ACC2", status="IN PROGRESS"
        )
        == 0
    )
    assert wl.set_step_status(archive, study_instance_uid="1.2.3.9", status="IN PROGRESS") == 1
    assert wl.set_step_status(archive, study_instance_uid="1.2.3.9", status="IN PROGRESS") == 0
    assert wl.get_item(archive, item.id).status == "IN PROGRESS"
    assert wl.set_step_status(archive, accession_number="ACC1", status="COMPLETED") == 1
    done = wl.get_item(archive, item.id)
    assert done.status == "COMPLETED"
    assert done.dataset["00400100"]["Value"][0]["00400020"]["Value"] == ["COMPLETED"]
    assert wl.set_step_status(archive, accession_number="ACC1", status="DISCONTINUED") == 0
    with pytest.raises(wl.WorklistConflict, match="cannot be cancelled"):
        wl.cancel_item(archive, item.id)
    assert wl.get_item(archive, other.id).status == "SCHEDULED"


def test_one_step_of_two(archive: Archive) -> None:
    item = keyword_item()
    first = dict(item["ScheduledProcedureStepSequence"][0], ScheduledProcedureStepID="S1")
    second = dict(first, ScheduledProcedureStepID="S2", Modality="MR")
    item["ScheduledProcedureStepSequence"] = [first, second]
    stored = wl.add_item(archive, item)
    assert wl.set_step_status(archive, scheduled_procedure_step_id="S1", status="COMPLETED") == 1
    after = wl.get_item(archive, stored.id)
    assert [s.status for s in after.steps] == ["COMPLETED", "SCHEDULED"]
    assert after.status == "SCHEDULED"
    # C-FIND: the open step only, one response per step
    answers = found(archive, sps_key(QueryKey(0x00400009, "ScheduledProcedureStepID", "SH", "")))
    assert [a["00400100"]["Value"][0]["00400009"]["Value"] for a in answers] == [["S2"]]


def test_list_filters(archive: Archive) -> None:
    a = wl.add_item(archive, keyword_item("P1", modality="CT", date="20250310"))
    b = wl.add_item(archive, keyword_item("P2", accession="ACC2", modality="MR", date="20250311"))
    wl.cancel_item(archive, a.id)
    assert [i.id for i in wl.list_items(archive)] == [b.id, a.id]
    assert [i.id for i in wl.list_items(archive, status="CANCELLED")] == [a.id]
    assert [i.id for i in wl.list_items(archive, patient_id="P2")] == [b.id]
    assert [i.id for i in wl.list_items(archive, accession_number="ACC1")] == [a.id]
    assert [i.id for i in wl.list_items(archive, modality="MR")] == [b.id]
    assert [i.id for i in wl.list_items(archive, date="20250311")] == [b.id]
    assert [i.id for i in wl.list_items(archive, date="-20250310")] == [a.id]
    assert len(wl.list_items(archive, date="20250301-20250331", limit=1)) == 1
    for bad, message in (
        ({"status": "DONE"}, "status: 'DONE' is not one of"),
        ({"date": "2025-03-10"}, "date:"),
        ({"limit": 0}, "limit: must be 1 or more"),
    ):
        with pytest.raises(wl.WorklistError, match=message):
            wl.list_items(archive, **bad)


# -- C-FIND matching -------------------------------------------------------------------


def test_find_returns_every_key_asked(archive: Archive) -> None:
    wl.add_item(archive, keyword_item(StudyInstanceUID="1.2.3.4"))
    (answer,) = found(
        archive,
        QueryKey(0x00100010, "PatientName", "PN", ""),
        QueryKey(0x00080090, "ReferringPhysicianName", "PN", ""),
        QueryKey(0x0020000D, "StudyInstanceUID", "UI", ""),
        sps_key(modality(""), station(""), start_date(""), start_time("")),
    )
    assert answer["00080090"] == {"vr": "PN"}  # asked, not stored: zero length
    assert answer["0020000D"]["Value"] == ["1.2.3.4"]
    step = answer["00400100"]["Value"][0]
    assert set(step) == {"00080060", "00400001", "00400002", "00400003"}
    assert step["00400003"]["Value"] == ["0930"]


def test_find_matching(archive: Archive) -> None:
    wl.add_item(archive, keyword_item("P1", name="Müller^Jörg", modality="CT", station="CT1\\CT2"))
    wl.add_item(
        archive,
        keyword_item(
            "P2", accession="A2", modality="MR", date="20250311", time="1400", station="MR1"
        ),
    )
    wl.add_item(
        archive, keyword_item("P3", accession="A3", modality="CT", date="20250312", station="X1")
    )
    assert ids(archive) == ["P1", "P2", "P3"]  # schedule order
    assert ids(archive, sps_key(modality("CT"))) == ["P1", "P3"]
    assert ids(archive, sps_key(modality("CT\\MR"))) == ["P1", "P2", "P3"]
    assert ids(archive, sps_key(station("CT2"))) == ["P1"]
    assert ids(archive, sps_key(station("CT"))) == []  # not a substring match
    assert ids(archive, sps_key(station("CT*"))) == ["P1"]
    assert ids(archive, sps_key(start_date("20250311-"))) == ["P2", "P3"]
    assert ids(archive, sps_key(start_date("-20250311"))) == ["P1", "P2"]
    assert ids(archive, QueryKey(0x00100010, "PatientName", "PN", "müller*")) == ["P1"]
    assert ids(archive, QueryKey(0x00080050, "AccessionNumber", "SH", "A?")) == ["P2", "P3"]
    assert ids(archive, QueryKey(0x00100020, "PatientID", "LO", "P2")) == ["P2"]
    performing = QueryKey(0x00400006, "ScheduledPerformingPhysicianName", "PN", "smith*")
    assert ids(archive, sps_key(performing)) == ["P1", "P2", "P3"]
    assert ids(archive, sps_key(modality("CT"), start_date("20250311"))) == []


def test_combined_date_time_range(archive: Archive) -> None:
    """PS3.4 C.2.2.2.5.1: 20250310 1000 to 20250311 1200, not each range alone."""
    wl.add_item(archive, keyword_item("early", date="20250310", time="0930"))
    wl.add_item(archive, keyword_item("in1", date="20250310", time="1500"))
    wl.add_item(archive, keyword_item("in2", date="20250311", time="0800"))
    wl.add_item(archive, keyword_item("late", date="20250311", time="1300"))
    wanted = sps_key(start_date("20250310-20250311"), start_time("1000-1200"))
    assert ids(archive, wanted) == ["in1", "in2"]
    # one date and a time range: that day between those times
    assert ids(archive, sps_key(start_date("20250310"), start_time("0900-1000"))) == ["early"]
    # a time alone is matched alone
    assert ids(archive, sps_key(start_time("1200-"))) == ["in1", "late"]


def test_return_key_sequences_match_items_without_them(archive: Archive) -> None:
    code = {"CodeValue": "X1", "CodingSchemeDesignator": "99LOCAL", "CodeMeaning": "Chest"}
    wl.add_item(archive, keyword_item("P1", RequestedProcedureCodeSequence=[code]))
    wl.add_item(archive, keyword_item("P2"))
    asked = QueryKey(
        0x00321064,
        "RequestedProcedureCodeSequence",
        "SQ",
        None,
        (
            QueryKey(0x00080100, "CodeValue", "SH", ""),
            QueryKey(0x00080104, "CodeMeaning", "LO", ""),
        ),
    )
    answers = found(archive, asked)
    assert [a["00100020"]["Value"][0] for a in answers] == ["P1", "P2"]
    assert answers[0]["00321064"]["Value"] == [
        {"00080100": {"vr": "SH", "Value": ["X1"]}, "00080104": {"vr": "LO", "Value": ["Chest"]}}
    ]
    assert answers[1]["00321064"] == {"vr": "SQ"}
    matching = QueryKey(
        0x00321064,
        "RequestedProcedureCodeSequence",
        "SQ",
        None,
        (QueryKey(0x00080100, "CodeValue", "SH", "X1"),),
    )
    assert ids(archive, matching) == ["P1"]


def test_closed_items_are_not_found(archive: Archive) -> None:
    a = wl.add_item(archive, keyword_item("P1", accession="A1"))
    wl.add_item(archive, keyword_item("P2", accession="A2"))
    wl.add_item(archive, keyword_item("P3", accession="A3"))
    wl.cancel_item(archive, a.id)
    wl.set_step_status(archive, accession_number="A2", status="COMPLETED")
    wl.set_step_status(archive, accession_number="A3", status="IN PROGRESS")
    (answer,) = found(
        archive, sps_key(QueryKey(0x00400020, "ScheduledProcedureStepStatus", "CS", ""))
    )
    assert answer["00100020"]["Value"] == ["P3"]
    assert answer["00400100"]["Value"][0]["00400020"]["Value"] == ["STARTED"]


def test_bad_keys_raise_before_reading(archive: Archive) -> None:
    for key, message in (
        (sps_key(start_date("2025031")), "is not a date"),
        (sps_key(start_date("20250312-20250310")), "ends before it starts"),
        (QueryKey(0x0020000D, "StudyInstanceUID", "UI", "1.2.*"), "wild card in UID"),
    ):
        with pytest.raises(InvalidQuery, match=message) as caught:
            find(archive, (key,))
        assert caught.value.status == 0xC000


def test_cap(archive: Archive) -> None:
    archive.settings.query.max_results = 2
    for n in range(3):
        wl.add_item(archive, keyword_item(f"P{n}"))
    result = find(archive, (PATIENT_ID,))
    assert len(list(result)) == 2 and result.truncated and result.closed
