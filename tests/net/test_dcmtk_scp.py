"""DCMTK echoscu/storescu against our acceptor with a file-writing handler (PS3.4 A, B)."""

from __future__ import annotations

import time
import zlib
from pathlib import Path

import pytest
from peers import (
    PYDICOM_TEST_FILES,
    FileStoreHandler,
    ServerThread,
    data_set_bytes,
    dcmtk,
    needs_dcmtk,
    sent_by_dcmtk,
    start_server,
    without_trailing_padding,
)

from dicomvault.net import AcceptorPolicy, ServiceRegistry

pytestmark = [needs_dcmtk]

CT = PYDICOM_TEST_FILES / "CT_small.dcm"
MR_BE = PYDICOM_TEST_FILES / "MR_small_bigendian.dcm"
JPEG8 = PYDICOM_TEST_FILES / "SC_rgb_jpeg_dcmtk.dcm"
RLE = PYDICOM_TEST_FILES / "MR_small_RLE.dcm"
DEFLATED = PYDICOM_TEST_FILES / "image_dfl.dcm"
JPEG_LOSSLESS = PYDICOM_TEST_FILES / "SC_rgb_jpeg_gdcm.dcm"


def test_echoscu(server: ServerThread) -> None:
    result = dcmtk("echoscu", "-aec", "DICOMVAULT", "127.0.0.1", server.port)
    assert result.returncode == 0, result.stderr


def test_echoscu_repeat_and_abort(server: ServerThread) -> None:
    result = dcmtk(
        "echoscu", "-aec", "DICOMVAULT", "--repeat", "20", "--abort", "127.0.0.1", server.port
    )
    assert result.returncode == 0, result.stderr


def test_storescu_streams_byte_identical(server: ServerThread, handler: FileStoreHandler) -> None:
    result = dcmtk("storescu", "-aec", "DICOMVAULT", "127.0.0.1", server.port, CT)
    assert result.returncode == 0, result.stderr
    (record,) = handler.received
    assert record.complete and not record.aborted
    assert record.path.read_bytes() == sent_by_dcmtk(CT)
    assert record.request.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"
    assert record.request.association.calling_ae_title == "STORESCU"


def test_storescu_small_pdu_many_fragments(server: ServerThread, handler: FileStoreHandler) -> None:
    result = dcmtk(
        "storescu", "-aec", "DICOMVAULT", "--max-pdu", "4096", "127.0.0.1", server.port, CT
    )
    assert result.returncode == 0, result.stderr
    (record,) = handler.received
    assert record.path.read_bytes() == sent_by_dcmtk(CT)
    # storescu's --max-pdu is what *it* receives; it still sends in our maximum, so
    # fragments are limited by our 256 KiB: one or a few writes.
    assert handler.sinks[0].chunks >= 1


def test_storescu_small_pdu_on_our_side(handler: FileStoreHandler, store_dir: Path) -> None:
    registry = ServiceRegistry()
    registry.add_store(handler)
    srv = start_server(registry, AcceptorPolicy(max_pdu=4096, artim_timeout=2))
    try:
        result = dcmtk("storescu", "-aec", "DICOMVAULT", "127.0.0.1", srv.port, CT)
    finally:
        srv.close()
    assert result.returncode == 0, result.stderr
    (record,) = handler.received
    assert record.path.read_bytes() == sent_by_dcmtk(CT)
    assert handler.sinks[0].chunks >= len(sent_by_dcmtk(CT)) // 4096


@pytest.mark.parametrize(
    ("path", "options", "syntax"),
    [
        (MR_BE, ["-xb"], "1.2.840.10008.1.2.2"),
        (JPEG8, ["-R", "--propose-jpeg8"], "1.2.840.10008.1.2.4.50"),
        (RLE, ["-R", "--propose-rle"], "1.2.840.10008.1.2.5"),
        (DEFLATED, ["-R", "--propose-deflated"], "1.2.840.10008.1.2.1.99"),
        (JPEG_LOSSLESS, ["-R", "--propose-lossless"], "1.2.840.10008.1.2.4.70"),
    ],
)
def test_storescu_own_transfer_syntax(
    server: ServerThread, handler: FileStoreHandler, path: Path, options: list[str], syntax: str
) -> None:
    result = dcmtk("storescu", "-aec", "DICOMVAULT", *options, "127.0.0.1", server.port, path)
    assert result.returncode == 0, result.stderr
    (record,) = handler.received
    assert record.request.transfer_syntax_uid == syntax
    if syntax == "1.2.840.10008.1.2.1.99":
        # DCMTK inflates and deflates again with its own settings: compare the inflated.
        inflated = zlib.decompress(record.path.read_bytes(), -15)
        assert inflated == without_trailing_padding(zlib.decompress(data_set_bytes(path), -15))
    else:
        assert record.path.read_bytes() == sent_by_dcmtk(path)


def test_storescu_repeat(server: ServerThread, handler: FileStoreHandler) -> None:
    result = dcmtk("storescu", "-aec", "DICOMVAULT", "--repeat", "50", "127.0.0.1", server.port, CT)
    assert result.returncode == 0, result.stderr
    assert len(handler.received) == 50
    assert all(r.complete for r in handler.received)


def test_called_ae_rejected(server: ServerThread) -> None:
    result = dcmtk("echoscu", "-aec", "SOMEONE", "127.0.0.1", server.port)
    assert result.returncode != 0
    assert "Called AE Title Not Recognized" in result.stderr or "Rejected" in result.stderr


def test_storescu_abort_discards_partial(server: ServerThread, handler: FileStoreHandler) -> None:
    result = dcmtk("storescu", "-aec", "DICOMVAULT", "--abort", "127.0.0.1", server.port, CT)
    assert result.returncode == 0, result.stderr
    # The instance was acknowledged before the abort: kept.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not handler.received:
        time.sleep(0.05)
    assert handler.received[0].complete
