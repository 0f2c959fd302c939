"""DICOM Audit Messages (PS3.15 A.5, derived from RFC 3881): the message model, its XML
form (PS3.15 A.5.1) and one builder per message of PS3.15 A.5.3 that the archive emits.

Codes are those of PS3.16 CID 400 (Audit Event ID), CID 401 (Audit Event Type Code),
CID 402 (Audit Active Participant Role ID Code), CID 403 (Security Alert Type Code), CID
404 (Audit Participant Object ID Type Code) and CID 405 (Media Type Code), with coding
scheme "DCM"; the patient identifier type is RFC 3881's ("2", "RFC-3881", "Patient
Number"), as the tables of PS3.15 A.5.3 give it.

The XML follows the schema of PS3.15 A.5.1.1 (``tests/security/data/`` holds our RELAX
NG transcription of it, and the tests validate every message against it):
``EventIdentification``, ``ActiveParticipant``+, ``AuditSourceIdentification``,
``ParticipantObjectIdentification``*; inside a participant object
``ParticipantObjectIDTypeCode``, then ``ParticipantObjectName`` or
``ParticipantObjectQuery`` (one of them is required), ``ParticipantObjectDetail``*, and
``ParticipantObjectDescription``, which holds only the DICOM elements ``MPPS``*,
``Accession``*, ``SOPClass``* (with ``Instance``*), ``ParticipantObjectContainsStudy``,
``Encrypted``, ``Anonymized`` -- no free text (free text about an object goes in a
``ParticipantObjectDetail``, base64, or in ``EventOutcomeDescription``).

Every value is escaped by :mod:`xml.etree.ElementTree` (a ``<script>`` in a patient
name is text); control characters XML 1.0 cannot carry become U+FFFD, and the
serialised message has no raw line break, so one message is one line of a log.

Standard library and :mod:`dicomvault.model` only (DESIGN.md, security/).
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Final, Literal
from urllib.parse import urlsplit

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
ROLE_DESTINATION_MEDIA: Final = _dcm("110154", "Destination Media")
ROLE_SOURCE_MEDIA: Final = _dcm("110155", "Source Media")

# PS3.16 CID 405, Media Type Code (the MediaType of an Export's or Import's media).
MEDIA_URI: Final = _dcm("110037", "URI")
MEDIA_CD: Final = _dcm("110032", "CD")
MEDIA_DVD: Final = _dcm("110033", "DVD")
MEDIA_USB: Final = _dcm("110030", "USB Disk Emulation")

# PS3.16 CID 404, Audit Participant Object ID Type Code; RFC 3881 5.5.4.
STUDY_INSTANCE_UID: Final = _dcm("110180", "Study Instance UID")
SOP_CLASS_UID: Final = _dcm("110181", "SOP Class UID")
NODE_ID: Final = _dcm("110182", "Node ID")
PATIENT_NUMBER: Final = Code("2", "RFC-3881", "Patient Number")
USER_IDENTIFIER: Final = Code("11", "RFC-3881", "User Identifier")
URI: Final = Code("12", "RFC-3881", "URI")

#: AuditSourceTypeCode (PS3.15 A.5.1.2.1): 4, "Application server process tier in a
#: multi-tier system". One of the schema's own values, so it is sent alone: a
#: codeSystemName would say the code is from another terminology (A.5.1.1).
APPLICATION_SERVER: Final = "4"

# ParticipantObjectTypeCode (PS3.15 A.5.2) and ...TypeCodeRole (A.5.2.6).
PERSON, SYSTEM_OBJECT = "1", "2"
ROLE_PATIENT, ROLE_REPORT, ROLE_RESOURCE, ROLE_SECURITY_RESOURCE, ROLE_QUERY = (
    "1", "3", "4", "13", "24"
)  # fmt: skip
#: The ParticipantObjectDetail type of a Security Alert's subject (PS3.15 A.5.3.11).
ALERT_DESCRIPTION: Final = "Alert Description"
#: The process name of the archive's active participant (UserName, PS3.15 A.5.2.3).
PROCESS_NAME: Final = "dicomvault"


@dataclass(frozen=True, slots=True)
class ActiveParticipant:
    """One ``ActiveParticipant`` (PS3.15 A.5.1): a user, process, node or medium taking
    part."""

    user_id: str
    requestor: bool
    alternative_user_id: str | None = None
    user_name: str | None = None
    #: Host name or IP address; ``NetworkAccessPointTypeCode`` follows (1 name, 2 IP).
    network_access_point: str | None = None
    roles: tuple[Code, ...] = ()
    #: ``MediaIdentifier/MediaType`` (PS3.16 CID 405) of an Export's destination or an
    #: Import's source media (PS3.15 A.5.3.4, A.5.3.5).
    media_type: Code | None = None


@dataclass(frozen=True, slots=True)
class SOPClassCount:
    """``SOPClass UID=… NumberOfInstances=…`` of a study participant object, with the
    SOP Instance UIDs when the producer lists them (``Instance``, PS3.15 A.5.2: rarely
    needed for auditing). An empty ``uid`` leaves the (optional) UID attribute out."""

    uid: str
    instances: int
    instance_uids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ParticipantObject:
    """One ``ParticipantObjectIdentification`` (PS3.15 A.5.1, A.5.2).

    The schema requires a ``ParticipantObjectName`` or a ``ParticipantObjectQuery``: an
    object without ``query`` always gets a name element, empty when ``name`` is not
    known. ``description`` is free text about the object, sent as a
    ``ParticipantObjectDetail`` of type ``Description`` (``ParticipantObjectDescription``
    carries only the DICOM elements: accessions, MPPS, SOP classes, contained studies,
    encrypted, anonymized)."""

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
    mpps: tuple[str, ...] = ()
    encrypted: bool | None = None
    anonymized: bool | None = None
    #: ParticipantObjectDataLifeCycle, "1" to "15" (PS3.15 A.5.1.2.3).
    lifecycle: str | None = None
    sensitivity: str | None = None

    @property
    def dicom_description(self) -> bool:
        """Whether a ``ParticipantObjectDescription`` (the DICOM elements) is sent."""
        return bool(
            self.mpps or self.accessions or self.sop_classes or self.contains_studies
            or self.encrypted is not None or self.anonymized is not None
        )  # fmt: skip


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
    def actor(self) -> ActiveParticipant:
        """Who the index files the message under: the requestor, else the last
        participant (the performer of a Security Alert, who is never the requestor,
        PS3.15 A.5.3.11; the reporter when it is alone)."""
        return self.requestor or self.participants[-1]

    @property
    def user(self) -> str:
        """The UserID of :attr:`actor`."""
        return self.actor.user_id

    @property
    def peer(self) -> str:
        """The network access point of :attr:`actor`, when known."""
        return self.actor.network_access_point or ""

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


@functools.lru_cache(maxsize=1024)
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
        if participant.media_type is not None:
            media = ET.SubElement(active, "MediaIdentifier")
            _coded(media, "MediaType", participant.media_type)
    source_attrs = {}
    if message.source.enterprise_site_id:
        source_attrs["AuditEnterpriseSiteID"] = _clean(message.source.enterprise_site_id)
    source_attrs["AuditSourceID"] = _clean(message.source.source_id)
    source = ET.SubElement(root, "AuditSourceIdentification", source_attrs)
    ET.SubElement(source, "AuditSourceTypeCode", {"csd-code": APPLICATION_SERVER})
    for obj in message.objects:
        _participant_object(root, obj)
    return root


def _participant_object(root: ET.Element, obj: ParticipantObject) -> None:
    """One ``ParticipantObjectIdentification`` in the order of PS3.15 A.5.1.1."""
    attrs = {
        "ParticipantObjectID": _clean(obj.object_id),
        "ParticipantObjectTypeCode": obj.type_code,
        "ParticipantObjectTypeCodeRole": obj.role,
    }
    if obj.lifecycle:
        attrs["ParticipantObjectDataLifeCycle"] = obj.lifecycle
    if obj.sensitivity:
        attrs["ParticipantObjectSensitivity"] = _clean(obj.sensitivity)
    element = ET.SubElement(root, "ParticipantObjectIdentification", attrs)
    _coded(element, "ParticipantObjectIDTypeCode", obj.id_type)
    if obj.query is not None and obj.name is None:
        _text(element, "ParticipantObjectQuery", base64.b64encode(obj.query).decode())
    else:
        # A name or a query is required (A.5.1.1); an empty name says "not known".
        _text(element, "ParticipantObjectName", obj.name or "")
    details = [*obj.details]
    if obj.description:
        details.append(("Description", obj.description.encode("utf-8")))
    for kind, value in details:
        ET.SubElement(
            element,
            "ParticipantObjectDetail",
            {"type": _clean(kind), "value": base64.b64encode(value).decode()},
        )
    if not obj.dicom_description:
        return
    dicom = ET.SubElement(element, "ParticipantObjectDescription")
    for uid in obj.mpps:
        ET.SubElement(dicom, "MPPS", {"UID": _clean(uid)})
    for number in obj.accessions:
        ET.SubElement(dicom, "Accession", {"Number": _clean(number)})
    for sop in obj.sop_classes:
        sop_attrs = {"UID": _clean(sop.uid)} if sop.uid else {}
        sop_attrs["NumberOfInstances"] = str(sop.instances)
        sop_class = ET.SubElement(dicom, "SOPClass", sop_attrs)
        for uid in sop.instance_uids:
            ET.SubElement(sop_class, "Instance", {"UID": _clean(uid)})
    if obj.contains_studies:
        contains = ET.SubElement(dicom, "ParticipantObjectContainsStudy")
        for uid in obj.contains_studies:
            ET.SubElement(contains, "StudyIDs", {"UID": _clean(uid)})
    if obj.encrypted is not None:
        _text(dicom, "Encrypted", "true" if obj.encrypted else "false")
    if obj.anonymized is not None:
        _text(dicom, "Anonymized", "true" if obj.anonymized else "false")


def to_xml(message: AuditMessage) -> str:
    """The message as XML text on one line: line breaks inside text become ``&#10;``."""
    out: list[str] = []
    _serialize(to_element(message), out)
    return "".join(out).replace("\r", "&#13;").replace("\n", "&#10;")


