"""DICOM Audit Messages (PS3.15 A.5, derived from RFC 3881): the message model, its XML
form (PS3.15 A.5.1) and one builder per message of PS3.15 A.5.3 that the archive emits.

Codes are those of PS3.16 CID 400 (Audit Event ID), CID 401 (Audit Event Type Code),
CID 402 (Audit Active Participant Role ID Code), CID 403 (Security Alert Type Code) and
CID 404 (Audit Participant Object ID Type Code), with coding scheme "DCM"; the patient
identifier type is RFC 3881's ("2", "RFC-3881", "Patient Number").

Element order follows PS3.15 A.5.1: ``EventIdentification``, ``ActiveParticipant``+,
``AuditSourceIdentification``, ``ParticipantObjectIdentification``*; inside a
participant object ``ParticipantObjectIDTypeCode``, ``ParticipantObjectName`` or
``ParticipantObjectQuery``, ``ParticipantObjectDetail``*, ``ParticipantObjectDescription``,
``MPPS``*, ``Accession``*, ``SOPClass``*, ``ParticipantObjectContainsStudy``.
Every value is escaped by :mod:`xml.etree.ElementTree` (a ``<script>`` in a patient
name is text); control characters XML 1.0 cannot carry become U+FFFD, and the
serialised message has no raw line break, so one message is one line of a log.

Not done here: validation against the A.5.1 schema (it is not in the repository; the
tests check each message's structure against the tables of PS3.15 A.5.3 instead).

Standard library and :mod:`dicomvault.model` only (DESIGN.md, security/).
"""

from __future__ import annotations

import base64
import ipaddress
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

ActionCode = Literal["C", "R", "U", "D", "E"]

#: EventOutcomeIndicator (PS3.15 A.5.1, RFC 3881 5.1.4).
SUCCESS: Final = 0
MINOR_FAILURE: Final = 4
SERIOUS_FAILURE: Final = 8
MAJOR_FAILURE: Final = 12
OUTCOMES: Final = (SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE, MAJOR_FAILURE)


@dataclass(frozen=True, slots=True)
class Code:
    """A coded value (PS3.15 A.5.1 CodedValueType): ``csd-code``, ``codeSystemName``,
    ``originalText``."""

    code: str
    system: str
    text: str


def _dcm(code: str, text: str) -> Code:
    return Code(code, "DCM", text)


