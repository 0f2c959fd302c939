"""The seven PDUs of the DICOM upper layer (PS3.8 9.3): pure encode/decode over buffers.

No I/O here: :func:`check_pdu_header` validates the 6-byte PDU header before a body is
read (the strict maximum-length check of PS3.8 D.1 happens there), :func:`decode_pdu`
turns a whole PDU into a value and :func:`encode_pdu` turns a value back into bytes.
P-DATA-TF payloads are never copied on decode: :class:`P_DATA_TF` holds memoryviews.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from dicomvault.net.errors import DecodeError, PDUTooLong
from dicomvault.net.items import (
    APPLICATION_CONTEXT_ITEM,
    PRESENTATION_CONTEXT_AC_ITEM,
    PRESENTATION_CONTEXT_RQ_ITEM,
    USER_INFORMATION_ITEM,
    PresentationContextAC,
    PresentationContextRQ,
    UserInformation,
    decode_presentation_context_ac,
    decode_presentation_context_rq,
    decode_uid,
    decode_user_information,
    encode_presentation_context_ac,
    encode_presentation_context_rq,
    encode_uid,
    encode_user_information,
    iter_items,
)
from dicomvault.net.uids import APPLICATION_CONTEXT_NAME

# PDU types (PS3.8 Table 9-11 ff.).
A_ASSOCIATE_RQ_TYPE = 0x01
A_ASSOCIATE_AC_TYPE = 0x02
A_ASSOCIATE_RJ_TYPE = 0x03
P_DATA_TF_TYPE = 0x04
A_RELEASE_RQ_TYPE = 0x05
A_RELEASE_RP_TYPE = 0x06
A_ABORT_TYPE = 0x07

#: PDU header: type, reserved, PDU-length (unsigned 32-bit big endian).
PDU_HEADER = struct.Struct(">BxI")
PDU_HEADER_LENGTH = 6
#: PDV item header (PS3.8 9.3.5.1): item-length, presentation-context-ID, message control header.
PDV_HEADER = struct.Struct(">IBB")
PDV_HEADER_LENGTH = 6
#: P-DATA-TF header followed by one PDV header: the common case written in one pack.
PDATA_ONE_PDV_HEADER = struct.Struct(">BxIIBB")

#: Upper bound for association-negotiation PDUs (RQ/AC): no real request comes near it
#: (128 contexts with many syntaxes is ~150 KB) and it bounds memory per connection.
MAX_NEGOTIATION_PDU = 1 << 20

_ASSOC_FIXED = struct.Struct(">Hxx16s16s32x")
_FOUR = struct.Struct(">xBBB")


@dataclass(slots=True)
class A_ASSOCIATE_RQ:
    """A-ASSOCIATE-RQ PDU (PS3.8 9.3.2, Table 9-11)."""

    called_ae_title: str
    calling_ae_title: str
    presentation_contexts: list[PresentationContextRQ]
    user_information: UserInformation
    application_context_name: str = APPLICATION_CONTEXT_NAME
    protocol_version: int = 1


@dataclass(slots=True)
class A_ASSOCIATE_AC:
    """A-ASSOCIATE-AC PDU (PS3.8 9.3.3, Table 9-17); the AE titles echo the request."""

    called_ae_title: str
    calling_ae_title: str
    presentation_contexts: list[PresentationContextAC]
    user_information: UserInformation
    application_context_name: str = APPLICATION_CONTEXT_NAME
    protocol_version: int = 1


@dataclass(slots=True)
class A_ASSOCIATE_RJ:
    """A-ASSOCIATE-RJ PDU (PS3.8 9.3.4, Table 9-21).

    ``result``: 1 rejected-permanent, 2 rejected-transient. ``source``: 1 service-user,
    2 service-provider (ACSE), 3 service-provider (presentation). ``reason`` depends on
    the source (see the table).
    """

    result: int
    source: int
    reason: int


@dataclass(slots=True)
class P_DATA_TF:
    """P-DATA-TF PDU (PS3.8 9.3.5): PDVs as (context ID, message control header, value)."""

    pdvs: list[tuple[int, int, memoryview | bytes]] = field(default_factory=list)


@dataclass(slots=True)
class A_RELEASE_RQ:
    """A-RELEASE-RQ PDU (PS3.8 9.3.6)."""


@dataclass(slots=True)
class A_RELEASE_RP:
    """A-RELEASE-RP PDU (PS3.8 9.3.7)."""


@dataclass(slots=True)
class A_ABORT:
    """A-ABORT PDU (PS3.8 9.3.8, Table 9-26).

    ``source``: 0 service-user, 2 service-provider. ``reason`` (significant for source 2):
    0 not specified, 1 unrecognized PDU, 2 unexpected PDU, 4 unrecognized PDU parameter,
    5 unexpected PDU parameter, 6 invalid PDU parameter value.
    """

    source: int = 0
    reason: int = 0


PDU = (
    A_ASSOCIATE_RQ
    | A_ASSOCIATE_AC
    | A_ASSOCIATE_RJ
    | P_DATA_TF
    | A_RELEASE_RQ
    | A_RELEASE_RP
    | A_ABORT
)


def check_pdu_header(pdu_type: int, length: int, max_pdata_length: int) -> None:
    """Validate a PDU header before its body is read (PS3.8 9.3.1, D.1).

    Parameters
    ----------
    pdu_type, length
        The first and third fields of the 6-byte header.
    max_pdata_length
        The Maximum Length we advertised; 0 means unlimited. A P-DATA-TF PDU whose
        length exceeds it is refused without reading its body.

    Raises
    ------
    DecodeError
        Unknown PDU type (abort reason 1) or a length that cannot be right (reason 6);
        :class:`PDUTooLong` for a PDU above the maximum.
    """
    if pdu_type == P_DATA_TF_TYPE:
        if max_pdata_length and length > max_pdata_length:
            raise PDUTooLong(
                f"P-DATA-TF PDU of {length} bytes exceeds our maximum {max_pdata_length}", 6
            )
        if length < PDV_HEADER_LENGTH:
            raise DecodeError(f"P-DATA-TF PDU of {length} bytes holds no PDV", 6)
    elif pdu_type in (A_ASSOCIATE_RQ_TYPE, A_ASSOCIATE_AC_TYPE):
        if length > MAX_NEGOTIATION_PDU:
            raise PDUTooLong(f"A-ASSOCIATE PDU of {length} bytes is too long", 6)
        if length < 68:
            raise DecodeError(f"A-ASSOCIATE PDU of {length} bytes is too short", 6)
    elif pdu_type in (A_ASSOCIATE_RJ_TYPE, A_RELEASE_RQ_TYPE, A_RELEASE_RP_TYPE, A_ABORT_TYPE):
        if length != 4:
            raise DecodeError(f"PDU type 0x{pdu_type:02X} has length {length}, not 4", 6)
    else:
        raise DecodeError(f"unrecognized PDU type 0x{pdu_type:02X}", 1)


def _decode_ae(raw: bytes) -> str:
    return raw.decode("latin-1").strip(" \x00")


def _encode_ae(title: str) -> bytes:
    raw = title.encode("ascii")
    if len(raw) > 16:
        raise ValueError(f"AE title {title!r} is longer than 16 characters")
    return raw.ljust(16, b" ")


def _decode_associate(buf: memoryview, rq: bool) -> A_ASSOCIATE_RQ | A_ASSOCIATE_AC:
    end = len(buf)
    version, called, calling = _ASSOC_FIXED.unpack_from(buf, PDU_HEADER_LENGTH)
    app_context = ""
    contexts_rq: list[PresentationContextRQ] = []
    contexts_ac: list[PresentationContextAC] = []
    info: UserInformation | None = None
    for item_type, value in iter_items(buf, PDU_HEADER_LENGTH + 68, end):
        if item_type == APPLICATION_CONTEXT_ITEM:
            app_context = decode_uid(value)
        elif item_type == PRESENTATION_CONTEXT_RQ_ITEM and rq:
            contexts_rq.append(decode_presentation_context_rq(value))
        elif item_type == PRESENTATION_CONTEXT_AC_ITEM and not rq:
            contexts_ac.append(decode_presentation_context_ac(value))
        elif item_type == USER_INFORMATION_ITEM:
            info = decode_user_information(value)
        else:
            raise DecodeError(f"unexpected item 0x{item_type:02X} in A-ASSOCIATE PDU", 4)
    if not app_context:
        raise DecodeError("A-ASSOCIATE PDU without application context item", 6)
    if info is None:
        raise DecodeError("A-ASSOCIATE PDU without user information item", 6)
    if rq:
        return A_ASSOCIATE_RQ(
            _decode_ae(called), _decode_ae(calling), contexts_rq, info, app_context, version
        )
    return A_ASSOCIATE_AC(
        _decode_ae(called), _decode_ae(calling), contexts_ac, info, app_context, version
    )


def decode_pdata(body: memoryview) -> P_DATA_TF:
    """Split a P-DATA-TF PDU body (after the 6-byte header) into PDVs, without copying.

    Raises
    ------
    DecodeError
        A PDV shorter than 2 bytes or longer than what remains of its PDU.
    """
    pdvs: list[tuple[int, int, memoryview | bytes]] = []
    pos = 0
    end = len(body)
    while pos < end:
        if pos + PDV_HEADER_LENGTH > end:
            raise DecodeError("truncated PDV header", 6)
        length, ctx_id, mch = PDV_HEADER.unpack_from(body, pos)
        if length < 2 or pos + 4 + length > end:
            raise DecodeError(f"PDV of {length} bytes does not fit its PDU", 6)
        pdvs.append((ctx_id, mch, body[pos + PDV_HEADER_LENGTH : pos + 4 + length]))
        pos += 4 + length
    return P_DATA_TF(pdvs)


def decode_pdu(data: bytes | bytearray | memoryview, max_pdata_length: int = 0) -> PDU:
    """Decode one whole PDU (header included).

    Parameters
    ----------
    data
        Exactly one PDU.
    max_pdata_length
        Maximum P-DATA-TF length we advertised (0: unlimited), see :func:`check_pdu_header`.

    Raises
    ------
    DecodeError
        Anything malformed; no other exception escapes.
    """
    buf = memoryview(data)
    if len(buf) < PDU_HEADER_LENGTH:
        raise DecodeError("truncated PDU header", 6)
    pdu_type, length = PDU_HEADER.unpack_from(buf, 0)
    check_pdu_header(pdu_type, length, max_pdata_length)
    if len(buf) != PDU_HEADER_LENGTH + length:
        raise DecodeError(f"PDU length field {length} does not match {len(buf) - 6} bytes", 6)
    try:
        if pdu_type == P_DATA_TF_TYPE:
            return decode_pdata(buf[PDU_HEADER_LENGTH:])
        if pdu_type in (A_ASSOCIATE_RQ_TYPE, A_ASSOCIATE_AC_TYPE):
            return _decode_associate(buf, pdu_type == A_ASSOCIATE_RQ_TYPE)
        a, b, c = _FOUR.unpack_from(buf, PDU_HEADER_LENGTH)
    except (struct.error, IndexError) as exc:  # pragma: no cover - guarded by bounds checks
        raise DecodeError(f"malformed PDU: {exc}", 6) from None
    if pdu_type == A_ASSOCIATE_RJ_TYPE:
        return A_ASSOCIATE_RJ(a, b, c)
    if pdu_type == A_RELEASE_RQ_TYPE:
        return A_RELEASE_RQ()
    if pdu_type == A_RELEASE_RP_TYPE:
        return A_RELEASE_RP()
    return A_ABORT(b, c)


def _frame(pdu_type: int, body: bytes) -> bytes:
    return PDU_HEADER.pack(pdu_type, len(body)) + body


def encode_pdu(pdu: PDU) -> bytes:
    """Encode a PDU value to bytes (PS3.8 9.3)."""
    if isinstance(pdu, A_ASSOCIATE_RQ | A_ASSOCIATE_AC):
        rq = isinstance(pdu, A_ASSOCIATE_RQ)
        body = bytearray(
            _ASSOC_FIXED.pack(
                pdu.protocol_version,
                _encode_ae(pdu.called_ae_title),
                _encode_ae(pdu.calling_ae_title),
            )
        )
        body += struct.pack(">BxH", APPLICATION_CONTEXT_ITEM, len(pdu.application_context_name))
        body += encode_uid(pdu.application_context_name)
        for ctx in pdu.presentation_contexts:
            if rq:
                assert isinstance(ctx, PresentationContextRQ)
                body += encode_presentation_context_rq(ctx)
            else:
                assert isinstance(ctx, PresentationContextAC)
                body += encode_presentation_context_ac(ctx)
        body += encode_user_information(pdu.user_information)
        return _frame(A_ASSOCIATE_RQ_TYPE if rq else A_ASSOCIATE_AC_TYPE, bytes(body))
    if isinstance(pdu, P_DATA_TF):
        parts = [
            PDV_HEADER.pack(len(value) + 2, ctx_id, mch) + bytes(value)
            for ctx_id, mch, value in pdu.pdvs
        ]
        return _frame(P_DATA_TF_TYPE, b"".join(parts))
    if isinstance(pdu, A_ASSOCIATE_RJ):
        return _frame(A_ASSOCIATE_RJ_TYPE, bytes((0, pdu.result, pdu.source, pdu.reason)))
    if isinstance(pdu, A_RELEASE_RQ):
        return _frame(A_RELEASE_RQ_TYPE, bytes(4))
    if isinstance(pdu, A_RELEASE_RP):
        return _frame(A_RELEASE_RP_TYPE, bytes(4))
    return _frame(A_ABORT_TYPE, bytes((0, 0, pdu.source, pdu.reason)))


def encode_pdata_header(ctx_id: int, mch: int, value_length: int) -> bytes:
    """Header of a P-DATA-TF PDU carrying a single PDV of ``value_length`` bytes."""
    return PDATA_ONE_PDV_HEADER.pack(
        P_DATA_TF_TYPE, value_length + PDV_HEADER_LENGTH, value_length + 2, ctx_id, mch
    )