def _serialize(element: ET.Element, out: list[str]) -> None:
    """What ``ET.tostring(element, encoding="unicode")`` writes, for the trees built
    here (no namespaces, comments or processing instructions), at a fifth of the cost:
    ElementTree's generic writer (its namespace pass, per-node dispatch) was three
    quarters of an audit message's CPU, and a busy archive writes one per query."""
    out.append("<" + element.tag)
    for key, value in element.attrib.items():
        out.append(f' {key}="{_escape_attribute(value)}"')
    if element.text or len(element):
        out.append(">")
        if element.text:
            out.append(_escape_text(element.text))
        for child in element:
            _serialize(child, out)
        out.append(f"</{element.tag}>")
    else:
        out.append(" />")
    if element.tail:
        out.append(_escape_text(element.tail))


def _escape_text(text: str) -> str:
    if "&" in text or "<" in text or ">" in text:
        text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text


def _escape_attribute(value: str) -> str:
    """As ElementTree escapes attribute values (Python 3.11)."""
    value = _escape_text(value)
    if '"' in value or "\r" in value or "\n" in value or "\t" in value:
        value = value.replace('"', "&quot;").replace("\r", "&#13;")
        value = value.replace("\n", "&#10;").replace("\t", "&#09;")
    return value


# -- participants and objects ---------------------------------------------------------


