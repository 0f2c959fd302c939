"""The incremental parser on awkward splits: every byte on its own, and whole streams."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from peers import ASSOCIATE, FakeTransport, FileStoreHandler

from dicomvault.net import AcceptorPolicy, ServiceRegistry
from dicomvault.net import commands as c
from dicomvault.net.acceptor import AcceptorAssociation, ServerState
from dicomvault.net.pdu import A_RELEASE_RQ, decode_pdu, encode_pdata_header, encode_pdu

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def _store_stream(data_set: bytes, fragment: int) -> bytes:
    command = c.encode_command(
        {
            c.AffectedSOPClassUID: CT_STORAGE,
            c.CommandField: c.C_STORE_RQ,
            c.MessageID: 5,
            c.Priority: 0,
            c.CommandDataSetType: 0,
            c.AffectedSOPInstanceUID: "1.2.3.4",
        }
    )
    out = bytearray(ASSOCIATE)
    # The command in two fragments, then the data set in PDVs of `fragment` bytes.
    out += encode_pdata_header(3, 0x01, 10) + command[:10]
    out += encode_pdata_header(3, 0x03, len(command) - 10) + command[10:]
    for pos in range(0, len(data_set), fragment):
        piece = data_set[pos : pos + fragment]
        last = 0x02 if pos + fragment >= len(data_set) else 0x00
        out += encode_pdata_header(3, last, len(piece)) + piece
    out += encode_pdu(A_RELEASE_RQ())
    return bytes(out)


@pytest.mark.parametrize("split", [1, 7, 4096, 1 << 20])
def test_store_split_anywhere(tmp_path: Path, split: int) -> None:
    data_set = bytes(range(256)) * 40
    stream = _store_stream(data_set, 1000)
    handler = FileStoreHandler(tmp_path)

    async def run() -> FakeTransport:
        registry = ServiceRegistry()
        registry.add_store(handler)
        state = ServerState(AcceptorPolicy(), registry, logging.getLogger("test"))
        protocol = AcceptorAssociation(state)
        transport = FakeTransport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        for pos in range(0, len(stream), split):
            protocol.data_received(stream[pos : pos + split])
        assert protocol.fsm.state == "Sta13"  # released: A-RELEASE-RP sent, ARTIM running
        protocol.connection_lost(None)
        return transport

    transport = asyncio.run(run())
    (record,) = handler.received
    assert record.complete and record.path.read_bytes() == data_set
    assert record.request.message_id == 5 and record.request.sop_instance_uid == "1.2.3.4"
    written = bytes(transport.written)
    # A-ASSOCIATE-AC, one P-DATA-TF with the C-STORE-RSP, A-RELEASE-RP.
    length = int.from_bytes(written[2:6], "big")
    pos = 6 + length
    response = decode_pdu(
        written[pos : pos + 6 + int.from_bytes(written[pos + 2 : pos + 6], "big")]
    )
    (_, mch, value) = response.pdvs[0]  # type: ignore[union-attr]
    command = c.decode_command(value)
    assert mch == 0x03
    assert command[c.CommandField] == c.C_STORE_RSP and command[c.Status] == 0
    assert command[c.MessageIDBeingRespondedTo] == 5
    assert written.endswith(bytes.fromhex("060000000004 00000000"))
