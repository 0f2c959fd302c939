"""Service interfaces: what an application plugs into the engine (PS3.4, PS3.7 9.1).

A C-STORE handler is *streaming*: :meth:`StoreHandler.begin_store` is called when the
command arrives, the returned :class:`DataSink` receives the data set's PDV fragments as
they arrive (never reassembled in memory), and :meth:`DataSink.finish` decides the
status once the last fragment is in (PS3.4 B.2.3).

Query/Retrieve handlers (PS3.4 C.4.1-C.4.3) are *async iterators of responses*: a
:class:`QueryHandler` gets a :class:`QueryRequest` once the Identifier is in and yields
:class:`Response` values, pending ones (0xFF00/0xFF01) first and one final response
last; the engine sends each as it comes, so results stream. A C-CANCEL-RQ sets
:attr:`QueryRequest.cancelled`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, Protocol

from dicomvault.net.items import UserIdentity
from dicomvault.net.uids import STORAGE_SOP_CLASSES, VERIFICATION

if TYPE_CHECKING:
    from dicomvault.net.association import Association


class DimseStatus(NamedTuple):
    """A DIMSE status (PS3.7 C) with its optional Error Comment (0000,0902, max 64 chars)."""

    status: int
    error_comment: str | None = None

    @property
    def category(self) -> str:
        """ "success", "warning", "cancel", "pending" or "failure" (PS3.7 C.1)."""
        code = self.status
        if code == 0x0000:
            return "success"
        if code == 0x0001 or code & 0xF000 == 0xB000 or code == 0x0107 or code == 0x0116:
            return "warning"
        if code == 0xFE00:
            return "cancel"
        if code in (0xFF00, 0xFF01):
            return "pending"
        return "failure"


SUCCESS = DimseStatus(0x0000)


#: Decides whether the peer may use a SOP class (abstract syntax): called with the UID and
#: ``as_scp``, whether the peer would act as its SCP (the SCP/SCU Role Selection of
#: PS3.7 D.3.3.4, e.g. receiving the C-STORE sub-operations of a C-GET), else as its SCU.
ContextFilter = Callable[[str, bool], bool]


@dataclass(slots=True)
class AcceptedContext:
    """A presentation context the association accepted (PS3.8 7.1.1.13)."""

    id: int
    abstract_syntax: str
    transfer_syntax: str
    #: Roles from SCP/SCU Role Selection (PS3.7 D.3.3.4): may the requestor be SCU / SCP.
    scu_role: bool = True
    scp_role: bool = False


@dataclass(slots=True)
class AssociationInfo:
    """What is known of an association once it is negotiated."""

    id: str
    peer_host: str
    peer_port: int
    calling_ae_title: str
    called_ae_title: str
    contexts: dict[int, AcceptedContext] = field(default_factory=dict)
    peer_max_pdu: int = 0
    peer_implementation_class_uid: str = ""
    peer_implementation_version_name: str | None = None
    #: The User Identity Negotiation sub-item the requestor sent (PS3.7 D.3.3.7.1); set
    #: before :attr:`AcceptorPolicy.access <dicomvault.net.negotiation.AcceptorPolicy.access>`
    #: is consulted.
    user_identity: UserIdentity | None = None
    #: Set by the access hook when it accepted :attr:`user_identity`: the server response
    #: sent in the A-ASSOCIATE-AC when the requestor asked for one (PS3.7 D.3.3.7.2; empty
    #: for username and passcode). ``None``: no response is sent.
    user_identity_response: bytes | None = None
    #: SOP Class Extended Negotiation proposed by the requestor (PS3.7 D.3.3.5).
    extended_negotiation: dict[str, bytes] = field(default_factory=dict)
    #: What the peer may use, from :attr:`AcceptorPolicy.access
    #: <dicomvault.net.negotiation.AcceptorPolicy.access>`; ``None`` means everything.
    #: Requests on a context it refuses are answered 0x0124 (PS3.7 C.5, Refused: Not Authorized).
    access: ContextFilter | None = None


@dataclass(slots=True)
class StoreRequest:
    """A C-STORE request (PS3.7 9.1.1.1) as handed to a :class:`StoreHandler`."""

    association: AssociationInfo
    context_id: int
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    priority: int = 0
    move_originator_ae_title: str | None = None
    move_originator_message_id: int | None = None


class DataSink(Protocol):
    """Receives one data set as it streams in."""

    def write(self, chunk: memoryview) -> None:
        """Take the next fragment. Runs on the event loop: do not block for long.

        ``chunk`` is valid only during the call: copy what you keep.
        """

    def finish(self) -> DimseStatus | Awaitable[DimseStatus]:
        """The last fragment arrived: store, and return the status (may be a coroutine)."""

    def abort(self) -> None:
        """The association ended before the data set was complete: discard it."""


class StoreHandler(Protocol):
    """Storage Service Class SCP behaviour (PS3.4 B.2.2)."""

    def begin_store(self, request: StoreRequest) -> DataSink:
        """Return the sink for this request's data set; raise to refuse (status 0xC211)."""


