"""Command sets of C-FIND/C-MOVE/C-GET responses (PS3.7 9.3.2.2, 9.3.3.2, 9.3.4.2), and
the cache that encodes a request's pending responses once.

A request's pending responses repeat their command set but for the sub-operation counts
(US, 2 bytes each): :class:`PendingCommands` keeps the encoding per shape (status, Error
Comment, whether an Identifier follows, which counts are present) and writes the counts
into a copy of it — a C-FIND with thousands of matches encodes one command set.
"""

from __future__ import annotations

import functools
import struct
from typing import Final

from dicomvault.net import commands as c
from dicomvault.net.handlers import Response
from dicomvault.net.messages import Incoming, truncate_comment

#: The sub-operation counts of a C-MOVE/C-GET response (PS3.7 9.3.3.2, 9.3.4.2).
COUNT_ELEMENTS: Final = (
    c.NumberOfRemainingSuboperations,
    c.NumberOfCompletedSuboperations,
    c.NumberOfFailedSuboperations,
    c.NumberOfWarningSuboperations,
)
_U16: Final = struct.Struct("<H")


def counts_of(response: Response) -> tuple[int | None, ...]:
    """The response's sub-operation counts, in :data:`COUNT_ELEMENTS` order."""
    return (response.remaining, response.completed, response.failed, response.warning)


def response_command(incoming: Incoming, response: Response) -> c.CommandSet:
    """The command set answering ``incoming`` with ``response``."""
    command: c.CommandSet = {
        c.CommandField: int(incoming.command[c.CommandField]) | c.RESPONSE_BIT,
        c.MessageIDBeingRespondedTo: incoming.message_id,
        c.CommandDataSetType: c.NO_DATA_SET if response.identifier is None else 0x0000,
        c.Status: response.status.status,
    }
    sop_class = incoming.command.get(c.AffectedSOPClassUID)
    if sop_class is not None:
        command[c.AffectedSOPClassUID] = sop_class
    for element, count in zip(COUNT_ELEMENTS, counts_of(response), strict=True):
        if count is not None:
            command[element] = min(count, 0xFFFF)
    if response.status.error_comment:
        command[c.ErrorComment] = truncate_comment(response.status.error_comment)
    return command


@functools.cache
def _us_header(element: int) -> bytes:
    """The implicit VR little endian header of a US element of group 0000."""
    return struct.pack("<HHI", 0, element, 2)


def _shape(response: Response) -> tuple[object, ...]:
    """What a pending response's encoded command set depends on (counts: only which)."""
    return (
        response.status.status,
        response.status.error_comment,
        response.identifier is None,
        *[count is None for count in counts_of(response)],
    )


class PendingCommands:
    """The encoded command sets of one request's pending responses, by shape."""

    __slots__ = ("_encoded",)

    def __init__(self) -> None:
        self._encoded: dict[tuple[object, ...], bytes] = {}

    def encoded(self, incoming: Incoming, response: Response) -> bytes:
        """``response``'s command set (answering ``incoming``), encoded: a cached
        encoding of its shape with its counts written in, or encoded now and kept."""
        shape = _shape(response)
        template = self._encoded.get(shape)
        if template is None:
            template = self._encoded[shape] = c.encode_command(response_command(incoming, response))
            return template
        counts = counts_of(response)
        if all(count is None for count in counts):
            return template
        patched = bytearray(template)
        for element, count in zip(COUNT_ELEMENTS, counts, strict=True):
            if count is not None:
                at = template.find(_us_header(element)) + 8
                _U16.pack_into(patched, at, min(count, 0xFFFF))
        return bytes(patched)
