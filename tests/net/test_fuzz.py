"""Fuzzing the decoders and the incremental parser: only typed decode errors, never a crash.

Bounded in time: a fixed number of examples each, no deadline flakiness.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from peers import ASSOCIATE, FakeTransport, FileStoreHandler

from dicomvault.net import AcceptorPolicy, ServiceRegistry
from dicomvault.net import commands as c
from dicomvault.net.acceptor import AcceptorAssociation, ServerState
from dicomvault.net.errors import DecodeError
from dicomvault.net.pdu import decode_pdu, encode_pdata_header

FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

pdu_types = st.sampled_from([1, 2, 3, 4, 5, 6, 7, 0, 8, 0x47, 0xFF])


@st.composite
def framed_pdus(draw: Any) -> bytes:
    """Bytes that look like a PDU: a plausible header and a random (maybe lying) body."""
    body = draw(st.binary(max_size=600))
    pdu_type = draw(pdu_types)
    length = draw(st.one_of(st.just(len(body)), st.integers(0, 0xFFFFFFFF)))
    return struct.pack(">BxI", pdu_type, length) + body


@FUZZ
@given(st.one_of(st.binary(max_size=800), framed_pdus()))
def test_decode_pdu_only_raises_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_pdu(data, 16384)


@FUZZ
@given(st.binary(max_size=400))
def test_decode_command_only_raises_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        c.decode_command(data)


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.integers(0, 0xFFFF),
            st.integers(0, 0xFFFF),
            st.binary(max_size=40),
        ),
        max_size=12,
    )
)
def test_decode_command_elements(elements: list[tuple[int, int, bytes]]) -> None:
    raw = b"".join(struct.pack("<HHI", (g & 1 and 0) or 0, e, len(v)) + v for g, e, v in elements)
    with contextlib.suppress(DecodeError):
        c.decode_command(raw)


def _feed(chunks: list[bytes], handler: FileStoreHandler, associate: bool) -> FakeTransport:
    async def run() -> FakeTransport:
        registry = ServiceRegistry()
        registry.add_verification()
        registry.add_store(handler)
        import logging

        state = ServerState(AcceptorPolicy(artim_timeout=30), registry, logging.getLogger("fuzz"))
        protocol = AcceptorAssociation(state)
        transport = FakeTransport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        if associate:
            protocol.data_received(ASSOCIATE)
            assert protocol.fsm.state == "Sta6"
        for chunk in chunks:
            if transport.closed:
                break
            protocol.data_received(chunk)  # must never raise
        protocol.connection_lost(None)
        assert protocol.fsm.state == "Sta1"
        return transport

    return asyncio.run(run())


@FUZZ
@given(st.lists(st.one_of(st.binary(max_size=300), framed_pdus()), max_size=6))
def test_stream_parser_before_association(tmp_path_factory: Any, chunks: list[bytes]) -> None:
    _feed(chunks, FileStoreHandler(tmp_path_factory.mktemp("f")), associate=False)


@st.composite
def pdata_streams(draw: Any) -> list[bytes]:
    """Mostly-valid P-DATA: random PDVs on real contexts, random flags, random splits."""
    out = bytearray()
    for _ in range(draw(st.integers(1, 6))):
        value = draw(st.binary(max_size=120))
        if draw(st.booleans()):
            value = c.encode_command(
                {
                    c.AffectedSOPClassUID: "1.2.840.10008.5.1.4.1.1.2",
                    c.CommandField: draw(st.sampled_from([1, 0x30, 0x0FFF, 0x20, 0x8001])),
                    c.MessageID: draw(st.integers(0, 0xFFFF)),
                    c.CommandDataSetType: draw(st.sampled_from([0, 0x0101])),
                    c.AffectedSOPInstanceUID: "1.2.3",
                }
            )
        ctx = draw(st.sampled_from([1, 3, 5]))
        mch = draw(st.integers(0, 3))
        out += encode_pdata_header(ctx, mch, len(value)) + value
    cuts = sorted(draw(st.lists(st.integers(0, len(out)), max_size=5)))
    pieces = []
    last = 0
    for cut in [*cuts, len(out)]:
        pieces.append(bytes(out[last:cut]))
        last = cut
    return pieces


@FUZZ
@given(pdata_streams())
def test_stream_parser_in_sta6(tmp_path_factory: Any, chunks: list[bytes]) -> None:
    handler = FileStoreHandler(tmp_path_factory.mktemp("f"))
    _feed(chunks, handler, associate=True)
    for sink in handler.sinks:
        assert sink.fh.closed  # every begun instance was finished or aborted


@FUZZ
@given(st.binary(max_size=400))
def test_item_decoders_only_raise_decode_error(data: bytes) -> None:
    from dicomvault.net.items import (
        decode_presentation_context_ac,
        decode_presentation_context_rq,
        decode_user_information,
    )

    for decoder in (
        decode_user_information,
        decode_presentation_context_rq,
        decode_presentation_context_ac,
    ):
        with contextlib.suppress(DecodeError):
            decoder(memoryview(data))


@st.composite
def item_lists(draw: Any) -> bytes:
    """Well-framed sub-items with known types and random values."""
    out = bytearray()
    for _ in range(draw(st.integers(0, 6))):
        item_type = draw(
            st.sampled_from(
                [0x30, 0x40, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x99]
            )
        )
        value = draw(st.binary(max_size=40))
        out += struct.pack(">BxH", item_type, len(value)) + value
    return bytes(out)


@FUZZ
@given(item_lists(), st.binary(max_size=4))
def test_structured_items_only_raise_decode_error(items: bytes, prefix: bytes) -> None:
    from dicomvault.net.items import (
        decode_presentation_context_ac,
        decode_presentation_context_rq,
        decode_user_information,
    )

    with contextlib.suppress(DecodeError):
        decode_user_information(memoryview(items))
    head = (prefix + bytes(4))[:4]
    with contextlib.suppress(DecodeError):
        decode_presentation_context_rq(memoryview(head + items))
    with contextlib.suppress(DecodeError):
        decode_presentation_context_ac(memoryview(head + items))