def ae_titles(*titles: str) -> str:
    """AlternativeUserID of a DICOM application: ``AETITLES=t1;t2`` (PS3.15 A.5.2.2)."""
    return "AETITLES=" + ";".join(t.strip() for t in titles if t.strip())


def archive_participant(
    ae_title: str,
    host: str,
    *,
    requestor: bool = False,
    roles: Sequence[Code] = (),
    process_id: str | None = None,
) -> ActiveParticipant:
    """The archive itself as an active participant: UserID our AE title (the name our
    logs give it), AlternativeUserID ``AETITLES=<AE title>`` as A.5.2.2 asks of a DICOM
    application, UserName the process name with its process ID (A.5.2.3; the ID, as in
    syslog's ``APP-NAME[PROCID]``, matches the message to the system logs, A.5.2.1)."""
    return ActiveParticipant(
        user_id=ae_title,
        requestor=requestor,
        alternative_user_id=ae_titles(ae_title) if ae_title.strip() else None,
        user_name=f"{PROCESS_NAME}[{process_id}]" if process_id else PROCESS_NAME,
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
    ae: bool = False,
) -> ActiveParticipant:
    """A remote node or user: its AE title (DIMSE) or user name (HTTP) as UserID. An AE
    (``ae``) also gets ``AETITLES=<AE title>`` as AlternativeUserID (PS3.15 A.5.2.2)."""
    return ActiveParticipant(
        user_id=user_id or "-",
        requestor=requestor,
        alternative_user_id=ae_titles(user_id) if ae and user_id.strip() else None,
        user_name=user_name,
        network_access_point=host or None,
        roles=tuple(roles),
    )