@dataclass(slots=True)
class Response:
    """One C-FIND/C-MOVE/C-GET response (PS3.7 9.1.2.1, 9.1.3.1, 9.1.4.1).

    Attributes
    ----------
    status
        The status; pending (0xFF00, 0xFF01) responses are followed by more.
    identifier
        The encoded Identifier data set, in the context's transfer syntax: a C-FIND
        match, or the Failed SOP Instance UID List (0008,0058) of a C-MOVE/C-GET.
    remaining, completed, failed, warning
        Number of Remaining/Completed/Failed/Warning Sub-operations (0000,1020-1023),
        C-MOVE and C-GET only (PS3.7 Table 9.3-6, 9.3-8).
    """

    status: DimseStatus
    identifier: bytes | None = None
    remaining: int | None = None
    completed: int | None = None
    failed: int | None = None
    warning: int | None = None

    @property
    def pending(self) -> bool:
        """Whether more responses follow (PS3.7 C.1.1)."""
        return self.status.status in (0xFF00, 0xFF01)


@dataclass(frozen=True, slots=True)
class Matches:
    """Several pending C-FIND responses at once, one per encoded Identifier (PS3.4
    C.4.1.3.1), for a handler that has a batch of matches ready: the engine sends them
    back to back, with one command set encoded for all, instead of one :class:`Response`
    each through the handler's iterator (~20 µs per match)."""

    identifiers: Sequence[bytes]
    status: DimseStatus = field(default_factory=lambda: DimseStatus(0xFF00))


@dataclass(slots=True)
class QueryRequest:
    """A C-FIND, C-MOVE or C-GET request (PS3.7 9.1.2.1, 9.1.4.1, 9.1.3.1).

    ``command_field`` is 0x0020 (C-FIND), 0x0021 (C-MOVE) or 0x0010 (C-GET);
    ``identifier`` the Identifier exactly as received, in ``transfer_syntax_uid``.
    """

    association: AssociationInfo
    context_id: int
    message_id: int
    command_field: int
    sop_class_uid: str
    transfer_syntax_uid: str
    identifier: bytes
    priority: int = 0
    #: Move Destination (0000,0600), C-MOVE only.
    move_destination: str | None = None
    #: Set when a C-CANCEL-RQ for this message arrives (PS3.7 9.3.2.3).
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    #: The association itself: a C-GET SCP sends its C-STORE sub-operations on it
    #: (:meth:`~dicomvault.net.association.Association.store_stream`).
    channel: Association | None = None

    @property
    def relational(self) -> bool:
        """Whether relational queries/retrieval were negotiated for the SOP class
        (SOP Class Extended Negotiation byte 0 = 1, PS3.4 C.5.1.1.1, C.5.2.1.1)."""
        info = self.association.extended_negotiation.get(self.sop_class_uid, b"")
        return info[:1] == b"\x01"


