"""PDU and item codec (PS3.8 9.3) on raw bytes; pynetdicom's wire fixtures as the oracle."""

from __future__ import annotations

import struct

import pynetdicom.tests.encoded_pdu_items as wire
import pytest

from dicomvault.net.errors import DecodeError, PDUTooLong
from dicomvault.net.items import (
    CommonExtendedNegotiation,
    PresentationContextAC,
    PresentationContextRQ,
    RoleSelection,
    UserIdentity,
    UserInformation,
)
from dicomvault.net.pdu import (
    A_ABORT,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    A_ASSOCIATE_RQ,
    A_RELEASE_RP,
    A_RELEASE_RQ,
    MAX_NEGOTIATION_PDU,
    P_DATA_TF,
    check_pdu_header,
    decode_pdata,
    decode_pdu,
    encode_pdata_header,
    encode_pdu,
)

FIXTURES = [
    "a_associate_rq",
    "a_associate_rq_user_async",
    "a_associate_rq_role",
    "a_associate_rq_user_id_user_pass",
    "a_associate_rq_user_id_ext_neg",
    "a_associate_rq_com_ext_neg",
    "a_associate_ac",
    "a_associate_ac_zero_ts",
    "a_associate_ac_no_ts",
    "a_associate_rj",
    "a_release_rq",
    "a_release_rp",
    "a_abort",
    "a_p_abort",
    "p_data_tf",
    "p_data_tf_rq",
]


@pytest.mark.parametrize("name", FIXTURES)
def test_decode_encode_decode(name: str) -> None:
    raw = getattr(wire, name)
    pdu = decode_pdu(raw)
    again = decode_pdu(encode_pdu(pdu))
    if isinstance(pdu, P_DATA_TF):
        assert isinstance(again, P_DATA_TF)
        assert [(c, m, bytes(v)) for c, m, v in pdu.pdvs] == [
            (c, m, bytes(v)) for c, m, v in again.pdvs
        ]
    else:
        assert again == pdu


def test_associate_rq_fields() -> None:
    pdu = decode_pdu(wire.a_associate_rq)
    assert isinstance(pdu, A_ASSOCIATE_RQ)
    assert (pdu.called_ae_title, pdu.calling_ae_title) == ("ANY-SCP", "ECHOSCU")
    (ctx,) = pdu.presentation_contexts
    assert (ctx.id, ctx.abstract_syntax, ctx.transfer_syntaxes) == (
        1,
        "1.2.840.10008.1.1",
        ["1.2.840.10008.1.2"],
    )
    assert pdu.user_information.max_length == 16382
    assert pdu.user_information.implementation_class_uid == "1.2.826.0.1.3680043.9.3811.0.9.0"
    assert encode_pdu(pdu) == wire.a_associate_rq  # byte for byte


def test_user_information_sub_items() -> None:
    async_rq = decode_pdu(wire.a_associate_rq_user_async)
    assert isinstance(async_rq, A_ASSOCIATE_RQ)
    assert async_rq.user_information.async_ops_window == (5, 5)
    role = decode_pdu(wire.a_associate_rq_role)
    assert isinstance(role, A_ASSOCIATE_RQ)
    assert role.user_information.roles == [
        RoleSelection("1.2.840.10008.5.1.4.1.1.2", scu_role=False, scp_role=True)
    ]
    ident = decode_pdu(wire.a_associate_rq_user_id_user_pass)
    assert isinstance(ident, A_ASSOCIATE_RQ)
    user = ident.user_information.user_identity
    assert user is not None
    assert (user.type, user.primary_field, user.secondary_field) == (2, b"pynetdicom", b"p4ssw0rd")
    ext = decode_pdu(wire.a_associate_rq_user_id_ext_neg)
    assert isinstance(ext, A_ASSOCIATE_RQ)
    assert ext.user_information.extended_negotiation["1.2.840.10008.5.1.4.1.1.2"] == (
        b"\x02\x00\x03\x00\x01\x00"
    )


