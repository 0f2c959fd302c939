"""Sending DIMSE messages over an association (PS3.7 8.1; PS3.8 9.3.5, Annex E).

:class:`MessageSender` is the sending half of :class:`~dicomvault.net.association.Association`:
it encodes command sets, fragments messages into P-DATA-TF PDUs of the peer's maximum
length, and writes the pending responses of C-FIND/C-MOVE/C-GET that are produced back
to back in one transport write. The receiving half, the message-ID bookkeeping and the
services stay in :mod:`dicomvault.net.association`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from dicomvault.net import commands as c
from dicomvault.net.dul import UpperLayer
from dicomvault.net.handlers import AssociationInfo
from dicomvault.net.pdu import encode_pdata_header

__all__ = [
    "DEFAULT_SEND_PDU",
    "MCH_COMMAND",
    "MCH_LAST",
    "PENDING_BATCH_BYTES",
    "MessageSender",
]

#: Message control header bits (PS3.8 E.2): bit 0 command, bit 1 last fragment.
MCH_COMMAND = 0x01
MCH_LAST = 0x02
#: Outgoing PDVs when the peer sets no maximum (PS3.8 D.1: 0 means unlimited).
DEFAULT_SEND_PDU = 1 << 20
#: Pending C-FIND/C-MOVE/C-GET responses produced back to back are written together,
#: up to this many bytes per transport write (see :meth:`MessageSender._queue_pending`).
PENDING_BATCH_BYTES = 64 * 1024


class MessageSender(UpperLayer):
    """The sending half of an association: messages out, fragmented to the peer's
    maximum PDU length (PS3.8 9.3.5), pending responses batched.

    Parameters are those of :class:`~dicomvault.net.dul.UpperLayer`; ``info`` (the
    peer's maximum PDU length among it) is set by the association.
    """

    info: AssociationInfo

    def __init__(self, *, requestor: bool, max_pdu: int, artim_timeout: float) -> None:
        super().__init__(requestor=requestor, max_pdu=max_pdu, artim_timeout=artim_timeout)
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._batch_flush: asyncio.Handle | None = None

    @property
    def max_send_value(self) -> int:
        """Largest PDV value we may put in one P-DATA-TF PDU (peer maximum minus 6)."""
        peer = self.info.peer_max_pdu
        return (peer if peer else DEFAULT_SEND_PDU) - 6

    def send_message(
        self, ctx: int, command: c.CommandSet, data_set: bytes | memoryview | None = None
    ) -> None:
        """Encode and send a DIMSE message, fragmenting to the peer's maximum (PS3.7 8.1)."""
        if self._batch:
            self._flush_batch()
        raw = c.encode_command(command)
        self._send_fragments(ctx, memoryview(raw), MCH_COMMAND)
        if data_set is not None:
            self._send_fragments(ctx, memoryview(data_set), 0)

    def message_lead(self, ctx: int, command: c.CommandSet) -> bytes:
        """The PDUs of a message's command set, as one buffer, for a caller that sends
        the data set itself (net/sendfile.py).

        Unlike :meth:`send_message`, pending responses batched so far are left to go out
        after it (on the event loop's next turn): a C-GET's pending response for the
        previous sub-operation then follows the next sub-operation's C-STORE instead of
        delaying it. Pending responses only report progress (PS3.4 C.4.3.2); the
        requestor takes each message as it comes, and the final response still comes
        last."""
        raw = memoryview(c.encode_command(command))
        return b"".join(part for pdu in self._pdus(ctx, raw, MCH_COMMAND) for part in pdu)

    def _send_fragments(self, ctx: int, value: memoryview, mch: int) -> None:
        total = len(value)
        if total <= self.max_send_value:
            # One write per small PDU: a single segment on the wire.
            self.send(encode_pdata_header(ctx, mch | MCH_LAST, total) + value)
            return
        for pdu in self._pdus(ctx, value, mch):
            self.send_parts(pdu)

    def _pdus(self, ctx: int, value: memoryview, mch: int) -> Iterator[list[bytes | memoryview]]:
        """``value`` as P-DATA-TF PDUs of the peer's maximum length: (header, fragment)
        each, the last fragment flagged (PS3.8 E.2)."""
        limit = self.max_send_value
        total = len(value)
        pos = 0
        while pos < total:
            piece = value[pos : pos + limit]
            pos += len(piece)
            flags = mch | (MCH_LAST if pos >= total else 0)
            yield [encode_pdata_header(ctx, flags, len(piece)), piece]

    def _send_pending(self, ctx: int, command: bytes, data_set: bytes | None) -> None:
        """Send a pending response whose command set is already encoded."""
        if self.fsm.state not in ("Sta6", "Sta8"):
            return
        limit = self.max_send_value
        if len(command) > limit or (data_set is not None and len(data_set) > limit):
            self._flush_batch()
            self._send_fragments(ctx, memoryview(command), MCH_COMMAND)
            if data_set is not None:
                self._send_fragments(ctx, memoryview(data_set), 0)
            return
        parts = [encode_pdata_header(ctx, MCH_COMMAND | MCH_LAST, len(command)), command]
        if data_set is not None:
            parts += [encode_pdata_header(ctx, MCH_LAST, len(data_set)), data_set]
        self._queue_pending(b"".join(parts))

    def _queue_pending(self, pdus: bytes) -> None:
        """Queue complete P-DATA-TF PDUs of pending responses; they go out in one write
        when the batch is full or, at the latest, on the event loop's next iteration
        (as soon as the producer awaits), so batching adds no waiting of its own. Every
        other message flushes the batch first (:meth:`send_message`): order is kept."""
        self._batch.append(pdus)
        self._batch_bytes += len(pdus)
        if self._batch_bytes >= PENDING_BATCH_BYTES:
            self._flush_batch()
        elif self._batch_flush is None:
            self._batch_flush = self._loop.call_soon(self._flush_batch)

    def _flush_batch(self) -> None:
        if self._batch_flush is not None:
            self._batch_flush.cancel()
            self._batch_flush = None
        if not self._batch:
            return
        data = b"".join(self._batch)
        self._batch.clear()
        self._batch_bytes = 0
        if self.fsm.state in ("Sta6", "Sta8"):
            self.send(data)