class QueryHandler(Protocol):
    """A Query/Retrieve SCP behaviour (PS3.4 C.4.1.2, C.4.2.2, C.4.3.2).

    ``handle`` returns an async iterator of :class:`Response` (an ``async def`` with
    ``yield``): pending responses, then the final one; a C-FIND handler may yield its
    pending responses in batches, as :class:`Matches`. Ending without a final response
    answers Success; raising answers 0xC311 (C-FIND), 0xC511 (C-MOVE), 0xC411 (C-GET)
    with the message as Error Comment.
    """

    def handle(self, request: QueryRequest) -> AsyncIterator[Response | Matches]:
        """Answer ``request``."""


@dataclass(slots=True)
class NRequest:
    """A DIMSE-N request (PS3.7 10.1): N-EVENT-REPORT, N-GET, N-SET, N-ACTION, N-CREATE
    or N-DELETE, as handed to a :class:`NormalizedHandler`.

    ``sop_class_uid``/``sop_instance_uid`` are the Affected (N-EVENT-REPORT, N-CREATE) or
    Requested (N-GET, N-SET, N-ACTION, N-DELETE) SOP Class/Instance UID of the command;
    ``sop_instance_uid`` is empty when an N-CREATE leaves it to the SCP (PS3.7 10.1.5.1.3).
    ``type_id`` is the Event Type ID (N-EVENT-REPORT) or Action Type ID (N-ACTION);
    ``data_set`` the Event/Action Information, Attribute List or Modification List, in
    ``transfer_syntax_uid``, ``None`` when the request has none.
    """

    association: AssociationInfo
    context_id: int
    message_id: int
    command_field: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    data_set: bytes | None = None
    type_id: int | None = None
    #: Attribute Identifier List (0000,1005) of an N-GET, as received (AT values).
    attribute_identifiers: bytes | None = None
    #: The association itself, e.g. to send an N-EVENT-REPORT on it later
    #: (:meth:`~dicomvault.net.service_user.ServiceUser.n_event_report`).
    channel: Association | None = None


@dataclass(slots=True)
class NResponse:
    """The response to a DIMSE-N request (PS3.7 10.1.x.1).

    ``sop_instance_uid`` goes in Affected SOP Instance UID (0000,1000); ``None`` echoes the
    request's (an N-CREATE SCP that chose the UID must give it). ``error_id`` is Error ID
    (0000,0903) where the service defines one (e.g. MPPS 0xA710, PS3.4 F.7.2.2.2).
    """

    status: DimseStatus
    data_set: bytes | None = None
    sop_instance_uid: str | None = None
    error_id: int | None = None


class NormalizedHandler(Protocol):
    """A DIMSE-N SCP behaviour (PS3.7 10): answer one request. Raising answers 0x0110
    (Processing failure) with the message as Error Comment."""

    def handle(self, request: NRequest) -> Awaitable[NResponse]:
        """Answer ``request``."""


#: Decides on a user identity (PS3.7 D.3.3.7): ``False`` rejects the association,
#: ``True``/``None`` accept, ``bytes`` accept and are the server response when one is
#: asked for a Kerberos ticket, SAML assertion or JWT (username types get an empty one).
UserIdentityPolicy = Callable[[UserIdentity, AssociationInfo], bool | bytes | None]


class RejectAssociation(Exception):
    """Raised by an :data:`AccessPolicy` to reject the association with these
    A-ASSOCIATE-RJ values (PS3.8 Table 9-21) instead of 1/1/3; ``why`` goes to the log."""

    def __init__(self, result: int, source: int, reason: int, why: str = "") -> None:
        super().__init__(why or f"rejected {result}/{source}/{reason}")
        self.result = result
        self.source = source
        self.reason = reason
        self.why = why


