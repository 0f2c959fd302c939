"""``serve_dicom``: the archive's DIMSE listener (Verification, Storage, Query/Retrieve SCP)."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl as _ssl
from collections.abc import Callable, Mapping

from dicomvault.archive import Archive, audit
from dicomvault.archive.remotes import effective_remotes
from dicomvault.archive.users import verify_password
from dicomvault.config import RemoteAE, Settings
from dicomvault.dimse.access import AccessControl, UserCheck
from dicomvault.dimse.commitment import CommitmentHandler, CommitmentReporter
from dicomvault.dimse.find import FIND_SOP_CLASSES, ArchiveFindHandler, relational_reply
from dicomvault.dimse.get import GET_SOP_CLASSES, ArchiveGetHandler
from dicomvault.dimse.move import MOVE_SOP_CLASSES, ArchiveMoveHandler
from dicomvault.dimse.mpps import MppsHandler
from dicomvault.dimse.store import ArchiveStoreHandler
from dicomvault.dimse.worklist import WORKLIST_SOP_CLASSES, ArchiveWorklistHandler
from dicomvault.net.acceptor import serve
from dicomvault.net.commands import (
    C_FIND_RQ,
    C_GET_RQ,
    C_MOVE_RQ,
    N_ACTION_RQ,
    N_CREATE_RQ,
    N_SET_RQ,
)
from dicomvault.net.handlers import AssociationInfo, ServiceRegistry
from dicomvault.net.negotiation import AcceptorPolicy
from dicomvault.net.uids import MPPS, STORAGE_COMMITMENT_PUSH

log = logging.getLogger("dicomvault.dimse")


class AuditObserver:
    """The acceptor's events into the audit trail (PS3.15 A.5.3): a rejected
    association or failed TLS handshake is a Security Alert (Node Authentication); the
    end of an association emits its DICOM Instances Transferred messages."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.trail = audit.trail_of(archive)

    def rejected(self, info: AssociationInfo, result: int, source: int, reason: int) -> None:
        if reason == 2 and source == 3:  # local limit: load, not security
            return
        audit.association_rejected(
            self.archive,
            info.calling_ae_title,
            info.called_ae_title,
            info.peer_host,
            f"A-ASSOCIATE-RJ result {result} source {source} reason {reason}",
        )

    def closed(self, info: AssociationInfo) -> None:
        self.trail.association_ended(info.id)

    def tls_failed(self, host: str, port: int, reason: str) -> None:
        audit.tls_failed(self.archive, host, port, reason)

    def refused(self, info: AssociationInfo, abstract_syntax: str, command: str) -> None:
        """A request answered 0x0124: Security Alert, Use of Restricted Function
        (PS3.15 A.5.3.11, 110132)."""
        audit.restricted_function(
            self.archive, user=info.calling_ae_title.strip(), host=info.peer_host,
            function=f"{command} {abstract_syntax}",
            description=f"DIMSE 0x0124 Not Authorized: {command} on {abstract_syntax}",
        )  # fmt: skip

    def identity(self, info: AssociationInfo, user: tuple[str, str] | None) -> None:
        """A User Identity Negotiation outcome (PS3.7 D.3.3.7): User Authentication,
        Login (PS3.15 A.5.3.12), every refusal and a success once per user and address."""
        ident = info.user_identity
        if ident is None:
            return
        if user is not None:
            audit.login(self.archive, user[0], info.peer_host)
            return
        if ident.type == 5:
            name, why = "(jwt token)", "JWT user identity refused"
        else:
            name = ident.primary_field.decode("utf-8", "replace")[:128] or "-"
            why = (
                "wrong user name or passcode" if ident.type == 2
                else f"user identity type {ident.type} does not authenticate"
            )  # fmt: skip
        audit.login(
            self.archive, name, info.peer_host,
            failure=f"{why} (calling AE {info.calling_ae_title.strip()!r})",
        )  # fmt: skip