def media_participant(
    media: str,
    *,
    destination: bool,
    media_type: Code = MEDIA_URI,
    label: str | None = None,
) -> ActiveParticipant:
    """The media of an Export (``destination``: role 110154 Destination Media, PS3.15
    A.5.3.4) or an Import (role 110155 Source Media, A.5.3.5): never the requestor,
    ``media`` (a URI or a path, A.5.2.1) as UserID, a volume label or DICOMDIR UID as
    AlternativeUserID (A.5.2.2), its ``MediaType`` (PS3.16 CID 405). A URI naming a
    host (``dicom://AE@host:port``) is a network destination: its host is the network
    access point, which A.5.3.4 requires for export "to other than physical media"."""
    try:
        host = urlsplit(media).hostname if "://" in media else None
    except ValueError:  # not a URI after all (e.g. an unbalanced "[")
        host = None
    return ActiveParticipant(
        user_id=media or "-",
        requestor=False,
        alternative_user_id=label or None,
        network_access_point=host or None,
        roles=(ROLE_DESTINATION_MEDIA if destination else ROLE_SOURCE_MEDIA,),
        media_type=media_type,
    )


def patient_object(patient_id: str, name: str | None = None) -> ParticipantObject:
    """The patient (PS3.15 A.5.3: type 1 person, role 1 patient, RFC 3881 ID type 2),
    ``name`` the patient's name."""
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
    name: str | None = None,
    anonymized: bool | None = None,
    mpps: Iterable[str] = (),
) -> ParticipantObject:
    """A study (type 2 system object, role 3 report, ID type 110180 Study Instance UID)
    with its SOP classes and how many instances of each took part.

    A.5.2 makes ``SOPClass`` required when Accession, MPPS, NumberOfInstances, Instance,
    Encrypted or Anonymized is present: a study named with an accession number, an
    MPPS (or the anonymized flag) but no SOP class known -- a scheduled procedure --
    gets one ``SOPClass`` without UID (the schema makes it optional) and 0 instances."""
    counts = tuple(SOPClassCount(uid, n) for uid, n in sorted((sop_classes or {}).items()))
    numbers = tuple(a for a in accessions if a)
    steps = tuple(u for u in mpps if u)
    if not counts and (numbers or steps or anonymized is not None):
        counts = (SOPClassCount("", 0),)
    return ParticipantObject(
        object_id=study_uid,
        type_code=SYSTEM_OBJECT,
        role=ROLE_REPORT,
        id_type=STUDY_INSTANCE_UID,
        name=name,
        accessions=numbers,
        sop_classes=counts,
        anonymized=anonymized,
        mpps=steps,
    )