def test_full_round_trip_of_every_sub_item() -> None:
    info = UserInformation(
        max_length=0,
        implementation_class_uid="1.2.3",
        implementation_version_name="X_1",
        async_ops_window=(3, 2),
        roles=[RoleSelection("1.2.840.10008.1.1", True, False)],
        extended_negotiation={"1.2.4": b"\x01"},
        common_extended_negotiation=[
            CommonExtendedNegotiation("1.2.5", "1.2.6", ["1.2.7", "1.2.8"])
        ],
        user_identity=UserIdentity(5, True, b"jwt", b""),
    )
    rq = A_ASSOCIATE_RQ(
        "CALLED", "CALLING", [PresentationContextRQ(1, "1.2.9", ["1.2.840.10008.1.2"])], info
    )
    assert decode_pdu(encode_pdu(rq)) == rq
    ac = A_ASSOCIATE_AC(
        "CALLED",
        "CALLING",
        [PresentationContextAC(1, 0, "1.2.840.10008.1.2"), PresentationContextAC(3, 3, "")],
        UserInformation(
            max_length=4096, implementation_class_uid="1.2", user_identity_response=b"ok"
        ),
    )
    assert decode_pdu(encode_pdu(ac)) == ac
    for pdu in (A_ASSOCIATE_RJ(2, 3, 2), A_RELEASE_RQ(), A_RELEASE_RP(), A_ABORT(2, 6)):
        assert decode_pdu(encode_pdu(pdu)) == pdu


def test_pdata_is_not_copied() -> None:
    value = bytes(range(200))
    raw = encode_pdata_header(1, 0x02, len(value)) + value
    pdu = decode_pdu(raw)
    assert isinstance(pdu, P_DATA_TF)
    ((ctx, mch, view),) = pdu.pdvs
    assert (ctx, mch) == (1, 2)
    assert isinstance(view, memoryview) and view.obj is not None and bytes(view) == value


def test_strict_length_checked_before_body() -> None:
    # Only the 6-byte header is given: the check happens before any body is read.
    header = struct.pack(">BxI", 0x04, 0xFFFFFFFF)
    with pytest.raises(PDUTooLong):
        check_pdu_header(*struct.unpack(">BxI", header), max_pdata_length=16384)
    with pytest.raises(PDUTooLong):
        check_pdu_header(0x04, 16385, 16384)
    check_pdu_header(0x04, 16384, 16384)
    with pytest.raises(PDUTooLong):
        check_pdu_header(0x01, MAX_NEGOTIATION_PDU + 1, 16384)
    with pytest.raises(DecodeError) as info:
        check_pdu_header(0x47, 10, 16384)  # "G" of "GET / HTTP/1.1"
    assert info.value.abort_reason == 1
    with pytest.raises(DecodeError):
        check_pdu_header(0x05, 5, 16384)


@pytest.mark.parametrize(
    "body",
    [
        b"\x00\x00\x00\x01\x01",  # PDV length 1 (< 2)
        b"\x00\x00\x00\x10\x01\x02abc",  # PDV longer than its PDU
        b"\x00\x00\x00",  # truncated PDV header
    ],
)
def test_bad_pdvs(body: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_pdata(memoryview(body))


@pytest.mark.parametrize(
    "raw",
    [
        b"\x01\x00\x00\x00\x00\x44" + bytes(68),  # RQ without application context
        b"\x01\x00\x00\x00\x00\x48" + bytes(68) + b"\x10\x00\x00\x10",  # item past the end
        b"\x03\x00\x00\x00\x00\x04\x00\x01",  # RJ body shorter than its length
        b"\x02\x00\x00\x00\x00\x4c" + bytes(68) + b"\x99\x00\x00\x00" + b"\x10\x00\x00\x00",
    ],
)
def test_malformed_pdus(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_pdu(raw)
