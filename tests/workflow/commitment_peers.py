"""pynetdicom as a Storage Commitment SCU (PS3.4 J.3) for the workflow tests: the
N-ACTION it sends, the N-EVENT-REPORTs it receives."""

from __future__ import annotations

import socket
import threading
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel

INSTANCE = "1.2.840.10008.1.20.1.1"


def action_info(refs: list[tuple[str, str]], transaction: str | None = None) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = transaction or generate_uid()
    items = []
    for sop_class, sop_instance in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    ds.ReferencedSOPSequence = items
    return ds


class Reports:
    """N-EVENT-REPORTs received by a pynetdicom peer (its EVT_N_EVENT_REPORT handler)."""

    def __init__(self) -> None:
        self.received: list[tuple[int, Dataset, str]] = []
        self.arrived = threading.Event()

    def handler(self, event: Any) -> tuple[int, None]:
        info = event.event_information
        self.received.append((int(event.request.EventTypeID), info, event.assoc.requestor.ae_title))
        self.arrived.set()
        return 0x0000, None

    def wait(self, seconds: float = 15.0) -> tuple[int, Dataset, str]:
        assert self.arrived.wait(seconds), "no N-EVENT-REPORT arrived"
        return self.received[0]


def scu() -> AE:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(StorageCommitmentPushModel)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    return ae


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request(port: int, info: Dataset, reports: Reports | None = None, keep: float = 0.0) -> int:
    """Send N-ACTION Request Storage Commitment; keep the association open ``keep`` s
    (or until the report arrives) when ``reports`` collects on it. Returns the status."""
    handlers = [(evt.EVT_N_EVENT_REPORT, reports.handler)] if reports else []
    assoc = scu().associate("127.0.0.1", port, ae_title="DICOMVAULT", evt_handlers=handlers)
    assert assoc.is_established
    try:
        status, _ = assoc.send_n_action(info, 1, StorageCommitmentPushModel, INSTANCE)
        if reports is not None and keep:
            reports.arrived.wait(keep)
    finally:
        assoc.release()
    return int(status.Status)
