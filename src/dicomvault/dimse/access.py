"""DICOM access control: who is calling, and which services it may use.

The decisions of the Security issue, part 2, made once per association by
:class:`AccessControl` (the :data:`~dicomvault.net.handlers.AccessPolicy` of the archive's
acceptor, see :func:`dicomvault.dimse.server.policy_from_settings`):

1. A peer on a loopback address may use every service while
   ``security.trust_loopback`` is true (the default).
2. Otherwise the calling AE title (PS3.8 7.1.1.3) is looked up among the
   ``[remotes.NAME]`` entries and those managed over HTTP (``/api/remotes``, read through
   :func:`dicomvault.archive.remotes.effective_remotes`). An entry with ``check_host``
   only counts when the peer's address is ``host`` or one of ``hosts`` (names are
   resolved with ``getaddrinfo`` once per association, off the event loop).
   A known AE gets its ``permissions`` — an entry with ``tls = true`` only on the DICOM
   over TLS listener: over plain TCP its title is not recognized (PS3.15 B.12).
3. A calling AE no entry names gets ``security.unknown_ae_permissions``; when that list is
   empty, or a known AE calls from a host that does not match, the association is
   rejected: A-ASSOCIATE-RJ rejected-permanent, source service-user, reason 3 "calling
   AE title not recognized" (PS3.8 9.3.4, Table 9-21).

Permissions map to SOP classes (:func:`permission_for`): Verification → ``echo``;
Storage → ``store`` (or ``get`` when the peer takes the SCP role, i.e. receives the
C-STORE sub-operations of its C-GET, PS3.4 C.4.3.1, PS3.7 D.3.3.4); Query/Retrieve FIND →
``find``, MOVE → ``move``, GET → ``get``; Modality Worklist FIND → ``worklist``; Storage
Commitment Push Model → ``commit``; MPPS → ``mpps``. Presentation contexts of services
the AE may not use are refused with result 1, user-rejection (PS3.8 Table 9-18: the
acceptor's application, not its service provider, refuses them); a request that still
arrives for one is answered 0x0124 "Refused: Not Authorized" (PS3.7 C.5). SOP classes
that map to no permission are allowed only to peers holding every permission.

User Identity Negotiation (PS3.7 D.3.3.7), decided after the calling AE (so an AE that is
rejected stays rejected, whoever logs in, and no argon2 work is spent on it):

- Username and passcode (type 2) are checked against the archive's HTTP users (argon2id,
  in the loop's executor). A valid, enabled user adds the services of their role to the
  calling AE's: ``viewer`` echo, find, move, get; ``uploader`` those and store; ``admin``
  every permission (:data:`ROLE_PERMISSIONS`). A positive response, when asked for, is
  the empty server response of PS3.7 D.3.3.7.2.
- Username only (type 1) identifies but does not authenticate (PS3.7 D.3.3.7: no
  passcode): no extra rights, no positive response; it does not satisfy ``required``.
- JSON Web Token (type 5), when ``[jwt]`` is configured: the primary field is the same
  compact JWS as an HTTP bearer (PS3.7 D.3.3.7 note 3), validated in the loop's executor
  by :class:`~dicomvault.security.jwt.JwtValidator` (RFC 7519, OpenID Connect Core 1.0
  3.1.3.7): signature against the identity provider's JWKS, issuer, audience, expiry;
  its role from ``jwt.role_map`` adds that role's services like a username and passcode.
  The positive response, when asked for, has an empty server response: PS3.7 D.3.3.7.2
  defines its content for Kerberos and SAML only, and echoing the bearer token back
  would only put the credential on the wire once more. A token that is invalid or maps
  to no role counts as no user. Without ``[jwt]`` a JWT is logged and ignored.
- Kerberos (3), SAML (4) and unknown types are not validated (no key or identity
  provider is configured): logged, no extra rights, no positive response; they do not
  satisfy ``required``.
- ``security.user_identity = "required"``: an association without a valid user
  (username and passcode, or JWT; none, another type, a wrong passcode, an invalid
  token or one without a mapped role) is rejected A-ASSOCIATE-RJ
  rejected-permanent (1), source service-user (1), reason no-reason-given (1) (PS3.8
  Table 9-21: the reasons of source 1 are 1, 2, 3 and 7; an identity failure is none of
  2, 3, 7). Loopback peers under ``trust_loopback`` are exempt. With ``optional`` a wrong
  passcode is logged and the association goes on with the AE's rights only.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from dicomvault.config import ALL_PERMISSIONS, Permission, RemoteAE, Settings
from dicomvault.net.handlers import AssociationInfo, RejectAssociation
from dicomvault.net.items import UserIdentity
from dicomvault.net.uids import (
    MODALITY_WORKLIST_FIND,
    MPPS,
    PATIENT_ROOT_FIND,
    PATIENT_ROOT_GET,
    PATIENT_ROOT_MOVE,
    STORAGE_COMMITMENT_PUSH,
    STORAGE_SOP_CLASSES,
    STUDY_ROOT_FIND,
    STUDY_ROOT_GET,
    STUDY_ROOT_MOVE,
    VERIFICATION,
)
from dicomvault.security.jwt import JwksUnavailable, JwtError, validator_for

log = logging.getLogger("dicomvault.dimse")

#: Storage SOP classes live under this root (PS3.6 A), also those pydicom does not list.
_STORAGE_ROOT = "1.2.840.10008.5.1.4.1.1."

_PERMISSION_OF: dict[str, Permission] = {
    VERIFICATION: "echo",
    PATIENT_ROOT_FIND: "find",
    STUDY_ROOT_FIND: "find",
    "1.2.840.10008.5.1.4.1.2.3.1": "find",  # Patient/Study Only (retired)
    PATIENT_ROOT_MOVE: "move",
    STUDY_ROOT_MOVE: "move",
    "1.2.840.10008.5.1.4.1.2.3.2": "move",
    "1.2.840.10008.5.1.4.1.2.4.2": "move",  # Composite Instance Root
    PATIENT_ROOT_GET: "get",
    STUDY_ROOT_GET: "get",
    "1.2.840.10008.5.1.4.1.2.3.3": "get",
    "1.2.840.10008.5.1.4.1.2.4.3": "get",  # Composite Instance Root
    "1.2.840.10008.5.1.4.1.2.5.3": "get",  # Composite Instance Retrieve Without Bulk Data
    MODALITY_WORKLIST_FIND: "worklist",
    STORAGE_COMMITMENT_PUSH: "commit",
    MPPS: "mpps",
}
_STORAGE = frozenset(STORAGE_SOP_CLASSES)
_ALL: frozenset[str] = frozenset(ALL_PERMISSIONS)

#: DIMSE services of the HTTP roles (:mod:`dicomvault.archive.users`) for a user
#: authenticated by User Identity Negotiation.
ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "viewer": frozenset({"echo", "find", "move", "get"}),
    "uploader": frozenset({"echo", "find", "move", "get", "store"}),
    "admin": _ALL,
}
_IDENTITY_TYPES = {1: "username", 2: "username and passcode", 3: "Kerberos", 4: "SAML", 5: "JWT"}

#: Checks a username and passcode; the user's role, or ``None``. Blocking (argon2): it is
#: called in the event loop's executor.
UserCheck = Callable[[str, str], str | None]


def permission_for(abstract_syntax: str, as_scp: bool) -> Permission | None:
    """The permission a peer needs to use ``abstract_syntax`` as its SCU, or as its SCP
    when ``as_scp`` (the SCP/SCU Role Selection of PS3.7 D.3.3.4); ``None`` when the SOP
    class maps to no permission."""
    if abstract_syntax in _STORAGE or abstract_syntax.startswith(_STORAGE_ROOT):
        # The peer as Storage SCP receives our C-STOREs: the sub-operations of its C-GET.
        return "get" if as_scp else "store"
    return _PERMISSION_OF.get(abstract_syntax)


@dataclass(frozen=True, slots=True)
class Grant:
    """The services one association may use: a
    :data:`~dicomvault.net.handlers.ContextFilter`."""

    permissions: frozenset[str]
    #: Why: ``"loopback"``, ``"remote NAME"`` or ``"unknown AE"`` (for the log).
    reason: str = ""

    def __call__(self, abstract_syntax: str, as_scp: bool) -> bool:
        needed = permission_for(abstract_syntax, as_scp)
        if needed is None:
            return self.permissions >= _ALL
        return needed in self.permissions


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``text`` as an IP address (IPv4-mapped IPv6 as IPv4, scope dropped), or ``None``."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a peer address) is a loopback address (127.0.0.0/8, ::1)."""
    address = _address(host)
    return address is not None and address.is_loopback


