"""Every DICOM Audit Message builder of ``security/audit.py``, called with realistic and
edge-case arguments, produces messages valid per the schema of PS3.15 A.5.1.1 (our RELAX
NG transcription, ``data/dicom-audit-message.rng``, validated with lxml) -- and the
validator rejects what the standard's schema rejects, so a builder that drifts fails.

The integration paths (servers, DCMTK and pynetdicom peers, httpx, the CLI) are covered
by the ``tests/conftest.py`` fixture that validates every line of every audit log a test
leaves, and by ``test_audit_conformance.py``.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from lxml import etree

from dicomvault.security import audit as a

from .audit_schema import (
    InvalidAuditMessage,
    schema,
    validate,
    validate_log,
    validate_logs_under,
)

WHEN = datetime(2026, 1, 31, 8, 30, 15, 123456, tzinfo=UTC)
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
STUDY = "1.2.826.0.1.3680043.8.498.1"
EVIL = '<script>alert("x")</script> & "quotes" \'apostrophes\' ]]> \x00\x07 é 漢字 😀\r\nnext'


def _source(site: str | None = "HOSPITAL") -> a.AuditSource:
    return a.AuditSource("DICOMVAULT", site)


def _archive(**kw: typing.Any) -> a.ActiveParticipant:
    return a.archive_participant("DICOMVAULT", "pacs.example.org", process_id="4242", **kw)


PEERS = {
    "ipv4": a.peer_participant("MODALITY1", "10.0.0.7", ae=True),
    "ipv6": a.peer_participant("WS1", "2001:db8::7", ae=True),
    "ipv6-scoped": a.peer_participant("WS2", "fe80::1%eth0"),
    "ipv4-mapped": a.peer_participant("WS3", "::ffff:10.0.0.9"),
    "host name": a.peer_participant("alice", "reading-room-3.example.org"),
    "no address": a.peer_participant("", None),
    "evil": a.peer_participant(EVIL, EVIL, user_name=EVIL, ae=True),
}

STUDIES: dict[str, tuple[dict[str, dict[str, int]], dict[str, str]]] = {
    "one": ({STUDY: {CT: 3, MR: 1}}, {STUDY: "PID-1"}),
    "none": ({}, {}),
    "no SOP classes": ({STUDY: {}}, {STUDY: "PID-1"}),
    "patient unknown": ({STUDY: {CT: 1}}, {}),
    "many": (
        {f"{STUDY}.{n}": {CT: n + 1} for n in range(200)},
        {f"{STUDY}.{n}": "P" for n in range(200)},
    ),
    "evil": ({EVIL: {EVIL: 1}}, {EVIL: EVIL}),
}


def _each_time() -> list[datetime]:
    return [WHEN, WHEN.replace(tzinfo=None), WHEN.astimezone(timezone(timedelta(hours=-5)))]


# -- one case list per builder --------------------------------------------------------


def _application_activity() -> list[a.AuditMessage]:
    launcher = a.peer_participant("root", None)
    return [
        a.application_activity(
            _source(site), _archive(), started=started, launcher=who, outcome=outcome, when=when
        )
        for started in (True, False)
        for who in (None, launcher, PEERS["evil"])
        for outcome in a.OUTCOMES
        for site in ("HOSPITAL", None)
        for when in _each_time()
    ]


def _begin_transferring() -> list[a.AuditMessage]:
    return [
        a.begin_transferring(
            _source(), _archive(), peer, studies, patients, when=WHEN, others=(PEERS["ipv6"],)
        )
        for peer in PEERS.values()
        for studies, patients in STUDIES.values()
    ]


def _instances_transferred() -> list[a.AuditMessage]:
    return [
        a.instances_transferred(
            _source(),
            peer,
            _archive(),
            studies,
            patients,
            action=action,
            outcome=outcome,
            outcome_description=EVIL,
        )
        for peer in PEERS.values()
        for studies, patients in STUDIES.values()
        for action in ("C", "R", "U")
        for outcome in (a.SUCCESS, a.SERIOUS_FAILURE)
    ]


def _instances_accessed() -> list[a.AuditMessage]:
    return [
        a.instances_accessed(_source(), peer, studies, patients, action=action)
        for peer in PEERS.values()
        for studies, patients in STUDIES.values()
        for action in ("C", "R", "U", "D")
    ]


def _study_deleted() -> list[a.AuditMessage]:
    return [
        a.study_deleted(_source(), peer, studies, patients, outcome_description=EVIL)
        for peer in PEERS.values()
        for studies, patients in STUDIES.values()
    ]


def _export() -> list[a.AuditMessage]:
    media = [
        a.media_participant("file:///export/today", destination=True),
        a.media_participant(EVIL, destination=True, media_type=a.MEDIA_DVD, label=EVIL),
        a.peer_participant("DEST@10.0.0.1:104", None),  # a caller's plain participant
    ]
    return [
        a.export(
            _source(),
            PEERS["host name"],
            medium,
            studies,
            patients,
            remote=remote,
            anonymized=anonymized,
        )
        for medium in media
        for studies, patients in STUDIES.values()
        for remote in ((), (PEERS["ipv4"], PEERS["ipv6"]))
        for anonymized in (None, True, False)
    ]


def _data_import() -> list[a.AuditMessage]:
    return [
        a.data_import(
            _source(),
            PEERS["host name"],
            medium,
            studies,
            patients,
            outcome=a.MINOR_FAILURE,
            outcome_description="3 file(s) failed",
        )
        for medium in (
            a.media_participant("/media/cdrom", destination=False, media_type=a.MEDIA_CD),
            a.media_participant(EVIL, destination=False, label="VOLUME 1"),
        )
        for studies, patients in STUDIES.values()
    ]


def _procedure_record() -> list[a.AuditMessage]:
    return [
        a.procedure_record(
            _source(),
            participants,
            action=action,
            patient_id=pid,
            study_uid=study,
            accession=accession,
            patient_name=name,
            mpps_uid=mpps,
            outcome_description=EVIL,
        )
        for participants in ((PEERS["ipv4"],), (PEERS["evil"], _archive()))
        for action in ("C", "R", "U", "D")
        for pid in ("PID-1", "", EVIL)
        for study, accession, mpps in (
            (None, None, None),
            (STUDY, None, None),
            (STUDY, "ACC-1", None),
            (STUDY, None, "1.2.3"),
            (STUDY, EVIL, EVIL),
        )
        for name in (None, "DOE^JANE", EVIL)
    ]


def _query() -> list[a.AuditMessage]:
    identifiers = [b"", b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ", bytes(range(256)), EVIL.encode()]
    return [
        *(
            a.query(
                _source(),
                peer,
                _archive(),
                "1.2.840.10008.5.1.4.1.2.2.1",
                data,
                transfer_syntax=syntax,
                outcome=outcome,
                outcome_description=EVIL,
            )
            for peer in PEERS.values()
            for data in identifiers
            for syntax in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")
            for outcome in (a.SUCCESS, a.MINOR_FAILURE)
        ),
        *(
            a.query(_source(), peer, _archive(), path, (path + "?" + q).encode())
            for peer in PEERS.values()
            for path in ("/dicom-web/studies", "/api/worklist", EVIL)
            for q in ("", "PatientID=%3Cscript%3E&limit=10", EVIL)
        ),
    ]


def _user_authentication() -> list[a.AuditMessage]:
    return [
        a.user_authentication(
            _source(),
            peer,
            _archive(),
            login=login,
            outcome=outcome,
            outcome_description=EVIL if outcome else None,
        )
        for peer in PEERS.values()
        for login in (True, False)
        for outcome in a.OUTCOMES
    ]


def _security_alert() -> list[a.AuditMessage]:
    alerts = [a.NODE_AUTHENTICATION, a.SECURITY_CONFIGURATION, a.SOFTWARE_CONFIGURATION,
              a.USE_OF_RESTRICTED_FUNCTION]  # fmt: skip
    subjects = [
        (None, a.NODE_ID, None),
        ("MODALITY1@10.0.0.7", a.NODE_ID, "MODALITY1"),
        ("2001:db8::7", a.NODE_ID, None),
        ("/api/worklist", a.URI, "POST /api/worklist"),
        (CT, a.SOP_CLASS_UID, "C-STORE " + CT),
        ("user alice", a.USER_IDENTIFIER, None),
        (EVIL, a.URI, EVIL),
    ]
    return [
        a.security_alert(
            _source(),
            _archive(),
            alert,
            performer=performer,
            subject=subject,
            subject_type=kind,
            subject_name=name,
            description=description,
            outcome=outcome,
        )
        for alert in alerts
        for performer in (None, PEERS["ipv4"], PEERS["evil"])
        for subject, kind, name in subjects
        for description in (None, "TLS handshake failed", EVIL)
        for outcome in (a.SUCCESS, a.MINOR_FAILURE, a.MAJOR_FAILURE)
    ]


CASES: dict[str, Callable[[], list[a.AuditMessage]]] = {
    "application_activity": _application_activity,
    "begin_transferring": _begin_transferring,
    "instances_transferred": _instances_transferred,
    "instances_accessed": _instances_accessed,
    "study_deleted": _study_deleted,
    "export": _export,
    "data_import": _data_import,
    "procedure_record": _procedure_record,
    "query": _query,
    "user_authentication": _user_authentication,
    "security_alert": _security_alert,
}


def test_every_builder_has_cases() -> None:
    """A new message builder (a public function of security/audit.py returning an
    AuditMessage) must be added to CASES, so it is validated too."""
    builders = {
        name
        for name, fn in inspect.getmembers(a, inspect.isfunction)
        if not name.startswith("_")
        and fn.__module__ == a.__name__
        and typing.get_type_hints(fn).get("return") is a.AuditMessage
    }
    assert builders - {"with_names"} == set(CASES)


@pytest.mark.parametrize("builder", sorted(CASES))
def test_builder_messages_are_valid(builder: str) -> None:
    messages = CASES[builder]()
    assert messages
    for message in messages:
        text = message.to_xml()
        assert "\n" not in text and "\r" not in text
        validate(text)
        named = a.with_names(message, {"PID-1": EVIL}, {STUDY: EVIL})
        validate(named.to_xml())


def test_syslog_lines_of_every_builder_parse_back(tmp_path: Path) -> None:
    """As lines of a log (RFC 5424 header, BOM, XML), every message validates too."""
    log = tmp_path / "audit.log"
    lines = [
        a.syslog_line(m.to_xml(), outcome=m.outcome, when=m.time, hostname="pacs", process_id="1")
        for build in CASES.values()
        for m in build()[:20]
    ]
    log.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    assert validate_log(log) == len(lines)


def test_evil_values_are_text() -> None:
    """``<script>``, ``&``, quotes and ``]]>`` come back as the same text; characters
    XML 1.0 cannot carry become U+FFFD; nothing becomes markup."""
    message = a.instances_transferred(
        _source(), PEERS["evil"], _archive(), {EVIL: {CT: 1}}, {EVIL: EVIL}, action="C"
    )
    root = validate(message.to_xml())
    expected = EVIL.replace("\x00", "\ufffd").replace("\x07", "\ufffd")
    assert root.find("ActiveParticipant").get("UserID") == expected
    patient = root.findall("ParticipantObjectIdentification")[-1]
    assert patient.get("ParticipantObjectID") == expected
    assert root.findall(".//script") == []


# -- the validator has teeth ----------------------------------------------------------


def _valid_tree() -> etree._Element:
    message = a.instances_transferred(
        _source(), PEERS["ipv4"], _archive(), *STUDIES["one"], action="C"
    )
    return etree.fromstring(message.to_xml().encode())


def _mutate(change: Callable[[etree._Element], object]) -> bytes:
    root = _valid_tree()
    change(root)
    return etree.tostring(root)


def _study(root: etree._Element) -> etree._Element:
    return root.find("ParticipantObjectIdentification")


def _old_layout(root: etree._Element) -> None:
    """What the builders emitted before: SOPClass beside ParticipantObjectDescription
    (text), not inside it."""
    study = _study(root)
    description = study.find("ParticipantObjectDescription")
    sop_class = description.find("SOPClass")
    description.remove(sop_class)
    description.text = "1 instance(s)"
    study.append(sop_class)


INVALID = {
    "SOPClass outside ParticipantObjectDescription": _old_layout,
    "no ParticipantObjectName nor Query": lambda r: _study(r).remove(
        _study(r).find("ParticipantObjectName")
    ),
    "text in ParticipantObjectDescription": lambda r: setattr(
        _study(r).find("ParticipantObjectDescription"), "text", "4 instance(s)"
    ),
    "EventActionCode X": lambda r: r.find("EventIdentification").set("EventActionCode", "X"),
    "EventOutcomeIndicator 3": lambda r: r.find("EventIdentification").set(
        "EventOutcomeIndicator", "3"
    ),
    "EventDateTime not a dateTime": lambda r: r.find("EventIdentification").set(
        "EventDateTime", "yesterday"
    ),
    "UserIsRequestor yes": lambda r: r.find("ActiveParticipant").set("UserIsRequestor", "yes"),
    "NetworkAccessPointTypeCode 6": lambda r: r.find("ActiveParticipant").set(
        "NetworkAccessPointTypeCode", "6"
    ),
    "ParticipantObjectTypeCode 5": lambda r: _study(r).set("ParticipantObjectTypeCode", "5"),
    "ParticipantObjectTypeCodeRole 27": lambda r: _study(r).set(
        "ParticipantObjectTypeCodeRole", "27"
    ),
    "ParticipantObjectDataLifeCycle 16": lambda r: _study(r).set(
        "ParticipantObjectDataLifeCycle", "16"
    ),
    "NumberOfInstances missing": lambda r: r.find(".//SOPClass").attrib.pop("NumberOfInstances"),
    "no ActiveParticipant": lambda r: [r.remove(p) for p in r.findall("ActiveParticipant")],
    "AuditSourceIdentification twice": lambda r: r.insert(
        2, etree.fromstring(b'<AuditSourceIdentification AuditSourceID="X"/>')
    ),
    "objects before the source": lambda r: r.insert(1, _study(r)),
    "originalText missing": lambda r: r.find("EventIdentification/EventID").attrib.pop(
        "originalText"
    ),
    "unknown element": lambda r: r.append(etree.Element("Extra")),
    "Encrypted not boolean": lambda r: etree.SubElement(
        _study(r).find("ParticipantObjectDescription"), "Encrypted"
    ).__setattr__("text", "maybe"),
    "a name and a query": lambda r: _study(r).insert(
        2, etree.fromstring(b"<ParticipantObjectQuery>AA==</ParticipantObjectQuery>")
    ),
}


def test_the_valid_original_is_valid() -> None:
    validate(etree.tostring(_valid_tree()))


@pytest.mark.parametrize("what", sorted(INVALID))
def test_the_schema_rejects(what: str) -> None:
    with pytest.raises(InvalidAuditMessage, match=r"A\.5\.1"):
        validate(_mutate(INVALID[what]))


def test_not_well_formed_is_rejected() -> None:
    with pytest.raises(InvalidAuditMessage, match="not well-formed"):
        validate("<AuditMessage><EventIdentification></AuditMessage>")


def test_a_bad_log_line_is_reported_with_its_number(tmp_path: Path) -> None:
    good = a.syslog_line(_mutate(lambda r: None).decode(), outcome=0, when=WHEN,
                         hostname="h", process_id="1")  # fmt: skip
    bad = a.syslog_line(_mutate(_old_layout).decode(), outcome=0, when=WHEN, hostname="h",
                        process_id="1")  # fmt: skip
    log = tmp_path / "elsewhere" / "audit.log"
    log.parent.mkdir()
    log.write_text(f"{good}\n{bad}\n", encoding="utf-8")
    with pytest.raises(InvalidAuditMessage, match=r"audit\.log, line 2: invalid per PS3\.15"):
        validate_log(log)
    log.write_text(f"{good}\n", encoding="utf-8")  # leave it valid for the fixture


def test_every_log_under_a_folder_is_checked(tmp_path: Path) -> None:
    """What the tests/conftest.py fixture runs after each test: audit.log and the
    rotated audit.log.N anywhere under the folder; the lock file is not a log."""
    line = a.syslog_line(_mutate(lambda r: None).decode(), outcome=0, when=WHEN,
                         hostname="h", process_id="1")  # fmt: skip
    bad = a.syslog_line(_mutate(_old_layout).decode(), outcome=0, when=WHEN, hostname="h",
                        process_id="1")  # fmt: skip
    (tmp_path / "data" / "audit").mkdir(parents=True)
    (tmp_path / "data" / "audit" / "audit.log").write_text(f"{line}\n{line}\n")
    (tmp_path / "data" / "audit" / "audit.log.1").write_text(f"{line}\n")
    (tmp_path / "data" / "audit" / "audit.log.lock").write_text("")
    (tmp_path / "other.log").write_text("not audit\n")
    assert validate_logs_under(tmp_path) == 3
    rotated = tmp_path / "data" / "audit" / "audit.log.2"
    rotated.write_text(f"{bad}\n")
    with pytest.raises(InvalidAuditMessage, match=r"audit\.log\.2, line 1"):
        validate_logs_under(tmp_path)
    rotated.unlink()  # leave the folder valid for the fixture


def test_the_schema_says_where_it_comes_from() -> None:
    """The transcription names its source (section and edition) and compiles."""
    header = (Path(__file__).parent / "data" / "dicom-audit-message.rng").read_text()
    assert "PS3.15 A.5.1.1" in header and "2023b" in header and "2025e" in header
    assert schema() is schema()  # compiled once