# PS3.16 CID 400, Audit Event ID.
APPLICATION_ACTIVITY: Final = _dcm("110100", "Application Activity")
BEGIN_TRANSFERRING: Final = _dcm("110102", "Begin Transferring DICOM Instances")
INSTANCES_ACCESSED: Final = _dcm("110103", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED: Final = _dcm("110104", "DICOM Instances Transferred")
STUDY_DELETED: Final = _dcm("110105", "DICOM Study Deleted")
EXPORT: Final = _dcm("110106", "Export")
DATA_IMPORT: Final = _dcm("110107", "Import")
PROCEDURE_RECORD: Final = _dcm("110111", "Procedure Record")
QUERY: Final = _dcm("110112", "Query")
SECURITY_ALERT: Final = _dcm("110113", "Security Alert")
USER_AUTHENTICATION: Final = _dcm("110114", "User Authentication")

# PS3.16 CID 401, Audit Event Type Code.
APPLICATION_START: Final = _dcm("110120", "Application Start")
APPLICATION_STOP: Final = _dcm("110121", "Application Stop")
LOGIN: Final = _dcm("110122", "Login")
LOGOUT: Final = _dcm("110123", "Logout")

# PS3.16 CID 403, Security Alert Type Code.
NODE_AUTHENTICATION: Final = _dcm("110126", "Node Authentication")
SECURITY_CONFIGURATION: Final = _dcm("110129", "Security Configuration")
SOFTWARE_CONFIGURATION: Final = _dcm("110131", "Software Configuration")
USE_OF_RESTRICTED_FUNCTION: Final = _dcm("110132", "Use of Restricted Function")

# PS3.16 CID 402, Audit Active Participant Role ID Code.
ROLE_APPLICATION: Final = _dcm("110150", "Application")
ROLE_APPLICATION_LAUNCHER: Final = _dcm("110151", "Application Launcher")
ROLE_DESTINATION: Final = _dcm("110152", "Destination Role ID")
ROLE_SOURCE: Final = _dcm("110153", "Source Role ID")

# PS3.16 CID 404, Audit Participant Object ID Type Code; RFC 3881 5.5.4.
STUDY_INSTANCE_UID: Final = _dcm("110180", "Study Instance UID")
SOP_CLASS_UID: Final = _dcm("110181", "SOP Class UID")
NODE_ID: Final = _dcm("110182", "Node ID")
PATIENT_NUMBER: Final = Code("2", "RFC-3881", "Patient Number")
USER_IDENTIFIER: Final = Code("11", "RFC-3881", "User Identifier")
URI: Final = Code("12", "RFC-3881", "URI")

#: AuditSourceTypeCode (RFC 3881 5.4.3): 4, application server process tier.
APPLICATION_SERVER: Final = Code("4", "DCM", "Application Server Process")

# ParticipantObjectTypeCode and ...TypeCodeRole (RFC 3881 5.5.1, 5.5.2).
PERSON, SYSTEM_OBJECT = "1", "2"
ROLE_PATIENT, ROLE_REPORT, ROLE_RESOURCE, ROLE_SECURITY_RESOURCE, ROLE_QUERY = (
    "1", "3", "4", "13", "24"
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ActiveParticipant:
    """One ``ActiveParticipant`` (PS3.15 A.5.1): a user, process or node taking part."""

    user_id: str
    requestor: bool
    alternative_user_id: str | None = None
    user_name: str | None = None
    #: Host name or IP address; ``NetworkAccessPointTypeCode`` follows (1 name, 2 IP).
    network_access_point: str | None = None
    roles: tuple[Code, ...] = ()


@dataclass(frozen=True, slots=True)
class SOPClassCount:
    """``SOPClass UID=… NumberOfInstances=…`` of a study participant object."""

    uid: str
    instances: int


@dataclass(frozen=True, slots=True)
class ParticipantObject:
    """One ``ParticipantObjectIdentification`` (PS3.15 A.5.1, A.5.2)."""

    object_id: str
    type_code: str
    role: str
    id_type: Code
    name: str | None = None
    query: bytes | None = None
    #: ``ParticipantObjectDetail`` type / value pairs (the value is sent base64).
    details: tuple[tuple[str, bytes], ...] = ()
    description: str | None = None
    accessions: tuple[str, ...] = ()
    sop_classes: tuple[SOPClassCount, ...] = ()
    contains_studies: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AuditSource:
    """``AuditSourceIdentification``: who reports (our AE title / host)."""

    source_id: str
    enterprise_site_id: str | None = None


@dataclass(frozen=True, slots=True)
class AuditMessage:
    """One DICOM Audit Message (PS3.15 A.5.1). :meth:`to_xml` serialises it; the other
    properties are what the audit index keeps for searching."""

    event_id: Code
    action: ActionCode
    outcome: int
    time: datetime
    participants: tuple[ActiveParticipant, ...]
    source: AuditSource
    objects: tuple[ParticipantObject, ...] = ()
    type_codes: tuple[Code, ...] = ()
    outcome_description: str | None = None

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"EventOutcomeIndicator must be one of {OUTCOMES}")
        if not self.participants:
            raise ValueError("an audit message needs at least one ActiveParticipant")

    @property
    def requestor(self) -> ActiveParticipant | None:
        return next((p for p in self.participants if p.requestor), None)

    @property
    def user(self) -> str:
        """The requesting participant's UserID (or the first participant's)."""
        who = self.requestor or self.participants[0]
        return who.user_id

    @property
    def peer(self) -> str:
        """The requesting participant's network access point, when known."""
        who = self.requestor or self.participants[0]
        return who.network_access_point or ""

    @property
    def patient_ids(self) -> tuple[str, ...]:
        return tuple(o.object_id for o in self.objects if o.id_type == PATIENT_NUMBER)

    @property
    def study_uids(self) -> tuple[str, ...]:
        return tuple(o.object_id for o in self.objects if o.id_type == STUDY_INSTANCE_UID)

    @property
    def type_code(self) -> str:
        return self.type_codes[0].code if self.type_codes else ""

    def to_xml(self) -> str:
        """The message as one line of XML (PS3.15 A.5.1), UTF-8 text without declaration."""
        return to_xml(self)


# -- serialisation (PS3.15 A.5.1) -----------------------------------------------------

#: Characters XML 1.0 cannot carry (C0 controls but TAB, LF, CR; lone surrogates;
#: U+FFFE/U+FFFF).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _clean(value: str) -> str:
    return _NOT_XML.sub("\ufffd", value)


def _coded(parent: ET.Element, tag: str, code: Code) -> None:
    ET.SubElement(
        parent,
        tag,
        {"csd-code": _clean(code.code), "codeSystemName": code.system,
         "originalText": _clean(code.text)},
    )  # fmt: skip


def _text(parent: ET.Element, tag: str, text: str) -> ET.Element:
    element = ET.SubElement(parent, tag)
    element.text = _clean(text)
    return element


def _network_type(point: str) -> str:
    """NetworkAccessPointTypeCode (RFC 3881 5.3.5): 2 for an IP address, 1 for a name."""
    try:
        ipaddress.ip_address(point.split("%")[0])
    except ValueError:
        return "1"
    return "2"


def event_time(when: datetime) -> str:
    """EventDateTime: xs:dateTime with the UTC offset, to the millisecond."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.isoformat(timespec="milliseconds")


def to_element(message: AuditMessage) -> ET.Element:
    """The ``AuditMessage`` element tree (PS3.15 A.5.1)."""
    root = ET.Element("AuditMessage")
    event = ET.SubElement(
        root,
        "EventIdentification",
        {
            "EventActionCode": message.action,
            "EventDateTime": event_time(message.time),
            "EventOutcomeIndicator": str(message.outcome),
        },
    )
    _coded(event, "EventID", message.event_id)
    for code in message.type_codes:
        _coded(event, "EventTypeCode", code)
    if message.outcome_description:
        _text(event, "EventOutcomeDescription", message.outcome_description)
    for participant in message.participants:
        attrs = {"UserID": _clean(participant.user_id)}
        if participant.alternative_user_id:
            attrs["AlternativeUserID"] = _clean(participant.alternative_user_id)
        if participant.user_name:
            attrs["UserName"] = _clean(participant.user_name)
        attrs["UserIsRequestor"] = "true" if participant.requestor else "false"
        if participant.network_access_point:
            attrs["NetworkAccessPointID"] = _clean(participant.network_access_point)
            attrs["NetworkAccessPointTypeCode"] = _network_type(participant.network_access_point)
        active = ET.SubElement(root, "ActiveParticipant", attrs)
        for role in participant.roles:
            _coded(active, "RoleIDCode", role)
    source_attrs = {}
    if message.source.enterprise_site_id:
        source_attrs["AuditEnterpriseSiteID"] = _clean(message.source.enterprise_site_id)
    source_attrs["AuditSourceID"] = _clean(message.source.source_id)
    source = ET.SubElement(root, "AuditSourceIdentification", source_attrs)
    _coded(source, "AuditSourceTypeCode", APPLICATION_SERVER)
    for obj in message.objects:
        element = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": _clean(obj.object_id),
                "ParticipantObjectTypeCode": obj.type_code,
                "ParticipantObjectTypeCodeRole": obj.role,
            },
        )
        _coded(element, "ParticipantObjectIDTypeCode", obj.id_type)
        if obj.name is not None:
            _text(element, "ParticipantObjectName", obj.name)
        elif obj.query is not None:
            _text(element, "ParticipantObjectQuery", base64.b64encode(obj.query).decode())
        for kind, value in obj.details:
            ET.SubElement(
                element,
                "ParticipantObjectDetail",
                {"type": _clean(kind), "value": base64.b64encode(value).decode()},
            )
        if obj.description:
            _text(element, "ParticipantObjectDescription", obj.description)
        for number in obj.accessions:
            ET.SubElement(element, "Accession", {"Number": _clean(number)})
        for sop in obj.sop_classes:
            ET.SubElement(
                element,
                "SOPClass",
                {"UID": _clean(sop.uid), "NumberOfInstances": str(sop.instances)},
            )
        if obj.contains_studies:
            contains = ET.SubElement(element, "ParticipantObjectContainsStudy")
            for uid in obj.contains_studies:
                ET.SubElement(contains, "StudyIDs", {"UID": _clean(uid)})
    return root


def to_xml(message: AuditMessage) -> str:
    """The message as XML text on one line: line breaks inside text become ``&#10;``."""
    text = ET.tostring(to_element(message), encoding="unicode", short_empty_elements=True)
    return text.replace("\r", "&#13;").replace("\n", "&#10;")


# -- participants and objects ---------------------------------------------------------


def archive_participant(
    ae_title: str,
    host: str,
    *,
    requestor: bool = False,
    roles: Sequence[Code] = (),
    process_id: str | None = None,
) -> ActiveParticipant:
    """The archive itself as an active participant (UserID = our AE title, the process
    ID as AlternativeUserID, as PS3.15 A.5.2.1 suggests for a process)."""
    return ActiveParticipant(
        user_id=ae_title,
        requestor=requestor,
        alternative_user_id=process_id,
        network_access_point=host or None,
        roles=tuple(roles),
    )


def peer_participant(
    user_id: str,
    host: str | None,
    *,
    requestor: bool = True,
    roles: Sequence[Code] = (),
    user_name: str | None = None,
) -> ActiveParticipant:
    """A remote node or user: its AE title (DIMSE) or user name (HTTP) as UserID."""
    return ActiveParticipant(
        user_id=user_id or "-",
        requestor=requestor,
        user_name=user_name,
        network_access_point=host or None,
        roles=tuple(roles),
    )


def patient_object(patient_id: str, name: str | None = None) -> ParticipantObject:
    """The patient (PS3.15 A.5.3: type 1 person, role 1 patient, RFC 3881 ID type 2)."""
    return ParticipantObject(
        object_id=patient_id,
        type_code=PERSON,
        role=ROLE_PATIENT,
        id_type=PATIENT_NUMBER,
        name=name,
    )


def study_object(
    study_uid: str,
    sop_classes: Mapping[str, int] | None = None,
    *,
    accessions: Iterable[str] = (),
) -> ParticipantObject:
    """A study (type 2 system object, role 3 report, ID type 110180 Study Instance UID)
    with its SOP classes and how many instances of each took part."""
    counts = tuple(SOPClassCount(uid, n) for uid, n in sorted((sop_classes or {}).items()))
    total = sum(c.instances for c in counts)
    return ParticipantObject(
        object_id=study_uid,
        type_code=SYSTEM_OBJECT,
        role=ROLE_REPORT,
        id_type=STUDY_INSTANCE_UID,
        description=f"{total} instance(s)" if counts else None,
        accessions=tuple(a for a in accessions if a),
        sop_classes=counts,
    )


def query_object(
    sop_class_uid: str, query: bytes, *, transfer_syntax: str | None = None
) -> ParticipantObject:
    """The query (PS3.15 A.5.3.10, "SOP Queried and the Query"): type 2, ID type 110181
    SOP Class UID, the query base64 in ``ParticipantObjectQuery``. A C-FIND Identifier
    (``transfer_syntax`` given) has role 3 (Report) and a ``TransferSyntax`` detail, as
    the table of A.5.3.10 gives; a QIDO-RS query string (no transfer syntax) has role
    24 (Query) and a ``QueryEncoding`` detail of UTF-8."""
    if transfer_syntax is not None:
        role, details = ROLE_REPORT, (("TransferSyntax", transfer_syntax.encode()),)
    else:
        role, details = ROLE_QUERY, (("QueryEncoding", b"UTF-8"),)
    return ParticipantObject(
        object_id=sop_class_uid,
        type_code=SYSTEM_OBJECT,
        role=role,
        id_type=SOP_CLASS_UID,
        query=query,
        details=details,
    )


def _studies(
    studies: Mapping[str, Mapping[str, int]],
    patients: Mapping[str, str],
    accessions: Mapping[str, Iterable[str]] | None = None,
) -> tuple[ParticipantObject, ...]:
    """Study objects, then one patient object per distinct patient of those studies."""
    objects = [
        study_object(uid, counts, accessions=(accessions or {}).get(uid, ()))
        for uid, counts in studies.items()
    ]
    seen: dict[str, None] = {}
    for uid in studies:
        seen.setdefault(patients.get(uid, ""), None)
    objects += [patient_object(pid) for pid in seen]
    return tuple(objects)


def _now(when: datetime | None) -> datetime:
    return when if when is not None else datetime.now(UTC)


# -- the messages of PS3.15 A.5.3 -----------------------------------------------------


def application_activity(
    source: AuditSource,
    application: ActiveParticipant,
    *,
    started: bool,
    launcher: ActiveParticipant | None = None,
    outcome: int = SUCCESS,
    when: datetime | None = None,
) -> AuditMessage:
    """Application Activity (PS3.15 A.5.3.1): 110100 with type 110120 Application
    Start or 110121 Application Stop; the application has role 110150 and, when known,
    the user who started or stopped it role 110151 (Application Launcher)."""
    participants = [application]
    if launcher is not None:
        participants.append(launcher)
    return AuditMessage(
        event_id=APPLICATION_ACTIVITY,
        action="E",
        outcome=outcome,
        time=_now(when),
        participants=tuple(participants),
        source=source,
        type_codes=(APPLICATION_START if started else APPLICATION_STOP,),
    )


def begin_transferring(
    source: AuditSource,
    sender: ActiveParticipant,
    receiver: ActiveParticipant,
    studies: Mapping[str, Mapping[str, int]],
    patients: Mapping[str, str],
    *,
    when: datetime | None = None,
) -> AuditMessage:
    """Begin Transferring DICOM Instances (PS3.15 A.5.3.3): 110102, action E; the
    sender has role 110153 Source, the receiver 110152 Destination; one study object
    per study with its SOP classes, one patient object per patient."""
    return AuditMessage(
        event_id=BEGIN_TRANSFERRING,
        action="E",
        outcome=SUCCESS,
        time=_now(when),
        participants=(sender, receiver),
        source=source,
        objects=_studies(studies, patients),
    )


def instances_transferred(
    source: AuditSource,
    sender: ActiveParticipant,
    receiver: ActiveParticipant,
    studies: Mapping[str, Mapping[str, int]],
    patients: Mapping[str, str],
    *,
    action: ActionCode,
    outcome: int = SUCCESS,
    outcome_description: str | None = None,
    when: datetime | None = None,
) -> AuditMessage:
    """DICOM Instances Transferred (PS3.15 A.5.3.7): 110104; action C (Create) when we
    received and stored them (C-STORE, STOW-RS), R (Read) when we sent them (C-MOVE,
    C-GET, WADO-RS); U when an existing instance was replaced."""
    return AuditMessage(
        event_id=INSTANCES_TRANSFERRED,
        action=action,
        outcome=outcome,
        time=_now(when),
        participants=(sender, receiver),
        source=source,
        objects=_studies(studies, patients),
        outcome_description=outcome_description,
    )


def instances_accessed(
    source: AuditSource,
    accessor: ActiveParticipant,
    studies: Mapping[str, Mapping[str, int]],
    patients: Mapping[str, str],
    *,
    action: ActionCode = "R",
    outcome: int = SUCCESS,
    when: datetime | None = None,
) -> AuditMessage:
    """DICOM Instances Accessed (PS3.15 A.5.3.6): 110103; instances read without being
    transferred as DICOM objects (WADO-RS metadata, rendered images)."""
    return AuditMessage(
        event_id=INSTANCES_ACCESSED,
        action=action,
        outcome=outcome,
        time=_now(when),
        participants=(accessor,),
        source=source,
        objects=_studies(studies, patients),
    )


def study_deleted(
    source: AuditSource,
    deleter: ActiveParticipant,
    studies: Mapping[str, Mapping[str, int]],
    patients: Mapping[str, str],
    *,
    outcome: int = SUCCESS,
    outcome_description: str | None = None,
    when: datetime | None = None,
) -> AuditMessage:
    """DICOM Study Deleted (PS3.15 A.5.3.8): 110105, action D; the study (or the part
    of it that went) and its patient."""
    return AuditMessage(
        event_id=STUDY_DELETED,
        action="D",
        outcome=outcome,
        time=_now(when),
        participants=(deleter,),
        source=source,
        objects=_studies(studies, patients),
        outcome_description=outcome_description,
    )


def export(
    source: AuditSource,
    exporter: ActiveParticipant,
    media: ActiveParticipant,
    studies: Mapping[str, Mapping[str, int]],
    patients: Mapping[str, str],
    *,
    outcome: int = SUCCESS,
    when: datetime | None = None,
) -> AuditMessage:
    """Export (PS3.15 A.5.3.4): 110106, action R; ``media`` is the destination
    (role 110152) such as a directory or a remote that is not a DICOM node."""
    return AuditMessage(
        event_id=EXPORT,
        action="R",
        outcome=outcome,
        time=_now(when),
        participants=(exporter, media),
        source=source,
        objects=_studies(studies, patients),
    )


def data_import(
    source: AuditSource,
    importer: ActiveParticipant,
    media: ActiveParticipant,
    studies: Mapping[str, Mapping[str, int]],
    patients: Mapping[str, str],
    *,
    outcome: int = SUCCESS,
    outcome_description: str | None = None,
    when: datetime | None = None,
) -> AuditMessage:
    """Data Import (PS3.15 A.5.3.5 of the current edition; "Import" 110107), action C:
    ``importer`` is who imported (role 110152 Destination), ``media`` where the data came
    from (role 110153 Source: a folder, a DICOMDIR's media)."""
    return AuditMessage(
        event_id=DATA_IMPORT,
        action="C",
        outcome=outcome,
        time=_now(when),
        participants=(importer, media),
        source=source,
        objects=_studies(studies, patients),
        outcome_description=outcome_description,
    )


def procedure_record(
    source: AuditSource,
    participants: Sequence[ActiveParticipant],
    *,
    action: ActionCode,
    patient_id: str,
    study_uid: str | None = None,
    accession: str | None = None,
    outcome: int = SUCCESS,
    outcome_description: str | None = None,
    when: datetime | None = None,
) -> AuditMessage:
    """Procedure Record (PS3.15 A.5.3.15 in the 2024/2025 editions): 110111, a worklist
    item or a performed procedure step created (C), updated (U), read (R) or deleted
    (D). One or two participants (the person and / or the process); the study (ID type
    110180, with its Accession Number) when known; exactly ONE patient, as the standard
    asks ("only information about a single patient")."""
    objects: list[ParticipantObject] = []
    if study_uid:
        objects.append(study_object(study_uid, accessions=(accession,) if accession else ()))
    objects.append(patient_object(patient_id or "-"))
    return AuditMessage(
        event_id=PROCEDURE_RECORD,
        action=action,
        outcome=outcome,
        time=_now(when),
        participants=tuple(participants),
        source=source,
        objects=tuple(objects),
        outcome_description=outcome_description,
    )


def query(
    source: AuditSource,
    requestor: ActiveParticipant,
    responder: ActiveParticipant,
    sop_class_uid: str,
    query_bytes: bytes,
    *,
    transfer_syntax: str | None = None,
    outcome: int = SUCCESS,
    outcome_description: str | None = None,
    when: datetime | None = None,
) -> AuditMessage:
    """Query (PS3.15 A.5.3.10): 110112, action E; the querying node (role 110153
    Source) and the archive (110152 Destination); the query object with its SOP Class
    UID (a C-FIND SOP class; for QIDO-RS the Study Root FIND class by convention) and
    the query, base64."""
    return AuditMessage(
        event_id=QUERY,
        action="E",
        outcome=outcome,
        time=_now(when),
        participants=(requestor, responder),
        source=source,
        objects=(query_object(sop_class_uid, query_bytes, transfer_syntax=transfer_syntax),),
        outcome_description=outcome_description,
    )


def user_authentication(
    source: AuditSource,
    user: ActiveParticipant,
    node: ActiveParticipant,
    *,
    login: bool = True,
    outcome: int = SUCCESS,
    outcome_description: str | None = None,
    when: datetime | None = None,
) -> AuditMessage:
    """User Authentication (PS3.15 A.5.3.12): 110114 with 110122 Login or 110123
    Logout, action E; a refused login is outcome 4 (minor failure) with the reason."""
    return AuditMessage(
        event_id=USER_AUTHENTICATION,
        action="E",
        outcome=outcome,
        time=_now(when),
        participants=(user, node),
        source=source,
        type_codes=(LOGIN if login else LOGOUT,),
        outcome_description=outcome_description,
    )


def security_alert(
    source: AuditSource,
    reporter: ActiveParticipant,
    alert_type: Code,
    *,
    performer: ActiveParticipant | None = None,
    subject: str | None = None,
    subject_type: Code = NODE_ID,
    description: str | None = None,
    outcome: int = MINOR_FAILURE,
    when: datetime | None = None,
) -> AuditMessage:
    """Security Alert (PS3.15 A.5.3.11): 110113 with a type from CID 403 (110126 Node
    Authentication for a rejected association or a failed TLS handshake, 110131
    Software Configuration for a changed user, token or setting, 110132 Use of
    Restricted Function …), action E. ``performer`` is who caused it; ``subject`` the
    node, user or resource alerted about (a security-resource participant object) with
    ``description`` saying what happened."""
    participants = [reporter] + ([performer] if performer is not None else [])
    objects: tuple[ParticipantObject, ...] = ()
    if subject is not None:
        objects = (
            ParticipantObject(
                object_id=subject,
                type_code=SYSTEM_OBJECT,
                role=ROLE_SECURITY_RESOURCE,
                id_type=subject_type,
                description=description,
            ),
        )
    return AuditMessage(
        event_id=SECURITY_ALERT,
        action="E",
        outcome=outcome,
        time=_now(when),
        participants=tuple(participants),
        source=source,
        objects=objects,
        type_codes=(alert_type,),
        outcome_description=description,
    )


# -- syslog (RFC 5424) ----------------------------------------------------------------

#: Facility 10, security/authorization messages (RFC 5424 6.2.1, "authpriv").
FACILITY_AUTHPRIV: Final = 10
APP_NAME: Final = "dicomvault"
#: MSGID of DICOM audit messages over syslog (PS3.15 A.5, IHE ITI-20).
MSG_ID: Final = "DICOM+RFC3881"
_SEVERITY: Final = {SUCCESS: 5, MINOR_FAILURE: 4, SERIOUS_FAILURE: 3, MAJOR_FAILURE: 2}


def severity(outcome: int) -> int:
    """RFC 5424 severity per outcome: notice, warning, error, critical."""
    return _SEVERITY.get(outcome, 4)


def _header_field(value: str, limit: int) -> str:
    """PRINTUSASCII without spaces, at most ``limit`` characters, ``-`` when empty
    (RFC 5424 6.2)."""
    cleaned = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return cleaned or "-"


def syslog_line(xml: str, *, outcome: int, when: datetime, hostname: str, process_id: str) -> str:
    """One RFC 5424 message: ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG``,
    facility 10, the XML as MSG after a UTF-8 BOM (RFC 5424 6.4)."""
    pri = FACILITY_AUTHPRIV * 8 + severity(outcome)
    return (
        f"<{pri}>1 {event_time(when)} {_header_field(hostname, 255)} {APP_NAME} "
        f"{_header_field(process_id, 128)} {MSG_ID} - \ufeff{xml}"
    )