#: Access control (PS3.8 7.1.1.3-7.1.1.4, PS3.7 D.3.3): given the association as requested
#: (AE titles, ``peer_host``/``peer_port``), ``None`` rejects it with A-ASSOCIATE-RJ 1/1/3
#: (calling AE title not recognized), a :data:`ContextFilter` accepts it and says which
#: presentation contexts may be accepted. May return an awaitable (e.g. to resolve host
#: names off the event loop); it is then bounded by the ARTIM timeout. It may raise
#: :class:`RejectAssociation` to reject with other A-ASSOCIATE-RJ values.
AccessPolicy = Callable[[AssociationInfo], ContextFilter | Awaitable[ContextFilter | None] | None]


class ServiceRegistry:
    """Maps SOP classes to handlers; the acceptor accepts exactly these abstract syntaxes."""

    def __init__(self) -> None:
        self._store: dict[str, StoreHandler] = {}
        self._query: dict[tuple[int, str], QueryHandler] = {}
        self._query_classes: set[str] = set()
        self._normalized: dict[tuple[int, str], NormalizedHandler] = {}
        #: SOP classes for which the requestor may take the SCP role because we use the
        #: service as its SCU (PS3.7 D.3.3.4), e.g. a Storage Commitment SCU receiving
        #: the N-EVENT-REPORT on an association the SCP opened (PS3.4 J.3.3).
        self.scu_of: set[str] = set()
        self.verification = False
        #: Whether a C-GET handler is registered: storage SOP classes proposed with the
        #: SCP role for the requestor are then accepted (PS3.4 C.4.3.1, PS3.7 D.3.3.4).
        self.get_role = False

    def add_verification(self) -> None:
        """Answer C-ECHO on the Verification SOP Class (PS3.4 A)."""
        self.verification = True

    def add_store(
        self, handler: StoreHandler, sop_classes: tuple[str, ...] | list[str] = STORAGE_SOP_CLASSES
    ) -> None:
        """Route C-STORE of ``sop_classes`` (default: every storage class) to ``handler``."""
        for uid in sop_classes:
            self._store[uid] = handler

    def add_query(self, command_field: int, handler: QueryHandler, sop_classes: list[str]) -> None:
        """Route C-FIND (0x0020), C-MOVE (0x0021) or C-GET (0x0010) requests of
        ``sop_classes`` to ``handler`` (PS3.4 C.4)."""
        for uid in sop_classes:
            self._query[(command_field, uid)] = handler
            self._query_classes.add(uid)
        if command_field == 0x0010:
            self.get_role = True

    def add_normalized(
        self, command_field: int, handler: NormalizedHandler, sop_classes: list[str]
    ) -> None:
        """Route DIMSE-N requests (``command_field`` 0x0100 N-EVENT-REPORT … 0x0150
        N-DELETE, PS3.7 E.1) of ``sop_classes`` to ``handler``."""
        for uid in sop_classes:
            self._normalized[(command_field, uid)] = handler

    def normalized_handler(
        self, command_field: int, sop_class_uid: str
    ) -> NormalizedHandler | None:
        """The handler for a DIMSE-N request of ``sop_class_uid``, if any."""
        return self._normalized.get((command_field, sop_class_uid))

    def query_handler(self, command_field: int, sop_class_uid: str) -> QueryHandler | None:
        """The handler for a C-FIND/C-MOVE/C-GET of ``sop_class_uid``, if any."""
        return self._query.get((command_field, sop_class_uid))

    def store_handler(self, sop_class_uid: str) -> StoreHandler | None:
        """The handler registered for ``sop_class_uid``, if any."""
        return self._store.get(sop_class_uid)

    def supports(self, sop_class_uid: str) -> bool:
        """Whether an abstract syntax is accepted."""
        return (
            sop_class_uid in self._store
            or (self.verification and sop_class_uid == VERIFICATION)
            or sop_class_uid in self._query_classes
            or any(uid == sop_class_uid for _, uid in self._normalized)
        )
