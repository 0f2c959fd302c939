"""HL7 v2 ORM^O01 (General Order) → Modality Worklist items.

Pure functions, no I/O: :func:`parse_orm` checks the message header (HL7 v2.5.1 2.14.9
MSH: delimiters, ORM^O01, control id, version) and parses the message with python-hl7;
:func:`map_orders` turns each order group (ORC, OBR, optional TQ1 and ZDS) into an
:class:`Order` carrying a worklist item in keyword form. The acknowledgement is built by
:func:`dicomvault.hl7.message.build_ack`.

The field mapping follows IHE Radiology Scheduled Workflow, Procedure Scheduled [RAD-4] and
Procedure Updated [RAD-13] in their HL7 v2.3.1 (ORM) form, with the HL7 → DICOM attribute
correspondence of IHE RAD TF-2x Appendix B (Table B-1); the DICOM side is the Modality
Worklist Information Model of PS3.4 K.6.1.2.2.

Problems raise :class:`~dicomvault.hl7.message.Hl7Error`, which carries the
acknowledgement code (``AR`` for a message we cannot or will not process at all — broken
MSH, not ORM^O01, unsupported version; ``AE`` for a well-formed message whose content is
wrong or incomplete), the HL7 Table 0357 error code and the location of the field.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import hl7

from dicomvault.hl7.message import (
    DATA_TYPE_ERROR,
    ENCODING_CHARACTERS,
    FIELD_SEPARATOR,
    REQUIRED_FIELD_MISSING,
    SEGMENT_SEQUENCE_ERROR,
    TABLE_VALUE_NOT_FOUND,
    UNSUPPORTED_EVENT_CODE,
    UNSUPPORTED_MESSAGE_TYPE,
    UNSUPPORTED_VERSION_ID,
    VERSION,
    Header,
    Hl7Error,
    Location,
    decode,
    value,
)
from dicomvault.model.digits import ascii_digits

#: ORC-1 Order Control (HL7 Table 0119) → what happens to the worklist. NW: new order
#: (RAD-4); XO change request, XX changed as requested, SC status changed (RAD-13);
#: CA cancel request, OC order cancelled, DC discontinue request, OD discontinued.
ORDER_CONTROL: dict[str, Literal["add", "update", "cancel"]] = {
    "NW": "add",
    "XO": "update",
    "XX": "update",
    "SC": "update",
    "CA": "cancel",
    "OC": "cancel",
    "DC": "cancel",
    "OD": "cancel",
}

#: PID-8 Administrative Sex (HL7 Table 0001) → Patient's Sex (PS3.3 C.7.1.1: M, F, O).
_SEX = {"M": "M", "F": "F", "O": "O", "A": "O", "N": "O"}

_MODALITY = re.compile(r"^[A-Z0-9_ ]{1,16}$")
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


@dataclass(frozen=True)
class Order:
    """One order group of an ORM^O01 (ORC, OBR, TQ1, ZDS) as a worklist change.

    ``item`` is the worklist item in keyword form (empty for a cancellation, which needs
    only the keys). ``accession_number`` and ``requested_procedure_id`` find the items an
    update or cancellation applies to.
    """

    control: str
    action: Literal["add", "update", "cancel"]
    accession_number: str
    requested_procedure_id: str
    placer_order_number: str = ""
    filler_order_number: str = ""
    item: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ParsedOrm:
    """An ORM^O01 whose header has been checked."""

    header: Header
    message: Any  # hl7.Message (python-hl7 has no type hints)


# --------------------------------------------------------------------------- header


def parse_orm(data: bytes) -> ParsedOrm:
    """Check the header of an ORM^O01 and parse the message (HL7 v2.5.1 2.14.9).

    Checked: the message starts with MSH; MSH-1 is ``|``; MSH-2 is ``^~\\&`` (optionally
    followed by the v2.7 truncation character ``#``); MSH-9 is ORM^O01; MSH-10 (message
    control id) is present; MSH-12 is version 2.3 or later.

    Raises
    ------
    Hl7Error
        AR naming the first header problem.
    """
    text, codec = decode(data)
    if not text:
        raise Hl7Error(
            "empty message", ack_code="AR", code=SEGMENT_SEQUENCE_ERROR, location=Location("MSH")
        )
    if not text.startswith("MSH"):
        raise Hl7Error(
            f"the message starts with {text[:3]!r}, not with an MSH segment",
            ack_code="AR",
            code=SEGMENT_SEQUENCE_ERROR,
            location=Location("MSH"),
        )
    if len(text) < 4 or text[3] != FIELD_SEPARATOR:
        raise Hl7Error(
            f"MSH-1 field separator is {text[3:4]!r}, expected '|'",
            ack_code="AR",
            code=DATA_TYPE_ERROR,
            location=Location("MSH", 1),
        )
    encoding = text[4:].split(FIELD_SEPARATOR, 1)[0].split("\r", 1)[0]
    if encoding not in ENCODING_CHARACTERS:
        raise Hl7Error(
            f"MSH-2 encoding characters are {encoding!r}, expected '^~\\&'",
            ack_code="AR",
            code=DATA_TYPE_ERROR,
            location=Location("MSH", 2),
        )
    try:
        message = hl7.parse(text)
    except (hl7.HL7Exception, ValueError, IndexError) as exc:
        raise Hl7Error(
            f"the message does not parse: {exc}", ack_code="AR", code=SEGMENT_SEQUENCE_ERROR
        ) from None
    msh = message[0]
    kind, trigger = value(msh, 9, 1), value(msh, 9, 2)
    version = value(msh, 12)
    header = Header(
        sending_application=value(msh, 3),
        sending_facility=value(msh, 4),
        receiving_application=value(msh, 5),
        receiving_facility=value(msh, 6),
        message_type=kind,
        trigger_event=trigger,
        control_id=value(msh, 10),
        processing_id=value(msh, 11) or "P",
        version=version if VERSION.match(version) else "2.5.1",
        charset=value(msh, 18),
        codec=codec,
    )
    if kind != "ORM":
        raise Hl7Error(
            f"MSH-9 message type is {kind or 'empty'!r}: only ORM^O01 orders are accepted here",
            ack_code="AR",
            code=UNSUPPORTED_MESSAGE_TYPE,
            location=Location("MSH", 9),
        )
    if trigger != "O01":
        raise Hl7Error(
            f"MSH-9 trigger event is {trigger or 'empty'!r}: only ORM^O01 is accepted",
            ack_code="AR",
            code=UNSUPPORTED_EVENT_CODE,
            location=Location("MSH", 9),
        )
    if not header.control_id:
        raise Hl7Error(
            "MSH-10 message control id is empty",
            ack_code="AR",
            code=REQUIRED_FIELD_MISSING,
            location=Location("MSH", 10),
        )
    if not VERSION.match(version):
        raise Hl7Error(
            f"MSH-12 version {version or 'empty'!r} is not supported (2.3 or later)",
            ack_code="AR",
            code=UNSUPPORTED_VERSION_ID,
            location=Location("MSH", 12),
        )
    return ParsedOrm(header, message)


# --------------------------------------------------------------------------- fields


def _person_name(parts: list[str]) -> str:
    """PS3.5 6.2 PN from family, given, middle, prefix, suffix (trailing empties dropped);
    ``^``, ``=`` and ``\\`` inside a component would change its meaning, so become spaces."""
    clean = [re.sub(r"[\^=\\]", " ", p).strip() for p in parts]
    return "^".join(clean).rstrip("^")


def _xpn(segment: Any, field_num: int) -> str:
    """XPN (family^given^middle^suffix^prefix^degree; family may have subcomponents)."""
    return _person_name(
        [value(segment, field_num, c) for c in (1, 2, 3)]
        + [value(segment, field_num, 5), value(segment, field_num, 4)]
    )


def _xcn(segment: Any, field_num: int) -> str:
    """XCN (id^family^given^middle^suffix^prefix^degree)."""
    return _person_name(
        [value(segment, field_num, c) for c in (2, 3, 4)]
        + [value(segment, field_num, 6), value(segment, field_num, 5)]
    )


def _cn_subcomponents(segment: Any, field_num: int) -> str:
    """A CN name inside an NDL (OBR-32…35): id&family&given&middle&suffix&prefix."""
    return _person_name(
        [value(segment, field_num, 1, s) for s in (2, 3, 4)]
        + [value(segment, field_num, 1, 6), value(segment, field_num, 1, 5)]
    )


def _date(text: str, where: Location) -> str:
    """DA (YYYYMMDD) from an HL7 TS/DTM; at least the full date must be there."""
    digits = text[:8]
    try:
        datetime.datetime.strptime(digits, "%Y%m%d")
        if len(digits) != 8 or not ascii_digits(digits):
            raise ValueError
    except ValueError:
        raise Hl7Error(
            f"{where} is {text!r}: not a date/time beginning with YYYYMMDD",
            code=DATA_TYPE_ERROR,
            location=where,
        ) from None
    return digits


def _time(text: str, where: Location) -> str:
    """TM (HH, HHMM or HHMMSS) from the time part of an HL7 TS/DTM; fractions and the
    time-zone offset are dropped (the worklist holds local times)."""
    clock = re.split(r"[.+-]", text[8:], maxsplit=1)[0]
    if not clock:
        return ""
    ok = len(clock) in (2, 4, 6) and ascii_digits(clock)
    if ok:
        hh, mm, ss = int(clock[:2]), int(clock[2:4] or 0), int(clock[4:6] or 0)
        ok = hh < 24 and mm < 60 and ss < 60
    if not ok:
        raise Hl7Error(
            f"{where} is {text!r}: the time is not HH[MM[SS]]",
            code=DATA_TYPE_ERROR,
            location=where,
        )
    return clock


#: Worklist attribute → (DICOM VR, maximum length per PS3.5 Table 6.2-1, HL7 field it
#: comes from). The item is checked against these before anything is applied, so the
#: NACK names the HL7 field rather than the DICOM attribute, and no later order of the
#: same message can fail on a value the worklist would refuse.
_VALUE_RULES: dict[str, tuple[str, int, Location]] = {
    "PatientID": ("LO", 64, Location("PID", 3)),
    "IssuerOfPatientID": ("LO", 64, Location("PID", 3)),
    "PatientName": ("PN", 64, Location("PID", 5)),
    "AccessionNumber": ("SH", 16, Location("OBR", 18)),
    "RequestedProcedureID": ("SH", 16, Location("OBR", 19)),
    "PlacerOrderNumberImagingServiceRequest": ("LO", 64, Location("ORC", 2)),
    "FillerOrderNumberImagingServiceRequest": ("LO", 64, Location("ORC", 3)),
    "RequestedProcedureDescription": ("LO", 64, Location("OBR", 4)),
    "CodeValue": ("SH", 16, Location("OBR", 4)),
    "CodingSchemeDesignator": ("SH", 16, Location("OBR", 4)),
    "CodeMeaning": ("LO", 64, Location("OBR", 4)),
    "ReferringPhysicianName": ("PN", 64, Location("PV1", 8)),
    "StudyInstanceUID": ("UI", 64, Location("ZDS", 1)),
    "ReasonForTheRequestedProcedure": ("LO", 64, Location("OBR", 31)),
    "ScheduledStationAETitle": ("AE", 16, Location("OBR", 24)),
    "ScheduledProcedureStepID": ("SH", 16, Location("OBR", 20)),
    "ScheduledProcedureStepDescription": ("LO", 64, Location("OBR", 4)),
    "ScheduledPerformingPhysicianName": ("PN", 64, Location("OBR", 34)),
}


def _check_values(item: Mapping[str, Any]) -> None:
    """Every value of ``item`` (and its sequence items) against :data:`_VALUE_RULES`:
    length, no control characters or backslash (the DICOM value delimiter, PS3.5 6.2),
    a UID of digits and dots (PS3.5 9.1)."""
    for keyword, found in item.items():
        if isinstance(found, list):
            for sub in found:
                _check_values(sub)
            continue
        rule = _VALUE_RULES.get(keyword)
        if rule is None:
            continue
        vr, limit, where = rule
        text = str(found)
        groups = text.split("^") if vr == "PN" else [text]
        problem = ""
        if any(len(group) > limit for group in groups):
            problem = f"longer than {limit} characters (DICOM {vr})"
        elif "\\" in text or any(ord(c) < 32 for c in text):
            problem = "contains a backslash or a control character"
        elif vr == "UI" and not _UID.match(text):
            problem = "not a UID (digits and dots, PS3.5 9.1)"
        if problem:
            raise Hl7Error(
                f"{where} ({keyword}) {text[:80]!r} is {problem}",
                code=DATA_TYPE_ERROR,
                location=where,
            )


def _required(text: str, where: Location, what: str) -> str:
    if not text:
        raise Hl7Error(f"{where} ({what}) is empty", code=REQUIRED_FIELD_MISSING, location=where)
    return text


# --------------------------------------------------------------------------- orders


def _segments(message: Any) -> list[tuple[str, Any, int]]:
    """(segment id, segment, sequence of that id) in message order."""
    seen: dict[str, int] = {}
    out = []
    for segment in message:
        name = str(segment[0]).strip()
        seen[name] = seen.get(name, 0) + 1
        out.append((name, segment, seen[name]))
    return out


def _patient(pid: Any) -> dict[str, Any]:
    """PID → patient keys (IHE RAD TF-2x Table B-1): PID-3 (first CX: ID and assigning
    authority) → Patient ID / Issuer of Patient ID, PID-5 → Patient's Name, PID-7 →
    Patient's Birth Date, PID-8 → Patient's Sex."""
    patient_id = _required(value(pid, 3), Location("PID", 3), "Patient Identifier List")
    item: dict[str, Any] = {"PatientID": patient_id}
    issuer = value(pid, 3, 4)
    if issuer:
        item["IssuerOfPatientID"] = issuer
    item["PatientName"] = _required(_xpn(pid, 5), Location("PID", 5), "Patient Name")
    birth = value(pid, 7)
    if birth:
        item["PatientBirthDate"] = _date(birth, Location("PID", 7))
    sex = value(pid, 8).upper()
    if sex in _SEX:
        item["PatientSex"] = _SEX[sex]
    elif sex and sex != "U":
        raise Hl7Error(
            f"PID-8 administrative sex {sex!r} is not in HL7 Table 0001 (M, F, O, U, A, N)",
            code=TABLE_VALUE_NOT_FOUND,
            location=Location("PID", 8),
        )
    return item


def _start(orc: Any, obr: Any, tq1: Any | None) -> tuple[str, Location]:
    """Scheduled start: TQ1-7 (v2.5), else OBR-27.4, else ORC-7.4 (TQ start date/time)."""
    if tq1 is not None and value(tq1, 7):
        return value(tq1, 7), Location("TQ1", 7)
    if value(obr, 27, 4):
        return value(obr, 27, 4), Location("OBR", 27)
    return value(orc, 7, 4), Location("ORC", 7)


def _order(
    control: str,
    orc: Any,
    obr: Any | None,
    tq1: Any | None,
    zds: Any | None,
    patient: dict[str, Any] | None,
    pv1: Any | None,
    station_ae_titles: Mapping[str, str],
    sequence: int,
) -> Order:
    action = ORDER_CONTROL[control]
    placer = value(orc, 2) or (value(obr, 2) if obr is not None else "")
    filler = value(orc, 3) or (value(obr, 3) if obr is not None else "")
    if obr is None:
        if action != "cancel":
            raise Hl7Error(
                f"ORC #{sequence} (order control {control}) has no OBR segment",
                code=SEGMENT_SEQUENCE_ERROR,
                location=Location("OBR"),
            )
        accession, procedure_id = filler, ""
    else:
        # Accession Number: OBR-18 (Placer Field 1), as IHE RAD TF-2 specifies for the
        # v2.3.1 ORM of RAD-4/RAD-13 (v2.5.1 moved it to IPC-1, which ORM^O01 has not).
        # Many RIS leave it empty and use their filler order number (ORC-3/OBR-3, the
        # number the department knows the exam by) as the accession number: that is
        # the fallback, so the same exam keeps the same key in updates and cancels.
        accession = value(obr, 18) or filler
        procedure_id = value(obr, 19)
    if not accession:
        raise Hl7Error(
            f"order #{sequence}: OBR-18 (accession number) and the filler order number"
            " (ORC-3/OBR-3) are both empty",
            code=REQUIRED_FIELD_MISSING,
            location=Location("OBR", 18),
        )
    _check_values({"AccessionNumber": accession})
    if action == "cancel":
        return Order(control, action, accession, procedure_id, placer, filler)
    assert obr is not None and patient is not None
    return Order(
        control,
        action,
        accession,
        procedure_id,
        placer,
        filler,
        _item(
            obr,
            orc,
            tq1,
            zds,
            patient,
            pv1,
            accession,
            procedure_id,
            placer,
            filler,
            station_ae_titles,
        ),
    )


def _item(
    obr: Any,
    orc: Any,
    tq1: Any | None,
    zds: Any | None,
    patient: dict[str, Any],
    pv1: Any | None,
    accession: str,
    procedure_id: str,
    placer: str,
    filler: str,
    station_ae_titles: Mapping[str, str],
) -> dict[str, Any]:
    """The worklist item of one order group (IHE RAD TF-2x Table B-1; PS3.4 K.6.1.2.2)."""
    item = dict(patient)
    item["AccessionNumber"] = accession
    # Requested Procedure ID: OBR-19 (Placer Field 2, IHE); without it the accession
    # number, the one key the RIS certainly gave.
    item["RequestedProcedureID"] = procedure_id or accession
    if placer:
        item["PlacerOrderNumberImagingServiceRequest"] = placer
    if filler:
        item["FillerOrderNumberImagingServiceRequest"] = filler
    # Requested procedure: OBR-44 (Procedure Code, IHE) when sent, else OBR-4 (Universal
    # Service Identifier) code^text^coding system.
    code_field = 44 if value(obr, 44) else 4
    code, text, scheme = (value(obr, code_field, c) for c in (1, 2, 3))
    description = text or value(obr, 4, 2) or code
    if not description:
        raise Hl7Error(
            "OBR-4 (Universal Service Identifier: the requested procedure) is empty",
            code=REQUIRED_FIELD_MISSING,
            location=Location("OBR", 4),
        )
    item["RequestedProcedureDescription"] = description
    if code and scheme:
        item["RequestedProcedureCodeSequence"] = [
            {"CodeValue": code, "CodingSchemeDesignator": scheme, "CodeMeaning": description}
        ]
    referring = _xcn(pv1, 8) if pv1 is not None else ""
    referring = referring or _xcn(obr, 16)
    if referring:
        item["ReferringPhysicianName"] = referring
    if zds is not None and value(zds, 1):
        item["StudyInstanceUID"] = value(zds, 1)
    reason = value(obr, 31, 2) or value(obr, 31)
    if reason:
        item["ReasonForTheRequestedProcedure"] = reason
    item["ScheduledProcedureStepSequence"] = [
        _step(obr, orc, tq1, procedure_id or accession, station_ae_titles)
    ]
    _check_values(item)
    return item


def _step(
    obr: Any, orc: Any, tq1: Any | None, fallback_id: str, station_ae_titles: Mapping[str, str]
) -> dict[str, Any]:
    """The Scheduled Procedure Step item (PS3.4 K.6.1.2.2, Table B-1)."""
    modality = _required(
        value(obr, 24).upper(), Location("OBR", 24), "Diagnostic Serv Sect ID: the modality"
    )
    if not _MODALITY.match(modality):
        raise Hl7Error(
            f"OBR-24 modality {modality!r} is not a DICOM modality code (CS, ≤ 16 characters)",
            code=DATA_TYPE_ERROR,
            location=Location("OBR", 24),
        )
    start, where = _start(orc, obr, tq1)
    _required(start, Location("OBR", 27), "Quantity/Timing start date/time; or TQ1-7, ORC-7")
    step: dict[str, Any] = {
        "Modality": modality,
        "ScheduledProcedureStepStartDate": _date(start, where),
    }
    clock = _time(start, where)
    if not clock:
        # PS3.4 Table K.6-1: Scheduled Procedure Step Start Time is a required (type 1)
        # return key; inventing midnight would put the exam at the wrong time.
        raise Hl7Error(
            f"{where} is {start!r}: the scheduled start needs a time (HHMM)",
            code=REQUIRED_FIELD_MISSING,
            location=where,
        )
    step["ScheduledProcedureStepStartTime"] = clock
    station = station_ae_titles.get(modality, "")
    if station:
        step["ScheduledStationAETitle"] = station
    # SPS ID: OBR-20 (Filler Field 1, IHE); else the requested procedure id — one step
    # per requested procedure is what an ORM order group describes.
    step["ScheduledProcedureStepID"] = value(obr, 20) or fallback_id
    # SPS description: OBR-4 component 5 (the scheduled protocol's text in IHE's use of
    # OBR-4 components 4–6), else the service text OBR-4.2.
    description = value(obr, 4, 5) or value(obr, 4, 2)
    if description:
        step["ScheduledProcedureStepDescription"] = description
    performer = _cn_subcomponents(obr, 34)
    if performer:
        step["ScheduledPerformingPhysicianName"] = performer
    return step


def map_orders(parsed: ParsedOrm, station_ae_titles: Mapping[str, str]) -> list[Order]:
    """The order groups of an ORM^O01 as worklist changes (IHE RAD-4 / RAD-13).

    Message structure (HL7 v2.3.1 4.4.1, IHE RAD TF-2 4.4.4.1): MSH, [PID [PV1]],
    {ORC [TQ1] [OBR] [ZDS]}; NTE, OBX, AL1 and other segments are ignored. ORC-1 order
    control picks the change (:data:`ORDER_CONTROL`). Every group is mapped before any is
    applied, so one bad group rejects the whole message.

    Parameters
    ----------
    parsed
        From :func:`parse_orm`.
    station_ae_titles
        Modality (OBR-24) → Scheduled Station AE Title; a modality not in it leaves the
        station empty (any station may then pick the step).

    Raises
    ------
    Hl7Error
        AE naming the missing or malformed field.
    """
    pid = pv1 = None
    groups: list[dict[str, Any]] = []
    for name, segment, _sequence in _segments(parsed.message):
        if name == "PID" and pid is None and not groups:
            pid = segment
        elif name == "PV1" and pv1 is None and not groups:
            pv1 = segment
        elif name == "ORC":
            groups.append({"ORC": segment})
        elif name in ("OBR", "TQ1", "ZDS"):
            if not groups:
                raise Hl7Error(
                    f"{name} segment before any ORC segment",
                    code=SEGMENT_SEQUENCE_ERROR,
                    location=Location(name),
                )
            if name in groups[-1]:
                raise Hl7Error(
                    f"ORC #{len(groups)} has a second {name} segment",
                    code=SEGMENT_SEQUENCE_ERROR,
                    location=Location(name),
                )
            groups[-1][name] = segment
    if not groups:
        raise Hl7Error(
            "the message has no ORC segment (no order)",
            code=SEGMENT_SEQUENCE_ERROR,
            location=Location("ORC"),
        )
    controls = []
    for sequence, group in enumerate(groups, 1):
        control = value(group["ORC"], 1).upper()
        if control not in ORDER_CONTROL:
            raise Hl7Error(
                f"ORC #{sequence}: ORC-1 order control {control or 'empty'!r} is not supported"
                f" ({', '.join(ORDER_CONTROL)})",
                code=TABLE_VALUE_NOT_FOUND,
                location=Location("ORC", 1),
            )
        controls.append(control)
    patient = None
    if any(ORDER_CONTROL[c] != "cancel" for c in controls):
        if pid is None:
            raise Hl7Error(
                "the message has no PID segment (the patient of the order)",
                code=SEGMENT_SEQUENCE_ERROR,
                location=Location("PID"),
            )
        patient = _patient(pid)
    return [
        _order(
            control,
            group["ORC"],
            group.get("OBR"),
            group.get("TQ1"),
            group.get("ZDS"),
            patient,
            pv1,
            station_ae_titles,
            sequence,
        )
        for sequence, (control, group) in enumerate(zip(controls, groups, strict=True), 1)
    ]
