"""Typed errors of the network engine (PS3.8 upper layer, PS3.7 DIMSE).

Every decoder in :mod:`dicomvault.net` raises only :class:`DecodeError` (or a subclass)
on malformed input, so a fuzzer or a raw-byte peer can never reach any other exception.
"""

from __future__ import annotations


class NetError(Exception):
    """Base class of every error :mod:`dicomvault.net` raises on purpose."""


class DecodeError(NetError, ValueError):
    """Bytes that do not form a valid PDU, item or command set.

    Attributes
    ----------
    abort_reason
        The A-ABORT reason/diagnostic (PS3.8 Table 9-26) an association should send:
        1 unrecognized PDU, 2 unexpected PDU, 4 unrecognized PDU parameter,
        5 unexpected PDU parameter, 6 invalid PDU parameter value.
    """

    def __init__(self, message: str, abort_reason: int = 6) -> None:
        super().__init__(message)
        self.abort_reason = abort_reason


class PDUTooLong(DecodeError):
    """A PDU announces a length above the maximum we advertised (PS3.8 D.1)."""


class CommandDecodeError(DecodeError):
    """A DIMSE command set (PS3.7 6.3.1, group 0000) is malformed."""


class ProtocolStateError(NetError):
    """A local primitive was issued in a state where PS3.8 Table 9-10 has no action."""


class AssociationRejected(NetError):
    """The acceptor answered A-ASSOCIATE-RJ (PS3.8 9.3.4).

    Attributes
    ----------
    result, source, reason
        The three fields of the A-ASSOCIATE-RJ PDU (PS3.8 Table 9-21).
    """

    def __init__(self, result: int, source: int, reason: int) -> None:
        super().__init__(f"association rejected: result {result}, source {source}, reason {reason}")
        self.result = result
        self.source = source
        self.reason = reason


class AssociationAborted(NetError):
    """The association ended by A-ABORT or lost transport before the operation ended."""


class NoPresentationContext(NetError):
    """No accepted presentation context fits the SOP class and transfer syntax."""
