"""ORM^O01 header checks, the IHE RAD-4 field mapping (hl7/orm.py), and the ACK/NACK
(hl7/message.py)."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dicomvault.hl7.message import Hl7Error, build_ack, decode, escape, guess_header
from dicomvault.hl7.orm import map_orders, parse_orm
from tests.workflow.hl7_fixtures import PID, fields_of, msh, order, orm, segment

NOW = datetime.datetime(2026, 11, 26, 10, 0, 0)


def _error(data: bytes, stations: dict[str, str] | None = None) -> Hl7Error:
    with pytest.raises(Hl7Error) as info:
        map_orders(parse_orm(data), stations or {})
    return info.value


def test_new_order_maps_to_a_worklist_item() -> None:
    parsed = parse_orm(orm(zds="ZDS|1.2.826.0.1.3680043.2.1125.1^100^Application^DICOM"))
    assert parsed.header.control_id == "MSG0001"
    (new,) = map_orders(parsed, {"CT": "CT1"})
    assert (new.control, new.action, new.accession_number) == ("NW", "add", "A1")
    assert new.item == {
        "PatientID": "P1",
        "IssuerOfPatientID": "HOSP",
        "PatientName": "Doe^John^Q",
        "PatientBirthDate": "19700101",
        "PatientSex": "M",
        "AccessionNumber": "A1",
        "RequestedProcedureID": "RP1",
        "PlacerOrderNumberImagingServiceRequest": "PL-A1",
        "FillerOrderNumberImagingServiceRequest": "FI-A1",
        "RequestedProcedureDescription": "CT HEAD",
        "RequestedProcedureCodeSequence": [
            {"CodeValue": "CTHEAD", "CodingSchemeDesignator": "L", "CodeMeaning": "CT HEAD"}
        ],
        "ReferringPhysicianName": "Ref^Doc",
        "StudyInstanceUID": "1.2.826.0.1.3680043.2.1125.1",
        "ScheduledProcedureStepSequence": [
            {
                "Modality": "CT",
                "ScheduledProcedureStepStartDate": "20261126",
                "ScheduledProcedureStepStartTime": "101500",
                "ScheduledStationAETitle": "CT1",
                "ScheduledProcedureStepID": "SPS1",
                "ScheduledProcedureStepDescription": "CT HEAD W/O",
                "ScheduledPerformingPhysicianName": "Tech^Tina",
            }
        ],
    }


def test_fallbacks_filler_number_referring_from_obr16_tq1_and_no_station() -> None:
    group = order(accession="", procedure_id="", sps_id="", start="")
    group.insert(1, segment("TQ1", {1: "1", 7: "202612011230+0100"}))
    (new,) = map_orders(parse_orm(orm(group, pv1=None)), {"MR": "MR1"})
    # No OBR-18: the filler order number is the accession number (and RP/SPS id).
    assert new.accession_number == "FI-"
    assert new.item["RequestedProcedureID"] == "FI-"
    assert new.item["ReferringPhysicianName"] == "Ordering^Olga"
    step = new.item["ScheduledProcedureStepSequence"][0]
    assert step["ScheduledProcedureStepStartDate"] == "20261201"
    assert step["ScheduledProcedureStepStartTime"] == "1230"
    assert step["ScheduledProcedureStepID"] == "FI-"
    assert "ScheduledStationAETitle" not in step


def test_escapes_and_latin1_charset_are_decoded() -> None:
    pid = segment("PID", {3: "P\\T\\2^^^HOSP", 5: "Müller^Jürgen", 8: "F"})
    data = orm(pid=pid, header=msh(charset="8859/1")).decode().encode("latin-1")
    (new,) = map_orders(parse_orm(data), {})
    assert new.item["PatientID"] == "P&2"
    assert new.item["PatientName"] == "Müller^Jürgen"
    assert new.item["PatientSex"] == "F"


def test_hex_and_formatting_escapes() -> None:
    pid = segment("PID", {3: "P\\X41\\1", 5: "Doe\\H\\^John\\.br\\Paul\\N\\"})
    (new,) = map_orders(parse_orm(orm(pid=pid)), {})
    assert (new.item["PatientID"], new.item["PatientName"]) == ("PA1", "Doe^John Paul")


@pytest.mark.parametrize("bad", ["Doe\\\\John", "Doe\\Zed\\", "Doe\\F", "Doe\\C2842\\"])
def test_malformed_escape_is_an_application_error(bad: str) -> None:
    error = _error(orm(pid=segment("PID", {3: "P1", 5: bad})))
    assert (error.ack_code, error.code, str(error.location)) == ("AE", 102, "PID-5")
    assert "escape sequence" in str(error)


def test_lf_separated_segments_are_read() -> None:
    (new,) = map_orders(parse_orm(orm().replace(b"\r", b"\n")), {})
    assert new.item["PatientID"] == "P1"


def test_several_order_groups_and_order_controls() -> None:
    data = orm(order("NW", accession="A1"), order("XO", accession="A2"), order("CA", obr=False))
    orders = map_orders(parse_orm(data), {})
    assert [(o.control, o.action) for o in orders] == [
        ("NW", "add"),
        ("XO", "update"),
        ("CA", "cancel"),
    ]
    # A cancel without OBR is keyed by the filler order number (ORC-3).
    assert orders[2].accession_number == "FI-A1"


def test_cancel_needs_no_patient() -> None:
    (cancel,) = map_orders(parse_orm(orm(order("CA"), pid=None, pv1=None)), {})
    assert (cancel.action, cancel.accession_number, cancel.item) == ("cancel", "A1", {})


@pytest.mark.parametrize(
    ("data", "code", "where", "words"),
    [
        (orm(pid=segment("PID", {5: "Doe^John"})), 101, "PID-3", "PID-3"),
        (orm(pid=segment("PID", {3: "P1"})), 101, "PID-5", "Patient Name"),
        (orm(pid=None), 100, "PID", "no PID segment"),
        (orm(order(modality="")), 101, "OBR-24", "modality"),
        (orm(order(start="")), 101, "OBR-27", "start date/time"),
        (orm(order(start="2026113")), 102, "OBR-27", "YYYYMMDD"),
        (orm(order(start="20261130")), 101, "OBR-27", "needs a time"),
        (orm(order(start="20261126256000")), 102, "OBR-27", "HH[MM[SS]]"),
        (orm(order(service="")), 101, "OBR-4", "requested procedure"),
        (orm(order("ZZ")), 103, "ORC-1", "'ZZ' is not supported"),
        (orm(order(obr=False)), 100, "OBR", "has no OBR"),
        (orm(order(accession="X" * 17)), 102, "OBR-18", "longer than 16"),
        (orm(order(procedure_id="R\\E\\1")), 102, "OBR-19", "backslash"),
        (orm(zds="ZDS|1.2.x"), 102, "ZDS-1", "not a UID"),
        (orm(pid=segment("PID", {3: "P1", 5: "D" * 65})), 102, "PID-5", "longer than 64"),
        (orm(pid=PID.replace("|M", "|Q")), 103, "PID-8", "Table 0001"),
        (orm(pid=PID.replace("19700101", "19701301")), 102, "PID-7", "YYYYMMDD"),
        (orm([]), 100, "ORC", "no ORC"),
        (orm([segment("OBR", {1: "1"})]), 100, "OBR", "before any ORC"),
        (orm([*order(), segment("OBR", {1: "2"})]), 100, "OBR", "second OBR"),
    ],
)
def test_content_errors_are_application_errors(
    data: bytes, code: int, where: str, words: str
) -> None:
    error = _error(data)
    assert (error.ack_code, error.code, str(error.location)) == ("AE", code, where)
    assert words in str(error)


@pytest.mark.parametrize(
    ("data", "code", "words"),
    [
        (b"", 100, "empty message"),
        (b"PID|1||P1\r", 100, "not with an MSH"),
        (orm(header=msh(encoding="^~\\#")), 102, "MSH-2 encoding characters"),
        (orm(header=msh(encoding="^~")), 102, "MSH-2 encoding characters"),
        (orm().replace(b"MSH|", b"MSH#", 1), 102, "MSH-1 field separator"),
        (orm(header=msh(kind="ADT^A01")), 200, "only ORM^O01"),
        (orm(header=msh(kind="ORM^O02")), 201, "trigger event is 'O02'"),
        (orm(header=msh(control_id="")), 101, "MSH-10"),
        (orm(header=msh(version="2.2")), 203, "MSH-12 version '2.2'"),
        (orm(header=msh(charset="KLINGON")), 103, "MSH-18"),
        (orm(header=msh(charset="UNICODE UTF-8")).replace(b"Doe", b"D\xe9"), 102, "MSH-18"),
    ],
)
def test_header_errors_are_rejects(data: bytes, code: int, words: str) -> None:
    with pytest.raises(Hl7Error) as info:
        parse_orm(data)
    assert (info.value.ack_code, info.value.code) == ("AR", code)
    assert words in str(info.value)


def test_undeclared_latin1_falls_back() -> None:
    text, codec = decode(orm().replace(b"Doe", b"D\xe9"))
    assert codec == "iso8859-1"
    assert "Dé^John" in text


def test_ack_echoes_control_id_and_swaps_applications() -> None:
    header = parse_orm(orm(control_id="CTRL-42")).header
    ack = fields_of(build_ack(header, "AA", control_id="OURS1", now=NOW))
    assert ack["MSH"][1:13] == [
        "|",
        "^~\\&",
        "DICOMVAULT",
        "RAD",
        "RIS",
        "HOSP",
        "20261126100000",
        "",
        "ACK",
        "OURS1",
        "P",
        "2.3.1",
    ]
    assert ack["MSA"][:3] == ["MSA", "AA", "CTRL-42"]
    assert "ERR" not in ack


def test_nack_v25_has_err_with_location_code_and_text() -> None:
    header = parse_orm(orm(header=msh(version="2.5.1"))).header
    error = _error(orm(order(modality=""), header=msh(version="2.5.1")))
    ack = fields_of(build_ack(header, "AE", error=error, control_id="OURS2"))
    assert ack["MSH"][9] == "ACK^O01^ACK"
    assert ack["MSA"][1:3] == ["AE", "MSG0001"]
    assert "OBR-24" in ack["MSA"][3]
    err = ack["ERR"]
    assert err[2] == "OBR^1^24"
    assert err[3] == "101^Required field missing^HL70357"
    assert err[4] == "E"
    assert "OBR-24" in err[8]


def test_nack_v231_has_err1() -> None:
    error = _error(orm(pid=segment("PID", {5: "Doe"})))
    ack = fields_of(build_ack(guess_header(orm()), "AE", error=error, control_id="X"))
    assert ack["ERR"][1] == "PID^1^3^101&Required field missing&HL70357"


def test_nack_of_garbage_still_has_msa() -> None:
    with pytest.raises(Hl7Error) as info:
        parse_orm(b"\x00\x01 not hl7")
    ack = fields_of(build_ack(guess_header(b"\x00\x01"), "AR", error=info.value, control_id="X"))
    assert ack["MSA"][1:3] == ["AR", ""]
    assert ack["MSH"][9] == "ACK"


def test_free_text_is_escaped_in_the_ack() -> None:
    assert escape("a|b^c&d~e\\f\rg") == "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f g"
    header = guess_header(orm())
    ack = build_ack(header, "AE", error=Hl7Error("bad | value"), control_id="X")
    assert b"bad \\F\\ value" in ack
    assert ack.count(b"\r") == 3


def test_guess_header_reads_a_broken_message() -> None:
    header = guess_header(b"MSH|^~\\#|RIS|HOSP|PACS|RAD|2026||ORM^O01|C77|P|2.5\rPID")
    assert (header.control_id, header.sending_application, header.version) == ("C77", "RIS", "2.5")


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=64),
    st.integers(min_value=0, max_value=400),
    st.integers(min_value=0, max_value=40),
)
@example(b"\xb2", 294, 1)  # "²" in the start time: str.isdigit() is true, int() fails
def test_any_corruption_is_an_hl7_error_never_a_crash(junk: bytes, at: int, cut: int) -> None:
    """Bytes spliced into / cut out of a valid message: parsed, or refused with Hl7Error
    (which always makes a NACK), nothing else."""
    good = orm(zds="ZDS|1.2.3^100^App^DICOM")
    data = good[:at] + junk + good[at + cut :]
    try:
        map_orders(parse_orm(data), {"CT": "CT1"})
    except Hl7Error as exc:
        ack = build_ack(guess_header(data), exc.ack_code, error=exc, control_id="F")
        assert fields_of(ack)["MSA"][1] in ("AE", "AR")
