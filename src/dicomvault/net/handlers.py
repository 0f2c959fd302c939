"""Service interfaces: what an application plugs into the engine (PS3.4, PS3.7 9.1).

A C-STORE handler is *streaming*: :meth:`StoreHandler.begin_store` is called when the
command arrives, the returned :class:`DataSink` receives the data set's PDV fragments as
they arrive (never reassembled in memory), and :meth:`DataSink.finish` decides the
status once the last fragment is in (PS3.4 B.2.3).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from dicomvault.net.items import UserIdentity
from dicomvault.net.uids import STORAGE_SOP_CLASSES, VERIFICATION


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
    user_identity: UserIdentity | None = None
    #: SOP Class Extended Negotiation proposed by the requestor (PS3.7 D.3.3.5).
    extended_negotiation: dict[str, bytes] = field(default_factory=dict)


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


#: Decides on a user identity (PS3.7 D.3.3.7): ``False`` rejects the association,
#: ``True``/``None`` accept, ``bytes`` accept and are the server response when one is
#: asked for a Kerberos ticket, SAML assertion or JWT (username types get an empty one).
UserIdentityPolicy = Callable[[UserIdentity, AssociationInfo], bool | bytes | None]


class ServiceRegistry:
    """Maps SOP classes to handlers; the acceptor accepts exactly these abstract syntaxes."""

    def __init__(self) -> None:
        self._store: dict[str, StoreHandler] = {}
        self.verification = False

    def add_verification(self) -> None:
        """Answer C-ECHO on the Verification SOP Class (PS3.4 A)."""
        self.verification = True

    def add_store(
        self, handler: StoreHandler, sop_classes: tuple[str, ...] | list[str] = STORAGE_SOP_CLASSES
    ) -> None:
        """Route C-STORE of ``sop_classes`` (default: every storage class) to ``handler``."""
        for uid in sop_classes:
            self._store[uid] = handler

    def store_handler(self, sop_class_uid: str) -> StoreHandler | None:
        """The handler registered for ``sop_class_uid``, if any."""
        return self._store.get(sop_class_uid)

    def supports(self, sop_class_uid: str) -> bool:
        """Whether an abstract syntax is accepted."""
        return sop_class_uid in self._store or (self.verification and sop_class_uid == VERIFICATION)
