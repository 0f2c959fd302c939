"""The DICOM Audit Messages of ``security/audit.py`` checked, attribute by attribute,
against what the tables of PS3.15 A.5.3 require; each is first validated against the
schema of PS3.15 A.5.1 (``audit_schema.py``), then parsed with
:mod:`xml.etree.ElementTree` and its content compared with the tables.
"""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

import pytest

from dicomvault.security import audit as a

from .audit_schema import validate

SOURCE = a.AuditSource("DICOMVAULT", "HOSPITAL")
ARCHIVE = a.archive_participant("DICOMVAULT", "pacs.example", process_id="1234")
WHEN = datetime(2026, 1, 31, 8, 30, tzinfo=UTC)
STUDY = "1.2.826.0.1.3680043.8.498.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
ROOT_ORDER = [
    "EventIdentification",
    "ActiveParticipant",
    "AuditSourceIdentification",
    "ParticipantObjectIdentification",
]
OBJECT_ORDER = [
    "ParticipantObjectIDTypeCode",
    "ParticipantObjectName",
    "ParticipantObjectQuery",
    "ParticipantObjectDetail",
    "ParticipantObjectDescription",
]
DESCRIPTION_ORDER = [
    "MPPS",
    "Accession",
    "SOPClass",
    "ParticipantObjectContainsStudy",
    "Encrypted",
    "Anonymized",
]


def _parse(message: a.AuditMessage) -> ET.Element:
    text = message.to_xml()
    assert "\n" not in text and "\r" not in text  # one line of a log
    validate(text)  # PS3.15 A.5.1 first; then the tables of A.5.3
    root = ET.fromstring(text)
    assert root.tag == "AuditMessage"
    _check_order([child.tag for child in root], ROOT_ORDER)
    assert [c.tag for c in root].count("EventIdentification") == 1
    assert [c.tag for c in root].count("AuditSourceIdentification") == 1
    assert root.findall("ActiveParticipant"), "at least one ActiveParticipant (A.5.1)"
    for obj in root.findall("ParticipantObjectIdentification"):
        _check_order([child.tag for child in obj], OBJECT_ORDER)
        assert obj[0].tag == "ParticipantObjectIDTypeCode"
        for description in obj.findall("ParticipantObjectDescription"):
            assert not (description.text or "").strip(), "DICOM elements only, no text"
            _check_order([child.tag for child in description], DESCRIPTION_ORDER)
        assert {"ParticipantObjectID", "ParticipantObjectTypeCode",
                "ParticipantObjectTypeCodeRole"} <= set(obj.attrib)  # fmt: skip
    source = root.find("AuditSourceIdentification")
    assert source is not None and source.get("AuditSourceID") == "DICOMVAULT"
    # The schema's own value 4 alone (A.5.1.2.1), not dressed as a "DCM" code.
    assert [dict(c.attrib) for c in source] == [{"csd-code": "4"}]
    return root


def _check_order(tags: list[str], order: list[str]) -> None:
    positions = [order.index(tag) for tag in tags]
    assert positions == sorted(positions), tags


def _code(element: ET.Element | None) -> tuple[str | None, str | None]:
    assert element is not None
    assert element.get("originalText"), "originalText is required (A.5.1 CodedValueType)"
    return element.get("csd-code"), element.get("codeSystemName")


def _event(root: ET.Element, event_id: str, action: str, outcome: int = 0) -> ET.Element:
    event = root.find("EventIdentification")
    assert event is not None
    assert event.get("EventActionCode") == action
    assert event.get("EventOutcomeIndicator") == str(outcome)
    assert datetime.fromisoformat(event.get("EventDateTime", "")).tzinfo is not None
    assert _code(event.find("EventID")) == (event_id, "DCM")
    return event


def _roles(root: ET.Element) -> list[list[str | None]]:
    return [
        [code.get("csd-code") for code in p.findall("RoleIDCode")]
        for p in root.findall("ActiveParticipant")
    ]


def _objects(root: ET.Element) -> list[tuple[str | None, str | None, str | None, str | None]]:
    """(ParticipantObjectID, TypeCode, TypeCodeRole, IDTypeCode) of each object."""
    return [
        (
            obj.get("ParticipantObjectID"),
            obj.get("ParticipantObjectTypeCode"),
            obj.get("ParticipantObjectTypeCodeRole"),
            _code(obj.find("ParticipantObjectIDTypeCode"))[0],
        )
        for obj in root.findall("ParticipantObjectIdentification")
    ]