def query_object(
    queried: str, query: bytes, *, transfer_syntax: str | None = None
) -> ParticipantObject:
    """The query (PS3.15 A.5.3.10, "SOP Queried and the Query"): type 2, role 3
    (Report, as the table says for every query), the query base64 in
    ``ParticipantObjectQuery``.

    A DICOM query (``transfer_syntax`` given): ID type 110181 SOP Class UID,
    ``queried`` the SOP class, the query the Identifier as received and the
    ``TransferSyntax`` detail the table requires with that ID type. A non-DICOM query
    (QIDO-RS, the worklist API: no transfer syntax): ID type 12 URI, ``queried`` the
    path queried, the query "in the format of the protocol used" (A.5.3.10) -- the path
    and query string -- with a ``QueryEncoding`` detail of UTF-8. (An Identifier type
    with a URL in place of a DICOM data set would contradict the table.)"""
    if transfer_syntax is not None:
        id_type, details = SOP_CLASS_UID, (("TransferSyntax", transfer_syntax.encode()),)
    else:
        id_type, details = URI, (("QueryEncoding", b"UTF-8"),)
    return ParticipantObject(
        object_id=queried,
        type_code=SYSTEM_OBJECT,
        role=ROLE_REPORT,
        id_type=id_type,
        query=query,
        details=details,
    )


def _studies(
    studies: Mapping[str, Mapping[str, int]],
    patients: Mapping[str, str],
    accessions: Mapping[str, Iterable[str]] | None = None,
    *,
    anonymized: bool | None = None,
) -> tuple[ParticipantObject, ...]:
    """Study objects, then one patient object per distinct patient of those studies."""
    objects = [
        study_object(uid, counts, accessions=(accessions or {}).get(uid, ()), anonymized=anonymized)
        for uid, counts in studies.items()
    ]
    seen: dict[str, None] = {}
    for uid in studies:
        seen.setdefault(patients.get(uid, ""), None)
    objects += [patient_object(pid) for pid in seen]
    return tuple(objects)


def by_patient(
    studies: Mapping[str, Mapping[str, int]], patients: Mapping[str, str]
) -> list[dict[str, Mapping[str, int]]]:
    """``studies`` split per patient (``patients``: study → patient ID; unknown ones
    together), for the messages that "may only include information about a single
    patient" (PS3.15 A.5.3.3, A.5.3.6, A.5.3.7, A.5.3.8)."""
    groups: dict[str, dict[str, Mapping[str, int]]] = {}
    for uid, counts in studies.items():
        groups.setdefault(patients.get(uid, ""), {})[uid] = counts
    return list(groups.values())


def with_names(
    message: AuditMessage, patient_names: Mapping[str, str], study_names: Mapping[str, str]
) -> AuditMessage:
    """``message`` with the ParticipantObjectName of its patient objects (the patient's
    name, A.5.3 "The patient name") and study objects (the study description) filled
    in where the producer left them empty and the index knows them."""
    changed = False
    objects: list[ParticipantObject] = []
    for obj in message.objects:
        name = None
        if not obj.name:
            if obj.id_type == PATIENT_NUMBER:
                name = patient_names.get(obj.object_id)
            elif obj.id_type == STUDY_INSTANCE_UID:
                name = study_names.get(obj.object_id)
        if name:
            obj = replace(obj, name=name)
            changed = True
        objects.append(obj)
    return replace(message, objects=tuple(objects)) if changed else message


def _now(when: datetime | None) -> datetime:
    return when if when is not None else datetime.now(UTC)


def _with_role(participant: ActiveParticipant, role: Code) -> ActiveParticipant:
    """``participant`` with ``role`` among its RoleIDCodes (a table's required role)."""
    if role in participant.roles:
        return participant
    return replace(participant, roles=(*participant.roles, role))


