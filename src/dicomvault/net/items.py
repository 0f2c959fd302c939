"""Variable items of the A-ASSOCIATE PDUs (PS3.8 9.3.2.1-9.3.3.3, PS3.7 Annex D.3.3).

Pure codec functions: each ``encode_*`` returns bytes, each ``decode_*`` reads an item's
value from a buffer and raises only :class:`~dicomvault.net.errors.DecodeError`.
Integers in the upper layer are big endian (PS3.8 9.3.1).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from dicomvault.net.errors import DecodeError

# Item types (PS3.8 Table 9-12, 9-13, 9-18 and PS3.7 Annex D.3.3).
APPLICATION_CONTEXT_ITEM = 0x10
PRESENTATION_CONTEXT_RQ_ITEM = 0x20
PRESENTATION_CONTEXT_AC_ITEM = 0x21
ABSTRACT_SYNTAX_SUB_ITEM = 0x30
TRANSFER_SYNTAX_SUB_ITEM = 0x40
USER_INFORMATION_ITEM = 0x50
MAXIMUM_LENGTH_SUB_ITEM = 0x51
IMPLEMENTATION_CLASS_UID_SUB_ITEM = 0x52
ASYNCHRONOUS_OPERATIONS_WINDOW_SUB_ITEM = 0x53
ROLE_SELECTION_SUB_ITEM = 0x54
IMPLEMENTATION_VERSION_NAME_SUB_ITEM = 0x55
SOP_CLASS_EXTENDED_NEGOTIATION_SUB_ITEM = 0x56
SOP_CLASS_COMMON_EXTENDED_NEGOTIATION_SUB_ITEM = 0x57
USER_IDENTITY_RQ_SUB_ITEM = 0x58
USER_IDENTITY_AC_SUB_ITEM = 0x59

# Presentation context results (PS3.8 Table 9-18).
ACCEPTANCE = 0
USER_REJECTION = 1
NO_REASON = 2
ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
TRANSFER_SYNTAXES_NOT_SUPPORTED = 4

_ITEM_HEADER = struct.Struct(">BxH")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U16U16 = struct.Struct(">HH")


@dataclass(slots=True)
class PresentationContextRQ:
    """A proposed presentation context (PS3.8 9.3.2.2): ID, abstract and transfer syntaxes."""

    id: int
    abstract_syntax: str
    transfer_syntaxes: list[str]


@dataclass(slots=True)
class PresentationContextAC:
    """A presentation context result (PS3.8 9.3.3.2); ``transfer_syntax`` is significant
    only when ``result`` is 0 (acceptance)."""

    id: int
    result: int
    transfer_syntax: str


@dataclass(slots=True)
class RoleSelection:
    """SCP/SCU Role Selection sub-item (PS3.7 D.3.3.4)."""

    sop_class_uid: str
    scu_role: bool
    scp_role: bool


@dataclass(slots=True)
class CommonExtendedNegotiation:
    """SOP Class Common Extended Negotiation sub-item (PS3.7 D.3.3.6)."""

    sop_class_uid: str
    service_class_uid: str
    related_general_sop_classes: list[str] = field(default_factory=list)


@dataclass(slots=True)
class UserIdentity:
    """User Identity Negotiation request sub-item (PS3.7 D.3.3.7.1).

    ``type``: 1 username, 2 username and passcode, 3 Kerberos ticket, 4 SAML assertion,
    5 JSON Web Token.
    """

    type: int
    positive_response_requested: bool
    primary_field: bytes
    secondary_field: bytes = b""


@dataclass(slots=True)
class UserInformation:
    """The User Information item (PS3.8 9.3.2.3, PS3.7 D.3.3) and its sub-items."""

    max_length: int | None = None
    implementation_class_uid: str = ""
    implementation_version_name: str | None = None
    #: (maximum operations invoked, maximum operations performed), PS3.7 D.3.3.3.
    async_ops_window: tuple[int, int] | None = None
    roles: list[RoleSelection] = field(default_factory=list)
    #: SOP Class UID -> service-class-application-information (PS3.7 D.3.3.5).
    extended_negotiation: dict[str, bytes] = field(default_factory=dict)
    common_extended_negotiation: list[CommonExtendedNegotiation] = field(default_factory=list)
    user_identity: UserIdentity | None = None
    #: Server response of a User Identity Negotiation AC sub-item (PS3.7 D.3.3.7.2).
    user_identity_response: bytes | None = None


def decode_uid(value: bytes | memoryview) -> str:
    """Decode a UID field: ASCII, trailing NUL or space padding removed (PS3.8 Annex F)."""
    try:
        return bytes(value).rstrip(b"\x00 ").decode("ascii")
    except UnicodeDecodeError:
        raise DecodeError("UID is not ASCII", 6) from None


def encode_uid(uid: str) -> bytes:
    """Encode a UID for an upper-layer item (no padding: PS3.8 Annex F)."""
    return uid.encode("ascii")


def _item(item_type: int, value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError(f"item 0x{item_type:02X} value is {len(value)} bytes (max 65535)")
    return _ITEM_HEADER.pack(item_type, len(value)) + value


def iter_items(buf: memoryview, start: int, end: int) -> list[tuple[int, memoryview]]:
    """Split ``buf[start:end]`` into (item type, item value) pairs.

    Raises
    ------
    DecodeError
        An item header or value runs past ``end``.
    """
    items: list[tuple[int, memoryview]] = []
    pos = start
    while pos < end:
        if pos + 4 > end:
            raise DecodeError("truncated item header", 6)
        item_type, length = _ITEM_HEADER.unpack_from(buf, pos)
        pos += 4
        if pos + length > end:
            raise DecodeError(f"item 0x{item_type:02X} length {length} runs past its PDU", 6)
        items.append((item_type, buf[pos : pos + length]))
        pos += length
    return items


def encode_presentation_context_rq(ctx: PresentationContextRQ) -> bytes:
    """Presentation Context item, type 20H (PS3.8 Table 9-13)."""
    body = bytearray((ctx.id, 0, 0, 0))
    body += _item(ABSTRACT_SYNTAX_SUB_ITEM, encode_uid(ctx.abstract_syntax))
    for ts in ctx.transfer_syntaxes:
        body += _item(TRANSFER_SYNTAX_SUB_ITEM, encode_uid(ts))
    return _item(PRESENTATION_CONTEXT_RQ_ITEM, bytes(body))


def decode_presentation_context_rq(value: memoryview) -> PresentationContextRQ:
    """Decode the value of a Presentation Context item type 20H."""
    if len(value) < 4:
        raise DecodeError("presentation context item too short", 6)
    abstract = ""
    syntaxes: list[str] = []
    for sub_type, sub in iter_items(value, 4, len(value)):
        if sub_type == ABSTRACT_SYNTAX_SUB_ITEM:
            abstract = decode_uid(sub)
        elif sub_type == TRANSFER_SYNTAX_SUB_ITEM:
            syntaxes.append(decode_uid(sub))
        else:
            raise DecodeError(f"unexpected sub-item 0x{sub_type:02X} in context", 4)
    return PresentationContextRQ(value[0], abstract, syntaxes)


def encode_presentation_context_ac(ctx: PresentationContextAC) -> bytes:
    """Presentation Context item, type 21H (PS3.8 Table 9-18)."""
    body = bytes((ctx.id, 0, ctx.result, 0))
    return _item(
        PRESENTATION_CONTEXT_AC_ITEM,
        body + _item(TRANSFER_SYNTAX_SUB_ITEM, encode_uid(ctx.transfer_syntax)),
    )


def decode_presentation_context_ac(value: memoryview) -> PresentationContextAC:
    """Decode the value of a Presentation Context item type 21H."""
    if len(value) < 4:
        raise DecodeError("presentation context item too short", 6)
    syntax = ""
    for sub_type, sub in iter_items(value, 4, len(value)):
        if sub_type == TRANSFER_SYNTAX_SUB_ITEM:
            syntax = decode_uid(sub)
        else:
            raise DecodeError(f"unexpected sub-item 0x{sub_type:02X} in context", 4)
    return PresentationContextAC(value[0], value[2], syntax)


def _uid_field(uid: str) -> bytes:
    raw = encode_uid(uid)
    return _U16.pack(len(raw)) + raw


def _read_uid_field(value: memoryview, pos: int) -> tuple[str, int]:
    if pos + 2 > len(value):
        raise DecodeError("truncated UID length", 6)
    (length,) = _U16.unpack_from(value, pos)
    pos += 2
    if pos + length > len(value):
        raise DecodeError("UID runs past its sub-item", 6)
    return decode_uid(value[pos : pos + length]), pos + length


def encode_user_information(info: UserInformation) -> bytes:
    """User Information item, type 50H (PS3.8 9.3.2.3, PS3.7 D.3.3)."""
    body = bytearray()
    if info.max_length is not None:
        body += _item(MAXIMUM_LENGTH_SUB_ITEM, _U32.pack(info.max_length))
    body += _item(IMPLEMENTATION_CLASS_UID_SUB_ITEM, encode_uid(info.implementation_class_uid))
    if info.async_ops_window is not None:
        body += _item(ASYNCHRONOUS_OPERATIONS_WINDOW_SUB_ITEM, _U16U16.pack(*info.async_ops_window))
    for role in info.roles:
        body += _item(
            ROLE_SELECTION_SUB_ITEM,
            _uid_field(role.sop_class_uid) + bytes((int(role.scu_role), int(role.scp_role))),
        )
    if info.implementation_version_name is not None:
        body += _item(
            IMPLEMENTATION_VERSION_NAME_SUB_ITEM, info.implementation_version_name.encode("ascii")
        )
    for uid, app_info in info.extended_negotiation.items():
        body += _item(SOP_CLASS_EXTENDED_NEGOTIATION_SUB_ITEM, _uid_field(uid) + app_info)
    for common in info.common_extended_negotiation:
        related = b"".join(_uid_field(u) for u in common.related_general_sop_classes)
        value = (
            _uid_field(common.sop_class_uid)
            + _uid_field(common.service_class_uid)
            + _U16.pack(len(related))
            + related
        )
        body += _item(SOP_CLASS_COMMON_EXTENDED_NEGOTIATION_SUB_ITEM, value)
    if info.user_identity is not None:
        ident = info.user_identity
        body += _item(
            USER_IDENTITY_RQ_SUB_ITEM,
            bytes((ident.type, int(ident.positive_response_requested)))
            + _U16.pack(len(ident.primary_field))
            + ident.primary_field
            + _U16.pack(len(ident.secondary_field))
            + ident.secondary_field,
        )
    if info.user_identity_response is not None:
        body += _item(
            USER_IDENTITY_AC_SUB_ITEM,
            _U16.pack(len(info.user_identity_response)) + info.user_identity_response,
        )
    return _item(USER_INFORMATION_ITEM, bytes(body))


def _decode_user_identity(value: memoryview) -> UserIdentity:
    if len(value) < 4:
        raise DecodeError("user identity sub-item too short", 6)
    (primary_len,) = _U16.unpack_from(value, 2)
    pos = 4 + primary_len
    if pos + 2 > len(value):
        raise DecodeError("user identity primary field runs past its sub-item", 6)
    primary = bytes(value[4:pos])
    (secondary_len,) = _U16.unpack_from(value, pos)
    if pos + 2 + secondary_len > len(value):
        raise DecodeError("user identity secondary field runs past its sub-item", 6)
    secondary = bytes(value[pos + 2 : pos + 2 + secondary_len])
    return UserIdentity(value[0], bool(value[1]), primary, secondary)


def decode_user_information(value: memoryview) -> UserInformation:
    """Decode the value of a User Information item; unknown sub-items are ignored
    (PS3.7 D.3.3: an acceptor ignores sub-items it does not support)."""
    info = UserInformation()
    for sub_type, sub in iter_items(value, 0, len(value)):
        if sub_type == MAXIMUM_LENGTH_SUB_ITEM:
            if len(sub) != 4:
                raise DecodeError("maximum length sub-item is not 4 bytes", 6)
            (info.max_length,) = _U32.unpack_from(sub, 0)
        elif sub_type == IMPLEMENTATION_CLASS_UID_SUB_ITEM:
            info.implementation_class_uid = decode_uid(sub)
        elif sub_type == IMPLEMENTATION_VERSION_NAME_SUB_ITEM:
            info.implementation_version_name = bytes(sub).decode("latin-1").strip()
        elif sub_type == ASYNCHRONOUS_OPERATIONS_WINDOW_SUB_ITEM:
            if len(sub) != 4:
                raise DecodeError("asynchronous operations window is not 4 bytes", 6)
            info.async_ops_window = _U16U16.unpack_from(sub, 0)
        elif sub_type == ROLE_SELECTION_SUB_ITEM:
            uid, pos = _read_uid_field(sub, 0)
            if pos + 2 > len(sub):
                raise DecodeError("role selection sub-item too short", 6)
            info.roles.append(RoleSelection(uid, bool(sub[pos]), bool(sub[pos + 1])))
        elif sub_type == SOP_CLASS_EXTENDED_NEGOTIATION_SUB_ITEM:
            uid, pos = _read_uid_field(sub, 0)
            info.extended_negotiation[uid] = bytes(sub[pos:])
        elif sub_type == SOP_CLASS_COMMON_EXTENDED_NEGOTIATION_SUB_ITEM:
            sop, pos = _read_uid_field(sub, 0)
            service, pos = _read_uid_field(sub, pos)
            if pos + 2 > len(sub):
                raise DecodeError("common extended negotiation sub-item too short", 6)
            (related_len,) = _U16.unpack_from(sub, pos)
            pos += 2
            end = pos + related_len
            if end > len(sub):
                raise DecodeError("related SOP classes run past their sub-item", 6)
            related: list[str] = []
            while pos < end:
                uid, pos = _read_uid_field(sub[:end], pos)
                related.append(uid)
            info.common_extended_negotiation.append(
                CommonExtendedNegotiation(sop, service, related)
            )
        elif sub_type == USER_IDENTITY_RQ_SUB_ITEM:
            info.user_identity = _decode_user_identity(sub)
        elif sub_type == USER_IDENTITY_AC_SUB_ITEM:
            if len(sub) < 2:
                raise DecodeError("user identity response too short", 6)
            (length,) = _U16.unpack_from(sub, 0)
            if 2 + length > len(sub):
                raise DecodeError("user identity response runs past its sub-item", 6)
            info.user_identity_response = bytes(sub[2 : 2 + length])
    return info