def _peer(role: a.Code | None = None, requestor: bool = True) -> a.ActiveParticipant:
    return a.peer_participant(
        "MODALITY1", "10.0.0.7", requestor=requestor, roles=(role,) if role else ()
    )


def test_application_activity_start_and_stop() -> None:
    """A.5.3.1: E, type 110120/110121, the application with role 110150, the launcher
    with 110151; no participant object."""
    for started, type_code in ((True, "110120"), (False, "110121")):
        app = a.archive_participant(
            "DICOMVAULT", "pacs", roles=(a.ROLE_APPLICATION,), process_id="9"
        )
        launcher = a.peer_participant("root", None, roles=(a.ROLE_APPLICATION_LAUNCHER,))
        root = _parse(
            a.application_activity(SOURCE, app, started=started, launcher=launcher, when=WHEN)
        )
        event = _event(root, "110100", "E")
        assert [_code(t) for t in event.findall("EventTypeCode")] == [(type_code, "DCM")]
        assert _roles(root) == [["110150"], ["110151"]]
        first = root.findall("ActiveParticipant")[0]
        assert first.get("UserID") == "DICOMVAULT"
        assert first.get("AlternativeUserID") == "AETITLES=DICOMVAULT"  # MC, A.5.2.2
        assert first.get("UserName") == "dicomvault[9]"  # the process (A.5.2.3)
        assert first.get("UserIsRequestor") == "false"
        assert first.get("NetworkAccessPointTypeCode") == "1"  # a host name
        assert root.findall("ParticipantObjectIdentification") == []


def test_instances_transferred_per_study_with_patient() -> None:
    """A.5.3.4: action C/R/U, source 110153 and destination 110152, the study (2/3,
    110180) with its SOP classes and counts, then the patient (1/1, RFC-3881 2)."""
    root = _parse(
        a.instances_transferred(
            SOURCE,
            _peer(a.ROLE_SOURCE),
            a.archive_participant("DICOMVAULT", "127.0.0.1", roles=(a.ROLE_DESTINATION,)),
            {STUDY: {CT: 3, MR: 1}},
            {STUDY: "PID-1"},
            action="C",
        )
    )
    _event(root, "110104", "C")
    assert _roles(root) == [["110153"], ["110152"]]
    peer, ours = root.findall("ActiveParticipant")
    assert peer.get("UserIsRequestor") == "true"
    assert peer.get("NetworkAccessPointID") == "10.0.0.7"
    assert peer.get("NetworkAccessPointTypeCode") == "2"
    assert ours.get("UserIsRequestor") == "false"
    assert _objects(root) == [(STUDY, "2", "3", "110180"), ("PID-1", "1", "1", "2")]
    study = root.findall("ParticipantObjectIdentification")[0]
    sop_classes = study.findall("ParticipantObjectDescription/SOPClass")
    assert {(s.get("UID"), s.get("NumberOfInstances")) for s in sop_classes} == {
        (CT, "3"),
        (MR, "1"),
    }
    assert study.find("ParticipantObjectName") is not None  # a name or a query (A.5.1)
    patient = root.findall("ParticipantObjectIdentification")[1]
    assert _code(patient.find("ParticipantObjectIDTypeCode")) == ("2", "RFC-3881")
    assert peer.get("AlternativeUserID") is None  # a user, not an AE: no AETITLES=


@pytest.mark.parametrize("action", ["R", "U"])
def test_instances_transferred_actions(action: a.ActionCode) -> None:
    root = _parse(
        a.instances_transferred(
            SOURCE, ARCHIVE, _peer(a.ROLE_DESTINATION), {STUDY: {CT: 1}}, {}, action=action,
            outcome=a.MINOR_FAILURE, outcome_description="1 of 2 failed",
        )
    )  # fmt: skip
    event = _event(root, "110104", action, 4)
    assert event.findtext("EventOutcomeDescription") == "1 of 2 failed"
    # a study whose patient is unknown still names a patient object (required, 1)
    assert _objects(root)[-1] == ("", "1", "1", "2")