# -- the messages of PS3.15 A.5.3 (section numbers of the 2025e edition) --------------


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
    Start or 110121 Application Stop; the application has role 110150 (and, being a
    DICOM application, its AE titles as AlternativeUserID: :func:`archive_participant`)
    and, when known, the user who started or stopped it role 110151 (Application
    Launcher). No participant object."""
    participants = [_with_role(application, ROLE_APPLICATION)]
    if launcher is not None:
        participants.append(_with_role(launcher, ROLE_APPLICATION_LAUNCHER))
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
    others: Sequence[ActiveParticipant] = (),
    when: datetime | None = None,
    anonymized: bool | None = None,
) -> AuditMessage:
    """Begin Transferring DICOM Instances (PS3.15 A.5.3.3): 110102, action E; the
    sender has role 110153 Source, the receiver 110152 Destination, ``others`` (e.g.
    the C-MOVE requestor) follow; one study object per study with its SOP classes, the
    patient object. One patient per message (split with :func:`by_patient`).
    ``anonymized``: the study objects say whether de-identified copies were sent."""
    return AuditMessage(
        event_id=BEGIN_TRANSFERRING,
        action="E",
        outcome=SUCCESS,
        time=_now(when),
        participants=(
            _with_role(sender, ROLE_SOURCE),
            _with_role(receiver, ROLE_DESTINATION),
            *others,
        ),
        source=source,
        objects=_studies(studies, patients, anonymized=anonymized),
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
    others: Sequence[ActiveParticipant] = (),
    when: datetime | None = None,
    anonymized: bool | None = None,
) -> AuditMessage:
    """DICOM Instances Transferred (PS3.15 A.5.3.7): 110104; action C (Create) when we
    received and stored them (C-STORE, STOW-RS), U when an existing instance was
    replaced, R (Read) when we sent them (C-MOVE, C-GET, WADO-RS: the table's R for an
    audit source that is not the receiver). The sender has role 110153, the receiver
    110152, ``others`` (a C-MOVE requestor) follow. One patient per message."""
    return AuditMessage(
        event_id=INSTANCES_TRANSFERRED,
        action=action,
        outcome=outcome,
        time=_now(when),
        participants=(
            _with_role(sender, ROLE_SOURCE),
            _with_role(receiver, ROLE_DESTINATION),
            *others,
        ),
        source=source,
        objects=_studies(studies, patients, anonymized=anonymized),
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
    outcome_description: str | None = None,
    when: datetime | None = None,
) -> AuditMessage:
    """DICOM Instances Accessed (PS3.15 A.5.3.6): 110103; instances read without being
    transferred as DICOM objects (WADO-RS metadata, action R) or some of a study's
    instances deleted (action D: A.5.3.6 keeps Study Deleted for a whole study). One
    patient per message."""
    return AuditMessage(
        event_id=INSTANCES_ACCESSED,
        action=action,
        outcome=outcome,
        time=_now(when),
        participants=(accessor,),
        source=source,
        objects=_studies(studies, patients),
        outcome_description=outcome_description,
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
    """DICOM Study Deleted (PS3.15 A.5.3.8): 110105, action D; the studies deleted
    whole, and their patient (one patient per message)."""
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
    outcome_description: str | None = None,
    remote: Sequence[ActiveParticipant] = (),
    anonymized: bool | None = None,
    when: datetime | None = None,
) -> AuditMessage:
    """Data Export (PS3.15 A.5.3.4): 110106, action R. ``exporter``, the local user or
    process (role 110153 Source; the one requestor, A.5.3.4.1), ``media`` where the
    data went (role 110154 Destination Media, never the requestor, with a MediaType:
    build it with :func:`media_participant`), ``remote`` users or processes receiving
    it (role 110152 Destination). Studies (with ``Anonymized`` when the producer says
    whether identifying information was removed) and patients; several patients may
    be named."""
    media = replace(
        _with_role(media, ROLE_DESTINATION_MEDIA),
        requestor=False,
        media_type=media.media_type or MEDIA_URI,
    )
    return AuditMessage(
        event_id=EXPORT,
        action="R",
        outcome=outcome,
        time=_now(when),
        participants=(
            _with_role(exporter, ROLE_SOURCE),
            media,
            *(_with_role(r, ROLE_DESTINATION) for r in remote),
        ),
        source=source,
        objects=_studies(studies, patients, anonymized=anonymized),
        outcome_description=outcome_description,
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
    """Data Import (PS3.15 A.5.3.5, "Import" 110107), action C: ``importer`` is who
    imported (role 110152 Destination; the requestor), ``media`` where the data came
    from (role 110155 Source Media, never the requestor, with its MediaType:
    :func:`media_participant`: a folder, a DICOMDIR's media)."""
    media = replace(
        _with_role(media, ROLE_SOURCE_MEDIA),
        requestor=False,
        media_type=media.media_type or MEDIA_URI,
    )
    return AuditMessage(
        event_id=DATA_IMPORT,
        action="C",
        outcome=outcome,
        time=_now(when),
        participants=(_with_role(importer, ROLE_DESTINATION), media),
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
    patient_name: str | None = None,
    mpps_uid: str | None = None,
    outcome: int = SUCCESS,
    outcome_description: str | None = None,
    when: datetime | None = None,
) -> AuditMessage:
    """Procedure Record (PS3.15 A.5.3.15): 110111, a worklist item or a performed
    procedure step created (C), updated (U), read (R) or deleted (D). One or two
    participants (the person and / or the process); the study (ID type 110180, with
    its Accession Number and the MPPS, so with the SOPClass A.5.2 then requires) when
    known;
    exactly ONE patient, as the standard asks ("only information about a single
    patient")."""
    objects: list[ParticipantObject] = []
    if study_uid:
        objects.append(
            study_object(
                study_uid,
                accessions=(accession,) if accession else (),
                mpps=(mpps_uid,) if mpps_uid else (),
            )
        )
    objects.append(patient_object(patient_id or "-", patient_name))
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
    queried: str,
    query_bytes: bytes,
    *,
    transfer_syntax: str | None = None,
    outcome: int = SUCCESS,
    outcome_description: str | None = None,
    when: datetime | None = None,
) -> AuditMessage:
    """Query (PS3.15 A.5.3.10): 110112, action E; the querying node (role 110153
    Source) and the archive (110152 Destination); the query object
    (:func:`query_object`): ``queried`` is the SOP Class UID of a DICOM query (with its
    ``transfer_syntax``) or the path of an HTTP one."""
    return AuditMessage(
        event_id=QUERY,
        action="E",
        outcome=outcome,
        time=_now(when),
        participants=(_with_role(requestor, ROLE_SOURCE), _with_role(responder, ROLE_DESTINATION)),
        source=source,
        objects=(query_object(queried, query_bytes, transfer_syntax=transfer_syntax),),
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
    Logout, action E; ``user`` the person authenticated or claimed (the table requires
    its network access point), ``node`` the system authenticating; a refused login is
    outcome 4 (minor failure) with the reason. No participant object."""
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
    subject_name: str | None = None,
    description: str | None = None,
    outcome: int = MINOR_FAILURE,
    when: datetime | None = None,
) -> AuditMessage:
    """Security Alert (PS3.15 A.5.3.11): 110113 with a type from CID 403 (110126 Node
    Authentication for a rejected association or a failed TLS handshake, 110131
    Software Configuration for a changed user, token or setting, 110132 Use of
    Restricted Function …), action E.

    ``reporter`` is the reporting process, ``performer`` who caused it (UserIsRequestor
    "Shall be FALSE" in the table, whatever the caller built); ``subject`` the node,
    user or resource alerted about (a Security Resource participant object of
    ``subject_type``: 110182 Node ID, 12 URI, …) with the table's required
    ``ParticipantObjectDetail`` "Alert Description" holding ``description``, which is
    also the EventOutcomeDescription."""
    participants = [reporter]
    if performer is not None:
        participants.append(replace(performer, requestor=False))
    objects: tuple[ParticipantObject, ...] = ()
    if subject is not None:
        objects = (
            ParticipantObject(
                object_id=subject,
                type_code=SYSTEM_OBJECT,
                role=ROLE_SECURITY_RESOURCE,
                id_type=subject_type,
                name=subject_name,
                details=((ALERT_DESCRIPTION, (description or alert_type.text).encode("utf-8")),),
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