def _hosts(remote: RemoteAE) -> list[str]:
    return [h.strip() for h in (remote.host, *remote.hosts) if h.strip()]


_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


async def _resolve(names: Iterable[str]) -> dict[str, set[_Address]]:
    """The addresses of each of ``names`` (``getaddrinfo`` in the loop's executor); a
    name that does not resolve has none (and is logged)."""
    loop = asyncio.get_running_loop()
    unique = sorted(set(names))
    answers = await asyncio.gather(
        *(loop.getaddrinfo(name, None, type=socket.SOCK_STREAM) for name in unique),
        return_exceptions=True,
    )
    found: dict[str, set[_Address]] = {}
    for name, answer in zip(unique, answers, strict=True):
        addresses = found.setdefault(name, set())
        if isinstance(answer, BaseException):
            log.warning(
                "access control: host %r of a [remotes] entry does not resolve: %s", name, answer
            )
            continue
        for *_, sockaddr in answer:
            address = _address(str(sockaddr[0]))
            if address is not None:
                addresses.add(address)
    return found


class AccessControl:
    """The archive's access policy (see the module docstring), built from ``[remotes]``
    and ``[security]``; call it with an association's
    :class:`~dicomvault.net.handlers.AssociationInfo`."""

    def __init__(
        self,
        settings: Settings,
        users: UserCheck | None = None,
        remotes: Callable[[], Mapping[str, RemoteAE]] | None = None,
        *,
        secure: bool = False,
    ) -> None:
        self.trust_loopback = settings.security.trust_loopback
        #: The listener speaks DICOM over TLS (PS3.15 B.12): remote AEs configured with
        #: ``tls = true`` are only recognized on such a listener.
        self.secure = secure
        self.unknown = frozenset(settings.security.unknown_ae_permissions)
        self.identity_required = settings.security.user_identity == "required"
        #: Username and passcode check (``None``: no user store, every passcode fails).
        self.users = users
        #: JWT validation (``None``: ``[jwt]`` not configured, JWTs are ignored).
        self.jwt = validator_for(settings.jwt)
        #: The remote AEs now: ``[remotes.NAME]`` plus those managed over HTTP
        #: (:func:`dicomvault.archive.remotes.effective_remotes`, cached there for a
        #: few seconds); the file's alone when not given.
        self.remotes: Callable[[], Mapping[str, RemoteAE]] = remotes or (lambda: settings.remotes)
        self._remotes_seen: Mapping[str, RemoteAE] | None = None
        self.by_title: dict[str, list[tuple[str, RemoteAE]]] = {}
        self._titles()

    def _titles(self) -> dict[str, list[tuple[str, RemoteAE]]]:
        """The entries by AE title, rebuilt when the remote AEs changed."""
        current = self.remotes()
        if current is not self._remotes_seen:
            by_title: dict[str, list[tuple[str, RemoteAE]]] = {}
            for name, remote in current.items():
                by_title.setdefault(remote.ae_title.strip(), []).append((name, remote))
            self.by_title, self._remotes_seen = by_title, current
        return self.by_title

    def __call__(self, info: AssociationInfo) -> Grant | Awaitable[Grant | None] | None:
        if self.trust_loopback and is_loopback(info.peer_host):
            return Grant(_ALL, "loopback")
        by_ae = self._by_ae(info)
        if info.user_identity is None and not self.identity_required:
            return by_ae
        return self._with_identity(info, by_ae)

    #: Told of every User Identity outcome (the audit trail, PS3.15 A.5.3.12; set by
    #: dimse/server.py): the association and the (user, role), ``None`` when refused.
    on_identity: Callable[[AssociationInfo, tuple[str, str] | None], None] | None = None

    async def _with_identity(
        self, info: AssociationInfo, by_ae: Grant | Awaitable[Grant | None] | None
    ) -> Grant | None:
        """The AE's grant joined with the user's (see the module docstring)."""
        grant = await by_ae if inspect.isawaitable(by_ae) else by_ae
        if grant is None:
            return None
        user = await self._user(info)
        if self.on_identity is not None and info.user_identity is not None:
            self.on_identity(info, user)
        if user is None:
            if self.identity_required:
                raise RejectAssociation(
                    1, 1, 1, "security.user_identity is required and no valid user was given"
                )
            return grant
        name, role = user
        # Accepted: PS3.7 D.3.3.7.2, an empty server response for types 2 and 5.
        info.user_identity_response = b""
        return Grant(
            grant.permissions | ROLE_PERMISSIONS.get(role, frozenset()),
            f"{grant.reason} + user {name} ({role})",
        )

    async def _user(self, info: AssociationInfo) -> tuple[str, str] | None:
        """The authenticated (user name, role) of the association, or ``None``; logs why."""
        ident = info.user_identity
        title = info.calling_ae_title.strip()
        where = f"assoc={info.id} calling AE {title!r} from {info.peer_host}"
        if ident is None:
            log.warning("%s: no user identity (security.user_identity is required)", where)
            return None
        kind = _IDENTITY_TYPES.get(ident.type, f"unknown type {ident.type}")
        if ident.type == 5 and self.jwt is not None:
            return await self._jwt_user(ident, where)
        if ident.type != 2:
            why = {
                1: "a username alone is not authenticated: no extra rights",
                5: "JWT identities are not supported (no jwt.jwks_file or jwt.jwks_url "
                "to validate them): ignored",
            }.get(ident.type, "not supported: ignored")
            log.warning("%s: user identity %s: %s", where, kind, why)
            return None
        try:
            name = ident.primary_field.decode("utf-8")
            passcode = ident.secondary_field.decode("utf-8")
        except UnicodeDecodeError:
            log.warning("%s: user identity is not UTF-8: ignored", where)
            return None
        role = None
        if self.users is not None and name:
            loop = asyncio.get_running_loop()
            role = await loop.run_in_executor(None, self.users, name, passcode)
        if role is None:
            log.warning(
                "%s: user %r: wrong user name or passcode%s",
                where,
                name,
                "" if self.identity_required else " (going on with the AE's rights only)",
            )
            return None
        log.info("%s: user %r authenticated, role %s", where, name, role)
        return name, role

    async def _jwt_user(self, ident: UserIdentity, where: str) -> tuple[str, str] | None:
        """The (user name, role) of a JSON Web Token identity (PS3.7 D.3.3.7.1: the
        primary field is the token, base64url parts), validated off the event loop."""
        assert self.jwt is not None
        try:
            token = ident.primary_field.decode("ascii").strip()
        except UnicodeDecodeError:
            log.warning("%s: user identity JWT is not ASCII: ignored", where)
            return None
        loop = asyncio.get_running_loop()
        try:
            identity = await loop.run_in_executor(None, self.jwt.validate, token)
        except (JwtError, JwksUnavailable) as exc:
            log.warning(
                "%s: user identity JWT refused: %s%s",
                where,
                exc,
                "" if self.identity_required else " (going on with the AE's rights only)",
            )
            return None
        log.info("%s: JWT user %r authenticated, role %s", where, identity.name, identity.role)
        return identity.name, identity.role

    def _by_ae(self, info: AssociationInfo) -> Grant | Awaitable[Grant | None] | None:
        """The decision on the calling AE alone (steps 2 and 3 of the module docstring)."""
        title = info.calling_ae_title.strip()
        entries = self._titles().get(title)
        if not entries:
            if not self.unknown:
                log.warning(
                    "assoc=%s calling AE %r from %s:%d not recognized: no [remotes] entry "
                    "and security.unknown_ae_permissions is empty",
                    info.id,
                    title,
                    info.peer_host,
                    info.peer_port,
                )
                return None
            return Grant(self.unknown, "unknown AE")
        for name, remote in entries:
            if not remote.check_host:
                return self._grant(info, name, remote)
        peer = _address(info.peer_host)
        names = [h for _, r in entries for h in _hosts(r) if _address(h) is None]
        decided = self._match(entries, peer, {})
        if decided is not None or not names or peer is None:
            return (
                self._chosen(info, decided)
                if decided is not None
                else self._mismatch(info, entries)
            )
        return self._match_resolved(info, entries, peer, names)

    def _grant(self, info: AssociationInfo, name: str, remote: RemoteAE) -> Grant | None:
        """The permissions of the ``[remotes]`` entry the association matched — unless the
        entry says ``tls = true`` and the association came over plain TCP: an AE the
        archive must talk to over TLS must also call it over TLS (PS3.15 B.12), or its
        AE title alone would let anyone on the network take its rights."""
        if remote.tls and not self.secure:
            log.warning(
                "assoc=%s calling AE %r from %s:%d rejected: [remotes.%s] has tls = true, "
                "so it must call the DICOM over TLS port (tls.dicom_port)",
                info.id,
                info.calling_ae_title.strip(),
                info.peer_host,
                info.peer_port,
                name,
            )
            return None
        return Grant(frozenset(remote.permissions), f"remote {name}")

    def _chosen(self, info: AssociationInfo, chosen: tuple[str, RemoteAE] | None) -> Grant | None:
        return None if chosen is None else self._grant(info, *chosen)

    async def _match_resolved(
        self,
        info: AssociationInfo,
        entries: list[tuple[str, RemoteAE]],
        peer: _Address,
        names: list[str],
    ) -> Grant | None:
        decided = self._match(entries, peer, await _resolve(names))
        return self._chosen(info, decided) if decided is not None else self._mismatch(info, entries)

    @staticmethod
    def _match(
        entries: list[tuple[str, RemoteAE]],
        peer: _Address | None,
        resolved: dict[str, set[_Address]],
    ) -> tuple[str, RemoteAE] | None:
        """The first entry whose ``host``/``hosts`` (addresses, or names in ``resolved``)
        include the peer's address, else ``None``."""
        if peer is None:
            return None
        for name, remote in entries:
            for host in _hosts(remote):
                literal = _address(host)
                if literal == peer or (literal is None and peer in resolved.get(host, ())):
                    return name, remote
        return None

    @staticmethod
    def _mismatch(info: AssociationInfo, entries: list[tuple[str, RemoteAE]]) -> None:
        log.warning(
            "assoc=%s calling AE %r from %s:%d rejected: host did not match %s",
            info.id,
            info.calling_ae_title.strip(),
            info.peer_host,
            info.peer_port,
            "; ".join(f"[remotes.{name}] {', '.join(_hosts(r))}" for name, r in entries),
        )
        return None
