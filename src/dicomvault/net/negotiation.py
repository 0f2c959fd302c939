"""Association negotiation (PS3.8 7.1, PS3.7 D.3.3): what an acceptor agrees to.

:func:`negotiate` is pure: it turns an A-ASSOCIATE-RQ into an A-ASSOCIATE-AC or -RJ
according to an :class:`AcceptorPolicy` and the services registered. The server that
calls it for each connection is :mod:`dicomvault.net.acceptor`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import dicomvault
from dicomvault.net.handlers import (
    AcceptedContext,
    AccessPolicy,
    AssociationInfo,
    ContextFilter,
    ServiceRegistry,
    UserIdentityPolicy,
)
from dicomvault.net.items import (
    ABSTRACT_SYNTAX_NOT_SUPPORTED,
    ACCEPTANCE,
    NO_REASON,
    TRANSFER_SYNTAXES_NOT_SUPPORTED,
    USER_REJECTION,
    PresentationContextAC,
    RoleSelection,
    UserInformation,
)
from dicomvault.net.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from dicomvault.net.uids import (
    APPLICATION_CONTEXT_NAME,
    DEFAULT_TRANSFER_SYNTAXES,
    IMPLICIT_VR_LITTLE_ENDIAN,
)

# A-ASSOCIATE-RJ fields (PS3.8 Table 9-21).
REJECTED_PERMANENT = 1
REJECTED_TRANSIENT = 2
SOURCE_SERVICE_USER = 1
SOURCE_SERVICE_PROVIDER_ACSE = 2
SOURCE_SERVICE_PROVIDER_PRESENTATION = 3
REASON_NO_REASON_GIVEN = 1
REASON_APPLICATION_CONTEXT_NOT_SUPPORTED = 2
REASON_CALLING_AE_NOT_RECOGNIZED = 3
REASON_CALLED_AE_NOT_RECOGNIZED = 7
REASON_LOCAL_LIMIT_EXCEEDED = 2  # with source 3


class AssociationObserver(Protocol):
    """Hooks an application (the audit trail) may attach to an acceptor."""

    def rejected(self, info: AssociationInfo, result: int, source: int, reason: int) -> None:
        """An A-ASSOCIATE-RJ was sent (PS3.8 Table 9-21 result, source, reason)."""

    def closed(self, info: AssociationInfo) -> None:
        """An accepted association ended (released or aborted)."""

    def tls_failed(self, host: str, port: int, reason: str) -> None:
        """A TLS handshake on the DICOM-over-TLS port failed (PS3.15 B.12)."""

    def refused(self, info: AssociationInfo, abstract_syntax: str, command: str) -> None:
        """A request was answered 0x0124 Refused: Not Authorized (PS3.7 C.5)."""


def notify(log: logging.Logger, hook: Callable[..., None] | None, *args: object) -> None:
    """Call an observer hook; its failure is logged, never raised."""
    if hook is None:
        return
    try:
        hook(*args)
    except Exception:
        log.exception("association observer failed")


@dataclass(slots=True)
class AcceptorPolicy:
    """What an acceptor agrees to (PS3.8 7.1.1, PS3.7 D.3.3).

    Attributes
    ----------
    ae_title
        Our AE title; with ``check_called_ae`` a request to another title is rejected
        with A-ASSOCIATE-RJ 1/1/7.
    calling_ae_allowed
        Hook deciding on the Calling AE Title; ``None`` allows any. A refusal is
        A-ASSOCIATE-RJ 1/1/3.
    transfer_syntaxes
        Accepted transfer syntaxes; for each context the first one *the peer* proposed
        that is in this set is chosen, so nothing is transcoded on the way in.
    max_pdu
        The Maximum Length we advertise (PS3.8 D.1).
    max_associations
        Beyond this many simultaneous associations: A-ASSOCIATE-RJ 2/3/2.
    idle_timeout, artim_timeout
        Seconds of silence before an established association is aborted; ARTIM (9.1.5).
    user_identity
        Hook for User Identity Negotiation (PS3.7 D.3.3.7), see
        :data:`~dicomvault.net.handlers.UserIdentityPolicy`.
    extended_negotiation
        Hook answering SOP Class Extended Negotiation (PS3.7 D.3.3.5): given the SOP
        class and the proposed application information, the reply or ``None`` (no reply).
    access
        Access control, see :data:`~dicomvault.net.handlers.AccessPolicy`: consulted once
        per association before negotiation; it may reject the association (A-ASSOCIATE-RJ
        1/1/3) or refuse presentation contexts (result 1, user-rejection, PS3.8 Table
        9-18), and requests that still arrive for a refused service are answered 0x0124.
    """

    ae_title: str = "DICOMVAULT"
    check_called_ae: bool = True
    calling_ae_allowed: Callable[[str], bool] | None = None
    transfer_syntaxes: tuple[str, ...] = DEFAULT_TRANSFER_SYNTAXES
    max_pdu: int = 262144
    max_associations: int = 64
    idle_timeout: float = 60.0
    artim_timeout: float = 30.0
    user_identity: UserIdentityPolicy | None = None
    extended_negotiation: Callable[[str, bytes], bytes | None] | None = None
    access: AccessPolicy | None = None
    #: Told of rejected associations, ended ones and failed TLS handshakes (the audit
    #: trail, PS3.15 A.5.3.11 / A.5.3.4); a failing observer is logged, never fatal.
    observer: AssociationObserver | None = None
    _syntax_set: frozenset[str] = field(default=frozenset(), init=False, repr=False)

    def __post_init__(self) -> None:
        self._syntax_set = frozenset(self.transfer_syntaxes)


def negotiate(
    rq: A_ASSOCIATE_RQ,
    policy: AcceptorPolicy,
    registry: ServiceRegistry,
    info: AssociationInfo,
    *,
    active_associations: int = 0,
    access: ContextFilter | None = None,
    calling_ae_refused: bool = False,
) -> A_ASSOCIATE_AC | A_ASSOCIATE_RJ:
    """Decide on an association request (PS3.8 7.1.1, PS3.7 D.3.3).

    Fills ``info`` (AE titles, accepted contexts, peer maximum, user identity, extended
    negotiation) and returns the PDU to send. ``access`` and ``calling_ae_refused`` are
    what :attr:`AcceptorPolicy.access` decided: a refused calling AE is rejected 1/1/3
    (after the application context and called AE checks); contexts ``access`` refuses
    get result 1, user-rejection (PS3.8 Table 9-18). An association whose contexts are
    all refused is still accepted (PS3.8 7.1.1.13 leaves it to the requestor, which
    usually releases or aborts it).
    """
    info.access = access
    info.calling_ae_title = rq.calling_ae_title
    info.called_ae_title = rq.called_ae_title
    user = rq.user_information
    info.peer_max_pdu = user.max_length or 0
    info.peer_implementation_class_uid = user.implementation_class_uid
    info.peer_implementation_version_name = user.implementation_version_name
    info.user_identity = user.user_identity
    info.extended_negotiation = dict(user.extended_negotiation)
    if rq.application_context_name != APPLICATION_CONTEXT_NAME:
        return A_ASSOCIATE_RJ(
            REJECTED_PERMANENT, SOURCE_SERVICE_USER, REASON_APPLICATION_CONTEXT_NOT_SUPPORTED
        )
    if policy.check_called_ae and rq.called_ae_title != policy.ae_title:
        return A_ASSOCIATE_RJ(
            REJECTED_PERMANENT, SOURCE_SERVICE_USER, REASON_CALLED_AE_NOT_RECOGNIZED
        )
    if calling_ae_refused or (
        policy.calling_ae_allowed is not None and not policy.calling_ae_allowed(rq.calling_ae_title)
    ):
        return A_ASSOCIATE_RJ(
            REJECTED_PERMANENT, SOURCE_SERVICE_USER, REASON_CALLING_AE_NOT_RECOGNIZED
        )
    if active_associations >= policy.max_associations:
        return A_ASSOCIATE_RJ(
            REJECTED_TRANSIENT, SOURCE_SERVICE_PROVIDER_PRESENTATION, REASON_LOCAL_LIMIT_EXCEEDED
        )
    reply = UserInformation(
        max_length=policy.max_pdu,
        implementation_class_uid=dicomvault.IMPLEMENTATION_CLASS_UID,
        implementation_version_name=dicomvault.IMPLEMENTATION_VERSION_NAME,
    )
    if user.user_identity is not None and policy.user_identity is not None:
        verdict = policy.user_identity(user.user_identity, info)
        if verdict is False:
            return A_ASSOCIATE_RJ(REJECTED_PERMANENT, SOURCE_SERVICE_USER, REASON_NO_REASON_GIVEN)
        if user.user_identity.positive_response_requested:
            # PS3.7 D.3.3.7.2: the server response is empty for username (and passcode);
            # Kerberos, SAML and JWT carry what the policy returned.
            if user.user_identity.type in (1, 2):
                reply.user_identity_response = b""
            elif isinstance(verdict, bytes):
                reply.user_identity_response = verdict
    elif (
        user.user_identity is not None
        and user.user_identity.positive_response_requested
        and info.user_identity_response is not None
    ):
        # The access hook accepted the identity (PS3.7 D.3.3.7.2).
        reply.user_identity_response = info.user_identity_response
    if user.async_ops_window is not None:
        reply.async_ops_window = (1, 1)  # operations are performed one at a time
    roles = {role.sop_class_uid: role for role in user.roles}
    results: list[PresentationContextAC] = []
    seen: set[int] = set()
    for ctx in rq.presentation_contexts:
        fallback = ctx.transfer_syntaxes[0] if ctx.transfer_syntaxes else IMPLICIT_VR_LITTLE_ENDIAN
        if ctx.id in seen or ctx.id % 2 == 0:
            results.append(PresentationContextAC(ctx.id, NO_REASON, fallback))
            continue
        seen.add(ctx.id)
        role = roles.get(ctx.abstract_syntax)
        # A C-GET SCP takes any SOP class the requestor will store as SCP (PS3.4 C.4.3.1).
        scp_role = (
            role is not None
            and role.scp_role
            and (registry.get_role or ctx.abstract_syntax in registry.scu_of)
        )
        supported = registry.supports(ctx.abstract_syntax)
        if not supported and not scp_role:
            results.append(PresentationContextAC(ctx.id, ABSTRACT_SYNTAX_NOT_SUPPORTED, fallback))
            continue
        if access is not None:
            scp_role = scp_role and access(ctx.abstract_syntax, True)
            if not scp_role and not access(ctx.abstract_syntax, False):
                results.append(PresentationContextAC(ctx.id, USER_REJECTION, fallback))
                continue
        chosen = next((ts for ts in ctx.transfer_syntaxes if ts in policy._syntax_set), None)
        if chosen is None:
            results.append(PresentationContextAC(ctx.id, TRANSFER_SYNTAXES_NOT_SUPPORTED, fallback))
            continue
        results.append(PresentationContextAC(ctx.id, ACCEPTANCE, chosen))
        accepted = AcceptedContext(ctx.id, ctx.abstract_syntax, chosen)
        if role is not None:
            # PS3.7 D.3.3.4: the requestor keeps the SCU role it asks for where we are
            # SCP; it gets the SCP role (we send C-STOREs) when a C-GET SCP is registered.
            accepted.scu_role = (
                role.scu_role
                and supported
                and (access is None or access(ctx.abstract_syntax, False))
            )
            accepted.scp_role = scp_role
        info.contexts[ctx.id] = accepted
    for uid, role in roles.items():
        if any(a.abstract_syntax == uid for a in info.contexts.values()):
            reply.roles.append(
                RoleSelection(
                    uid,
                    role.scu_role
                    and registry.supports(uid)
                    and (access is None or access(uid, False)),
                    role.scp_role
                    and (registry.get_role or uid in registry.scu_of)
                    and (access is None or access(uid, True)),
                )
            )
    if policy.extended_negotiation is not None:
        for uid, app_info in user.extended_negotiation.items():
            answer = policy.extended_negotiation(uid, app_info)
            if answer is not None:
                reply.extended_negotiation[uid] = answer
    return A_ASSOCIATE_AC(
        rq.called_ae_title, rq.calling_ae_title, results, reply, APPLICATION_CONTEXT_NAME
    )
