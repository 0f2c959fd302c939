"""DIMSE command sets (PS3.7 6.3.1, 9.3, 10.3, Annex E): group 0000, implicit VR little endian.

A command set is a ``dict`` from element number (the group is always 0000) to a value:
``int`` for US/UL, ``str`` for UI/AE/LO, ``bytes`` for AT and for elements we do not know.
:func:`encode_command` writes Command Group Length (0000,0000) itself.
"""

from __future__ import annotations

import struct
from typing import Final

from dicomvault.net.errors import CommandDecodeError

CommandSet = dict[int, int | str | bytes]

# Elements of group 0000 (PS3.7 Table E.1-1).
CommandGroupLength: Final = 0x0000
AffectedSOPClassUID: Final = 0x0002
RequestedSOPClassUID: Final = 0x0003
CommandField: Final = 0x0100
MessageID: Final = 0x0110
MessageIDBeingRespondedTo: Final = 0x0120
MoveDestination: Final = 0x0600
Priority: Final = 0x0700
CommandDataSetType: Final = 0x0800
Status: Final = 0x0900
OffendingElement: Final = 0x0901
ErrorComment: Final = 0x0902
ErrorID: Final = 0x0903
AffectedSOPInstanceUID: Final = 0x1000
RequestedSOPInstanceUID: Final = 0x1001
EventTypeID: Final = 0x1002
AttributeIdentifierList: Final = 0x1005
ActionTypeID: Final = 0x1008
NumberOfRemainingSuboperations: Final = 0x1020
NumberOfCompletedSuboperations: Final = 0x1021
NumberOfFailedSuboperations: Final = 0x1022
NumberOfWarningSuboperations: Final = 0x1023
MoveOriginatorApplicationEntityTitle: Final = 0x1030
MoveOriginatorMessageID: Final = 0x1031

# Command Field values (PS3.7 E.1).
C_STORE_RQ: Final = 0x0001
C_STORE_RSP: Final = 0x8001
C_GET_RQ: Final = 0x0010
C_GET_RSP: Final = 0x8010
C_FIND_RQ: Final = 0x0020
C_FIND_RSP: Final = 0x8020
C_MOVE_RQ: Final = 0x0021
C_MOVE_RSP: Final = 0x8021
C_ECHO_RQ: Final = 0x0030
C_ECHO_RSP: Final = 0x8030
N_EVENT_REPORT_RQ: Final = 0x0100
N_GET_RQ: Final = 0x0110
N_SET_RQ: Final = 0x0120
N_ACTION_RQ: Final = 0x0130
N_CREATE_RQ: Final = 0x0140
N_DELETE_RQ: Final = 0x0150
C_CANCEL_RQ: Final = 0x0FFF
#: A response's Command Field is the request's with this bit set.
RESPONSE_BIT: Final = 0x8000

#: Command Data Set Type (0000,0800) meaning "no data set" (PS3.7 E.1); any other value
#: means a data set follows.
NO_DATA_SET: Final = 0x0101

#: Priority (0000,0700) values.
PRIORITY_MEDIUM: Final = 0x0000

_US = frozenset(
    {
        CommandField,
        MessageID,
        MessageIDBeingRespondedTo,
        Priority,
        CommandDataSetType,
        Status,
        ErrorID,
        EventTypeID,
        ActionTypeID,
        NumberOfRemainingSuboperations,
        NumberOfCompletedSuboperations,
        NumberOfFailedSuboperations,
        NumberOfWarningSuboperations,
        MoveOriginatorMessageID,
    }
)
_UI = frozenset(
    {AffectedSOPClassUID, RequestedSOPClassUID, AffectedSOPInstanceUID, RequestedSOPInstanceUID}
)
_TEXT = frozenset({MoveDestination, ErrorComment, MoveOriginatorApplicationEntityTitle})

_ELEMENT_HEADER = struct.Struct("<HHI")
_US_ELEMENT = struct.Struct("<HHIH")
_UL_ELEMENT = struct.Struct("<HHII")
_U16 = struct.Struct("<H")


def decode_command(data: bytes | bytearray | memoryview) -> CommandSet:
    """Decode a command set (PS3.7 6.3.1) from its implicit VR little endian bytes.

    Raises
    ------
    CommandDecodeError
        An element outside group 0000, a value running past the end, or a US element
        whose length is not 2.
    """
    buf = memoryview(data)
    end = len(buf)
    pos = 0
    out: CommandSet = {}
    while pos < end:
        if pos + 8 > end:
            raise CommandDecodeError("truncated command element header")
        group, element, length = _ELEMENT_HEADER.unpack_from(buf, pos)
        pos += 8
        if group != 0:
            raise CommandDecodeError(f"element ({group:04X},{element:04X}) is not in group 0000")
        if pos + length > end:
            raise CommandDecodeError(f"element (0000,{element:04X}) runs past the command set")
        if element in _US:
            if length != 2:
                raise CommandDecodeError(f"US element (0000,{element:04X}) has length {length}")
            out[element] = _U16.unpack_from(buf, pos)[0]
        elif element == CommandGroupLength:
            if length != 4:
                raise CommandDecodeError("Command Group Length is not 4 bytes")
            out[element] = struct.unpack_from("<I", buf, pos)[0]
        elif element in _UI:
            out[element] = bytes(buf[pos : pos + length]).rstrip(b"\x00 ").decode("latin-1")
        elif element in _TEXT:
            out[element] = bytes(buf[pos : pos + length]).decode("latin-1").strip(" \x00")
        else:
            out[element] = bytes(buf[pos : pos + length])
        pos += length
    if CommandField not in out:
        raise CommandDecodeError("command set without Command Field (0000,0100)")
    return out


def encode_command(command: CommandSet) -> bytes:
    """Encode a command set, adding Command Group Length (0000,0000) (PS3.7 6.3.1).

    UIDs are padded with NUL and text with a space to even length (PS3.5 6.2).
    """
    parts: list[bytes] = []
    for element in sorted(command):
        if element == CommandGroupLength:
            continue
        value = command[element]
        if isinstance(value, int):
            if element in _US:
                parts.append(_US_ELEMENT.pack(0, element, 2, value))
            else:
                parts.append(_UL_ELEMENT.pack(0, element, 4, value))
            continue
        if isinstance(value, str):
            raw = value.encode("latin-1")
            if len(raw) & 1:
                raw += b"\x00" if element in _UI else b" "
        else:
            raw = value
        parts.append(_ELEMENT_HEADER.pack(0, element, len(raw)) + raw)
    body = b"".join(parts)
    return _UL_ELEMENT.pack(0, CommandGroupLength, 4, len(body)) + body


def has_data_set(command: CommandSet) -> bool:
    """Whether a data set follows the command (PS3.7 E.1, Command Data Set Type)."""
    return command.get(CommandDataSetType, NO_DATA_SET) != NO_DATA_SET