def test_begin_transferring() -> None:
    """A.5.3.3: E, the sending (110153) and receiving (110152) processes, then the
    other participants (the C-MOVE requestor); studies and patient."""
    requestor = a.peer_participant("MOVER", "10.0.0.9", ae=True)
    root = _parse(
        a.begin_transferring(
            SOURCE, ARCHIVE, _peer(requestor=False), {STUDY: {CT: 2}}, {STUDY: "P"},
            others=(requestor,),
        )
    )  # fmt: skip
    _event(root, "110102", "E")
    assert _roles(root) == [["110153"], ["110152"], []]
    assert root.findall("ActiveParticipant")[2].get("AlternativeUserID") == "AETITLES=MOVER"
    assert _objects(root) == [(STUDY, "2", "3", "110180"), ("P", "1", "1", "2")]


def test_by_patient_splits_studies() -> None:
    """A.5.3.3/.6/.7/.8 "may only include information about a single patient"."""
    groups = a.by_patient({"1": {CT: 1}, "2": {CT: 2}, "3": {MR: 1}}, {"1": "P", "3": "P"})
    assert groups == [{"1": {CT: 1}, "3": {MR: 1}}, {"2": {CT: 2}}]


def test_instances_accessed_and_study_deleted() -> None:
    """A.5.3.6 (110103) and A.5.3.8 (110105, action D): one participant, study, patient."""
    accessed = _parse(a.instances_accessed(SOURCE, _peer(), {STUDY: {CT: 1}}, {STUDY: "P"}))
    _event(accessed, "110103", "R")
    deleted = _parse(a.study_deleted(SOURCE, _peer(), {STUDY: {}}, {STUDY: "P"}))
    _event(deleted, "110105", "D")
    for root in (accessed, deleted):
        assert len(root.findall("ActiveParticipant")) == 1
        assert _objects(root) == [(STUDY, "2", "3", "110180"), ("P", "1", "1", "2")]


def test_export() -> None:
    """A.5.3.4: 110106, action R; the exporting user (110153 Source, the requestor),
    the media (110154 Destination Media, never the requestor, with a MediaType of CID
    405), remote receivers (110152); studies (Anonymized when said) and patients."""
    media = a.media_participant("file:///mnt/usb", destination=True, media_type=a.MEDIA_USB)
    remote = a.peer_participant("RESEARCH", "10.1.1.1", requestor=False, ae=True)
    root = _parse(
        a.export(
            SOURCE, _peer(), media, {STUDY: {CT: 1}}, {STUDY: "P"}, remote=(remote,),
            anonymized=True,
        )
    )  # fmt: skip
    _event(root, "110106", "R")
    assert _roles(root) == [["110153"], ["110154"], ["110152"]]
    user, medium, _ = root.findall("ActiveParticipant")
    assert (user.get("UserIsRequestor"), medium.get("UserIsRequestor")) == ("true", "false")
    assert _code(medium.find("MediaIdentifier/MediaType")) == ("110030", "DCM")
    assert root.findtext(".//ParticipantObjectDescription/Anonymized") == "true"


def test_export_over_the_network_names_the_access_point() -> None:
    """A.5.3.4: NetworkAccessPointTypeCode / ID of the media are required when it is
    not physical media: a ``dicom://AE@host:port`` destination has its host."""
    for media, point, kind in (
        ("dicom://RESEARCH@10.1.1.1:104", "10.1.1.1", "2"),
        ("dicom://RESEARCH@[2001:db8::1]:104", "2001:db8::1", "2"),
        ("https://research.example.org/stow", "research.example.org", "1"),
    ):
        medium = a.media_participant(media, destination=True)
        root = _parse(a.export(SOURCE, _peer(), medium, {STUDY: {CT: 1}}, {STUDY: "P"}))
        element = root.findall("ActiveParticipant")[1]
        assert element.get("NetworkAccessPointID") == point
        assert element.get("NetworkAccessPointTypeCode") == kind
    assert a.media_participant("/export/today", destination=True).network_access_point is None
    assert a.media_participant("file:///export", destination=True).network_access_point is None


