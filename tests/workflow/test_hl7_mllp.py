"""MLLP framing and the listener over a real socket (hl7/mllp.py, hl7/feed.py OrderFeed).

The feed here applies orders through a recording applier (the ``apply`` parameter of
:class:`OrderFeed`), so these tests are about framing, answering and connection handling;
tests/workflow/test_hl7_worklist.py drives the real worklist.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterator, Sequence

import pytest

from dicomvault.hl7.feed import OrderFeed
from dicomvault.hl7.message import Hl7Error
from dicomvault.hl7.mllp import Frame, MllpDecoder, MllpServer, Oversized, frame
from dicomvault.hl7.orm import Order
from tests.net.peers import ServerThread
from tests.workflow.hl7_fixtures import CR, FS, VT, MllpClient, fields_of, msh, orm

LIMIT = 8192


# --------------------------------------------------------------------------- decoder


def test_decoder_splits_blocks_across_and_within_chunks() -> None:
    decoder = MllpDecoder(LIMIT)
    stream = frame(b"one") + frame(b"two") + frame(b"three")
    events: list[Frame | Oversized] = []
    for i in range(0, len(stream), 3):  # worst case: blocks cut everywhere
        events += decoder.feed(stream[i : i + 3])
    assert events == [Frame(b"one"), Frame(b"two"), Frame(b"three")]
    assert (decoder.discarded, decoder.in_block) == (0, False)


def test_decoder_discards_garbage_and_tolerates_line_ends() -> None:
    decoder = MllpDecoder(LIMIT)
    events = decoder.feed(b"junk" + frame(b"a") + b"\r\n" + b"xy" + frame(b"b") + b"\n")
    assert events == [Frame(b"a"), Frame(b"b")]
    assert decoder.discarded == 6


def test_decoder_restart_abandons_partial_block() -> None:
    decoder = MllpDecoder(LIMIT)
    assert decoder.feed(VT + b"partial" + VT + b"whole" + FS + CR) == [Frame(b"whole")]
    assert decoder.abandoned == 1


def test_decoder_oversize_stops() -> None:
    decoder = MllpDecoder(16)
    events = decoder.feed(VT + b"MSH|" + b"x" * 20)
    assert events == [Oversized(b"MSH|" + b"x" * 20)]
    assert decoder.feed(frame(b"later")) == []


def test_decoder_in_block_tracks_an_unfinished_message() -> None:
    decoder = MllpDecoder(LIMIT)
    assert decoder.feed(VT + b"MSH|") == []
    assert decoder.in_block


# --------------------------------------------------------------------------- server


class Recorder:
    """Applier that remembers the orders of each message, and can be told to refuse."""

    def __init__(self) -> None:
        self.messages: list[list[Order]] = []
        self.refuse: str | None = None

    def __call__(self, orders: Sequence[Order]) -> str:
        if self.refuse is not None:
            raise Hl7Error(self.refuse)
        self.messages.append(list(orders))
        return f"{len(orders)} order(s)"


class Listener:
    def __init__(self, thread: ServerThread, recorder: Recorder) -> None:
        self.thread = thread
        self.recorder = recorder
        self.port = thread.port

    def client(self) -> MllpClient:
        return MllpClient(self.port)


def _start(recorder: Recorder, *, idle_timeout: float = 10.0) -> ServerThread:
    feed = OrderFeed(recorder, {"CT": "CT1"})

    async def run(sock: socket.socket, ready: asyncio.Event, stop: asyncio.Event) -> None:
        server = MllpServer(
            feed.handle,
            lambda head: feed.reject_oversize(head, LIMIT),
            max_message_bytes=LIMIT,
            idle_timeout=idle_timeout,
        )
        await server.start(sock=sock)
        ready.set()
        await server.serve_until(stop)

    return ServerThread(run).start()


@pytest.fixture
def listener() -> Iterator[Listener]:
    recorder = Recorder()
    thread = _start(recorder)
    try:
        yield Listener(thread, recorder)
    finally:
        thread.close()


def test_several_messages_on_one_connection(listener: Listener) -> None:
    client = listener.client()
    try:
        for n in range(3):
            ack = client.request(orm(control_id=f"C{n}"))
            assert ack["MSA"][1:3] == ["AA", f"C{n}"]
            assert ack["MSH"][9] == "ACK"
    finally:
        client.close()
    assert len(listener.recorder.messages) == 3


def test_pipelined_messages_are_answered_in_order(listener: Listener) -> None:
    client = listener.client()
    try:
        client.send_raw(b"".join(frame(orm(control_id=f"P{n}")) for n in range(5)))
        assert [fields_of(client.receive())["MSA"][2] for _ in range(5)] == [
            f"P{n}" for n in range(5)
        ]
    finally:
        client.close()


def test_broken_messages_are_answered_and_the_connection_goes_on(listener: Listener) -> None:
    client = listener.client()
    try:
        bad_encoding = client.request(orm(header=msh("E1", encoding="^~\\#")))
        assert bad_encoding["MSA"][1:3] == ["AR", "E1"]
        assert "MSH-2" in bad_encoding["MSA"][3]
        assert bad_encoding["ERR"][1].startswith("MSH^1^2^102")
        not_orm = client.request(orm(header=msh("E2", kind="ADT^A08")))
        assert not_orm["MSA"][1:3] == ["AR", "E2"]
        no_msh = client.request(b"PID|1||P1\r")
        assert no_msh["MSA"][1:3] == ["AR", ""]
        missing = client.request(orm(pid="PID|1||", control_id="E3"))
        assert missing["MSA"][1:3] == ["AE", "E3"]
        assert "PID-3" in missing["MSA"][3]
        assert client.request(orm(control_id="OK1"))["MSA"][1:3] == ["AA", "OK1"]
    finally:
        client.close()
    assert len(listener.recorder.messages) == 1


def test_applier_refusal_is_an_ae(listener: Listener) -> None:
    listener.recorder.refuse = "no such thing"
    client = listener.client()
    try:
        ack = client.request(orm(control_id="R1"))
    finally:
        client.close()
    assert ack["MSA"][1:4] == ["AE", "R1", "no such thing"]


def test_garbage_between_frames_is_skipped(
    listener: Listener, caplog: pytest.LogCaptureFixture
) -> None:
    client = listener.client()
    try:
        with caplog.at_level(logging.WARNING, logger="dicomvault.hl7"):
            client.send_raw(b"GET / HTTP/1.0\r\n\r\n" + frame(orm(control_id="G1")) + b"\xff\xfe")
            assert fields_of(client.receive())["MSA"][1:3] == ["AA", "G1"]
            assert client.request(orm(control_id="G2"))["MSA"][1:3] == ["AA", "G2"]
    finally:
        client.close()
    assert "bytes outside MLLP blocks discarded" in caplog.text


def test_oversized_message_is_refused_and_the_connection_closed(listener: Listener) -> None:
    client = listener.client()
    try:
        big = orm(control_id="BIG1") + b"NTE|1||" + b"x" * (LIMIT + 10) + b"\r"
        client.send(big)
        ack = fields_of(client.receive())
        assert ack["MSA"][1:3] == ["AR", "BIG1"]
        assert str(LIMIT) in ack["MSA"][3]
        assert client.closed_by_server()
    finally:
        client.close()
    assert listener.recorder.messages == []


def test_disconnect_mid_frame_applies_nothing(
    listener: Listener, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="dicomvault.hl7"):
        client = listener.client()
        client.send_raw(VT + orm(control_id="HALF")[:60])
        client.close()
        deadline = time.monotonic() + 5
        while "disconnected in the middle" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
    assert "disconnected in the middle" in caplog.text
    assert listener.recorder.messages == []
    # The listener still serves.
    client = listener.client()
    try:
        assert client.request(orm(control_id="AFTER"))["MSA"][1] == "AA"
    finally:
        client.close()


def test_log_line_names_peer_and_control_id(
    listener: Listener, caplog: pytest.LogCaptureFixture
) -> None:
    client = listener.client()
    try:
        with caplog.at_level(logging.INFO, logger="dicomvault.hl7"):
            client.request(orm(control_id="LOG-7"))
    finally:
        client.close()
    line = next(r.getMessage() for r in caplog.records if "LOG-7" in r.getMessage())
    assert "127.0.0.1:" in line
    assert "AA" in line


def test_idle_connection_is_closed() -> None:
    thread = _start(Recorder(), idle_timeout=0.3)
    try:
        client = MllpClient(thread.port)
        try:
            started = time.monotonic()
            assert client.closed_by_server()
            assert time.monotonic() - started < 3
        finally:
            client.close()
    finally:
        thread.close()


def test_stop_closes_open_connections() -> None:
    thread = _start(Recorder())
    client = MllpClient(thread.port)
    try:
        assert client.request(orm())["MSA"][1] == "AA"
        thread.close()
        assert client.closed_by_server()
    finally:
        client.close()