def policy_from_settings(
    settings: Settings,
    users: UserCheck | None = None,
    observer: AuditObserver | None = None,
    remotes: Callable[[], Mapping[str, RemoteAE]] | None = None,
    *,
    secure: bool = False,
) -> AcceptorPolicy:
    """The acceptor policy of the ``[dicom]``, ``[security]`` and ``[remotes]`` sections.

    Access control (:class:`~dicomvault.dimse.access.AccessControl`, PS3.8 7.1.1.3,
    9.3.4): who the calling AE is and which services it may use. ``dicom.allowed_calling_aes``,
    when not empty, is an additional allow-list checked first, for every peer (loopback
    included): a calling AE title not in it is rejected with A-ASSOCIATE-RJ 1/1/3 whatever
    ``[remotes]`` and ``[security]`` say. The called AE title is checked before both
    (``dicom.check_called_ae``, RJ 1/1/7). ``users`` checks the username and passcode of
    User Identity Negotiation (PS3.7 D.3.3.7, ``security.user_identity``). ``remotes``
    gives the remote AEs now (default: ``[remotes]`` of the file only). ``secure``: the
    listener speaks DICOM over TLS (remote AEs with ``tls = true`` are refused elsewhere).
    """
    dicom = settings.dicom
    allowed = frozenset(title.strip() for title in dicom.allowed_calling_aes)
    access = AccessControl(settings, users, remotes, secure=secure)
    if observer is not None:
        access.on_identity = observer.identity  # User Authentication, PS3.15 A.5.3.12
    return AcceptorPolicy(
        ae_title=dicom.ae_title,
        check_called_ae=dicom.check_called_ae,
        calling_ae_allowed=(lambda title: title in allowed) if allowed else None,
        max_pdu=dicom.max_pdu,
        max_associations=dicom.max_associations,
        idle_timeout=dicom.idle_timeout,
        artim_timeout=dicom.artim_timeout,
        extended_negotiation=relational_reply,
        access=access,
        observer=observer,
    )


def registry_for(archive: Archive) -> ServiceRegistry:
    """Verification (PS3.4 A), Storage of every storage SOP class (PS3.4 B), and
    Patient/Study Root Query/Retrieve FIND, MOVE, GET (PS3.4 C)."""
    registry = ServiceRegistry()
    registry.add_verification()
    registry.add_store(ArchiveStoreHandler(archive))
    registry.add_query(C_FIND_RQ, ArchiveFindHandler(archive), FIND_SOP_CLASSES)
    registry.add_query(C_MOVE_RQ, ArchiveMoveHandler(archive), MOVE_SOP_CLASSES)
    registry.add_query(C_GET_RQ, ArchiveGetHandler(archive), GET_SOP_CLASSES)
    if archive.settings.worklist.enabled:  # Modality Worklist FIND (PS3.4 K)
        registry.add_query(C_FIND_RQ, ArchiveWorklistHandler(archive), WORKLIST_SOP_CLASSES)
    # Storage Commitment Push Model SCP (PS3.4 J.3).
    registry.add_normalized(
        N_ACTION_RQ,
        CommitmentHandler(archive, CommitmentReporter(archive)),
        [STORAGE_COMMITMENT_PUSH],
    )
    # Modality Performed Procedure Step SCP (PS3.4 F.7.2).
    mpps = MppsHandler(archive)
    registry.add_normalized(N_CREATE_RQ, mpps, [MPPS])
    registry.add_normalized(N_SET_RQ, mpps, [MPPS])
    return registry


def _user_check(archive: Archive) -> UserCheck:
    """The archive's HTTP users (argon2id) as the check of User Identity Negotiation."""

    def check(name: str, passcode: str) -> str | None:
        principal = verify_password(archive, name, passcode)
        return None if principal is None else principal.role

    return check


async def serve_dicom(
    archive: Archive,
    settings: Settings,
    *,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    sock: socket.socket | None = None,
    ssl: _ssl.SSLContext | None = None,
) -> None:
    """Serve DIMSE for ``archive`` until ``stop`` is set.

    Parameters
    ----------
    archive
        Where C-STORE requests go.
    settings
        ``settings.dicom`` gives host, port, AE title, limits and timeouts.
    ready
        Set once listening.
    stop
        Graceful shutdown: stop accepting, finish messages in flight, return.
    sock
        A pre-bound listening socket (e.g. SO_REUSEPORT, one per worker process).
    ssl
        DICOM over TLS (PS3.15 B.12) with this server context
        (:func:`dicomvault.security.tls.server_context`), e.g. on ``tls.dicom_port``.
    """
    await serve(
        registry_for(archive),
        policy_from_settings(
            settings,
            _user_check(archive),
            AuditObserver(archive),
            remotes=lambda: effective_remotes(archive),
            secure=ssl is not None,
        ),
        host=settings.dicom.host,
        port=settings.dicom.port,
        sock=sock,
        ready=ready,
        stop=stop,
        logger=log,
        grace=max(settings.dicom.idle_timeout, 5.0),
        ssl=ssl,
    )