def test_data_import() -> None:
    """A.5.3.5: 110107, action C; the importer (110152 Destination), the source media
    (110155 Source Media, not the requestor, MediaIdentifier/MediaType required)."""
    media = a.media_participant("/media/cdrom", destination=False)
    who = a.peer_participant("alice", "pacs")
    root = _parse(a.data_import(SOURCE, who, media, {STUDY: {CT: 1}}, {STUDY: "P"}))
    _event(root, "110107", "C")
    assert _roles(root) == [["110152"], ["110155"]]
    medium = root.findall("ActiveParticipant")[1]
    assert medium.get("UserIsRequestor") == "false"
    assert _code(medium.find("MediaIdentifier/MediaType")) == ("110037", "DCM")


def test_procedure_record_accession_needs_a_sop_class() -> None:
    """A.5.3.15 with A.5.2: Accession (or MPPS) present makes SOPClass required; with no
    SOP class known it has no UID (optional in A.5.1) and 0 instances."""
    root = _parse(
        a.procedure_record(
            SOURCE, (_peer(), ARCHIVE), action="C", patient_id="P", study_uid=STUDY,
            accession="ACC1", patient_name="DOE^JANE", mpps_uid="1.2.3.4",
        )
    )  # fmt: skip
    _event(root, "110111", "C")
    study, patient = root.findall("ParticipantObjectIdentification")
    description = study.find("ParticipantObjectDescription")
    assert description is not None
    assert [(c.tag, dict(c.attrib)) for c in description] == [
        ("MPPS", {"UID": "1.2.3.4"}),
        ("Accession", {"Number": "ACC1"}),
        ("SOPClass", {"NumberOfInstances": "0"}),
    ]
    assert patient.findtext("ParticipantObjectName") == "DOE^JANE"


def test_query_cfind_and_qido() -> None:
    """A.5.3.10: E, source 110153 and destination 110152; the query object type 2 role
    3 (Report: "Shall be" for every query); a C-FIND: ID type 110181, the SOP class, the
    Identifier base64 and the TransferSyntax detail; an HTTP query: ID type 12 URI, the
    path, the query string as the query."""
    identifier = b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY "
    root = _parse(
        a.query(
            SOURCE, _peer(a.ROLE_SOURCE), ARCHIVE, "1.2.840.10008.5.1.4.1.2.2.1", identifier,
            transfer_syntax="1.2.840.10008.1.2",
        )
    )  # fmt: skip
    _event(root, "110112", "E")
    assert _objects(root) == [("1.2.840.10008.5.1.4.1.2.2.1", "2", "3", "110181")]
    obj = root.findall("ParticipantObjectIdentification")[0]
    assert base64.b64decode(obj.findtext("ParticipantObjectQuery", "")) == identifier
    detail = obj.find("ParticipantObjectDetail")
    assert detail is not None and detail.get("type") == "TransferSyntax"
    assert base64.b64decode(detail.get("value", "")) == b"1.2.840.10008.1.2"
    qido = _parse(
        a.query(SOURCE, _peer(a.ROLE_SOURCE), ARCHIVE, "/dicom-web/studies", b"/studies?x=1")
    )
    assert _objects(qido) == [("/dicom-web/studies", "2", "3", "12")]
    obj = qido.findall("ParticipantObjectIdentification")[0]
    assert base64.b64decode(obj.findtext("ParticipantObjectQuery", "")) == b"/studies?x=1"
    detail = obj.find("ParticipantObjectDetail")
    assert detail is not None and detail.get("type") == "QueryEncoding"


def test_user_authentication_success_and_failure() -> None:
    """A.5.3.12: 110114 with 110122 Login / 110123 Logout, E; failure is outcome 4."""
    ok = _parse(a.user_authentication(SOURCE, _peer(), ARCHIVE))
    event = _event(ok, "110114", "E")
    assert [_code(t) for t in event.findall("EventTypeCode")] == [("110122", "DCM")]
    bad = _parse(
        a.user_authentication(
            SOURCE, _peer(), ARCHIVE, login=False, outcome=a.MINOR_FAILURE,
            outcome_description="wrong password",
        )
    )  # fmt: skip
    event = _event(bad, "110114", "E", 4)
    assert [_code(t) for t in event.findall("EventTypeCode")] == [("110123", "DCM")]


