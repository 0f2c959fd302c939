"""DIMSE command set codec (PS3.7 6.3.1, E.1)."""

from __future__ import annotations

import pytest
from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from dicomvault.net import commands as c
from dicomvault.net.errors import CommandDecodeError


def _pydicom_command() -> bytes:
    ds = Dataset()
    ds.CommandGroupLength = 0
    ds.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.CommandField = 0x0001
    ds.MessageID = 7
    ds.Priority = 0
    ds.CommandDataSetType = 0x0000
    ds.AffectedSOPInstanceUID = "1.2.3.4.5"
    ds.MoveOriginatorApplicationEntityTitle = "MOVER"
    ds.MoveOriginatorMessageID = 3
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = True
    write_dataset(fp, ds)
    raw = bytearray(fp.getvalue())
    raw[8:12] = (len(raw) - 12).to_bytes(4, "little")
    return bytes(raw)


def test_decode_pydicom_encoded() -> None:
    command = c.decode_command(_pydicom_command())
    assert command[c.CommandField] == c.C_STORE_RQ
    assert command[c.MessageID] == 7
    assert command[c.AffectedSOPInstanceUID] == "1.2.3.4.5"
    assert command[c.MoveOriginatorApplicationEntityTitle] == "MOVER"
    assert command[c.MoveOriginatorMessageID] == 3
    assert c.has_data_set(command)


def test_encode_matches_pydicom() -> None:
    command = c.decode_command(_pydicom_command())
    assert c.encode_command(command) == _pydicom_command()


def test_round_trip_response_with_comment() -> None:
    response: c.CommandSet = {
        c.CommandField: c.C_STORE_RSP,
        c.MessageIDBeingRespondedTo: 1,
        c.CommandDataSetType: c.NO_DATA_SET,
        c.Status: 0xA900,
        c.ErrorComment: "odd",
        c.AffectedSOPInstanceUID: "1.2.3",
    }
    raw = c.encode_command(response)
    assert len(raw) % 2 == 0
    decoded = c.decode_command(raw)
    assert decoded[c.Status] == 0xA900
    assert decoded[c.ErrorComment] == "odd"
    assert decoded[c.AffectedSOPInstanceUID] == "1.2.3"
    assert not c.has_data_set(decoded)
    assert decoded[c.CommandGroupLength] == len(raw) - 12


@pytest.mark.parametrize(
    "raw",
    [
        b"\x00\x00",  # truncated header
        b"\x08\x00\x10\x00\x02\x00\x00\x00ab",  # not group 0000
        b"\x00\x00\x00\x01\x04\x00\x00\x00\x01\x00",  # US of length 4... runs past
        b"\x00\x00\x00\x01\x04\x00\x00\x00\x01\x00\x00\x00",  # US with length 4
        b"\x00\x00\x10\x01\x02\x00\x00\x00\x01\x00",  # no Command Field
        b"\x00\x00\x00\x01\xff\xff\xff\xff",  # length past the end
    ],
)
def test_malformed(raw: bytes) -> None:
    with pytest.raises(CommandDecodeError):
        c.decode_command(raw)