@pytest.mark.parametrize(
    "alert", [a.NODE_AUTHENTICATION, a.SOFTWARE_CONFIGURATION, a.USE_OF_RESTRICTED_FUNCTION]
)
def test_security_alert(alert: a.Code) -> None:
    """A.5.3.11: 110113, E, a type code of CID 403, the reporting and performing
    participants (the performer never the requestor: "Shall be FALSE"), the alert
    subject (2/13) with the required "Alert Description" detail."""
    message = a.security_alert(
        SOURCE, ARCHIVE, alert, performer=_peer(), subject="MODALITY1@10.0.0.7",
        description="association rejected",
    )  # fmt: skip
    root = _parse(message)
    event = _event(root, "110113", "E", 4)
    assert [_code(t)[0] for t in event.findall("EventTypeCode")] == [alert.code]
    assert [p.get("UserIsRequestor") for p in root.findall("ActiveParticipant")] == [
        "false",
        "false",
    ]
    assert message.user == "MODALITY1"  # the index files it under the performer
    assert _objects(root) == [("MODALITY1@10.0.0.7", "2", "13", "110182")]
    obj = root.findall("ParticipantObjectIdentification")[0]
    detail = obj.find("ParticipantObjectDetail")
    assert detail is not None and detail.get("type") == "Alert Description"
    assert base64.b64decode(detail.get("value", "")) == b"association rejected"
    assert event.findtext("EventOutcomeDescription") == "association rejected"


def test_everything_is_escaped() -> None:
    """A ``<script>`` patient ID and an AE title of ``../x`` come back as text; control
    characters and line breaks do not break the one-line XML."""
    evil = '<script>alert("x")</script>&'
    message = a.instances_transferred(
        SOURCE,
        a.peer_participant("../x", "10.0.0.7", roles=(a.ROLE_SOURCE,)),
        ARCHIVE,
        {STUDY + '"><x': {CT: 1}},
        {STUDY + '"><x': evil + "\x00\nline"},
        action="C",
    )
    text = message.to_xml()
    assert "<script>" not in text
    root = _parse(message)
    assert root.findall("ActiveParticipant")[0].get("UserID") == "../x"
    patient = root.findall("ParticipantObjectIdentification")[-1]
    assert patient.get("ParticipantObjectID") == evil + "\ufffd\nline"


def test_serialisation_is_elementtrees() -> None:
    """The audit's own XML writer gives what ``ET.tostring`` gives (it replaced it for
    speed): quotes, ampersands, angle brackets, tabs, line breaks, non-ASCII text,
    empty elements and text content alike."""
    evil = '<b a="1">&\tx\r\ny</b> Müller^Zoë'
    message = a.query(
        SOURCE,
        a.peer_participant(evil, "10.0.0.7", roles=(a.ROLE_SOURCE,), ae=True),
        ARCHIVE,
        "/dicom-web/studies?PatientName=" + evil,
        evil.encode(),
        transfer_syntax=None,
        outcome=a.MINOR_FAILURE,
        outcome_description=evil,
    )
    element = a.to_element(message)
    expected = ET.tostring(element, encoding="unicode", short_empty_elements=True)
    assert message.to_xml() == expected.replace("\r", "&#13;").replace("\n", "&#10;")
    _parse(message)


def test_outcome_must_be_a_defined_value() -> None:
    with pytest.raises(ValueError, match="EventOutcomeIndicator"):
        a.user_authentication(SOURCE, _peer(), ARCHIVE, outcome=3)


def test_syslog_line_is_rfc5424() -> None:
    """RFC 5424 6: ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG``, facility
    10, severity by outcome, BOM before the XML."""
    message = a.user_authentication(SOURCE, _peer(), ARCHIVE, outcome=a.MINOR_FAILURE)
    line = a.syslog_line(
        message.to_xml(), outcome=4, when=WHEN, hostname="pacs host", process_id="42"
    )
    head, _, body = line.partition(" - ")
    assert head == "<84>1 2026-01-31T08:30:00.000+00:00 pacshost dicomvault 42 DICOM+RFC3881"
    assert body.startswith("\ufeff<AuditMessage>")
    assert a.severity(0) == 5 and a.severity(8) == 3 and a.severity(12) == 2
