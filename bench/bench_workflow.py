"""Workflow services (issue "Workflow services"): how long the archive takes to commit
to a study, and how fast a modality's worklist query is answered.

1. Storage commitment: ``--instances`` CT instances of 0.5 MB stored (default 1,000),
   then one N-ACTION Request Storage Commitment for all of them from pynetdicom; the
   time to the N-EVENT-REPORT on the same association (every blob re-hashed) — compared
   with reading the same files with ``sha256sum`` (the floor: the disk and the hash).
2. Modality Worklist: ``--items`` scheduled items (default 10,000) over 30 days, 8
   modalities and 20 stations; the typical modality query (its station AE title, today,
   Modality) by pynetdicom C-FIND, median and p95 over ``--runs`` queries, consuming every
   match; and a patient's items by Patient ID.

Run: ``python -m bench.bench_workflow [--quick] [--instances N] [--items M] [--runs R]``.
No speed target in the issue; the figures go to docs/benchmarks.md ("Workflow").
"""

from __future__ import annotations

import argparse
import asyncio
import io
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel

from bench.datasets import ct_series
from dicomvault.archive import Archive, worklist
from dicomvault.config import load_settings
from dicomvault.dimse.server import serve_dicom
from dicomvault.net import associate
from dicomvault.net.uids import IMPLICIT_VR_LITTLE_ENDIAN, MODALITY_WORKLIST_FIND

MODALITIES = ("CT", "MR", "CR", "US", "DX", "MG", "PT", "NM")


class _Server:
    """The archive's DIMSE listener on 127.0.0.1 in a thread."""

    def __init__(self, archive: Archive) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.setblocking(False)
        self.port = int(self.sock.getsockname()[1])
        self.loop = asyncio.new_event_loop()
        self.stop = asyncio.Event()
        ready = threading.Event()

        async def main() -> None:
            up = asyncio.Event()
            task = asyncio.ensure_future(
                serve_dicom(archive, archive.settings, ready=up, stop=self.stop, sock=self.sock)
            )
            await up.wait()
            ready.set()
            await task

        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(main(),))
        self.thread.start()
        ready.wait(30)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)
        self.loop.close()
        self.sock.close()


def commitment(archive: Archive, port: int, files: list[Path]) -> dict[str, float]:
    refs = []
    for path in files:
        stored = archive.store_file(path)
        refs.append((stored.sop_class_uid, stored.sop_instance_uid))
    info = Dataset()
    info.TransactionUID = generate_uid()
    items = []
    for sop_class, sop_instance in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    info.ReferencedSOPSequence = items
    arrived = threading.Event()
    failed: list[int] = []

    def on_report(event: Any) -> tuple[int, None]:
        failed.append(len(event.event_information.get("FailedSOPSequence", [])))
        arrived.set()
        return 0, None

    ae = AE(ae_title="BENCH")
    ae.add_requested_context(StorageCommitmentPushModel)
    ae.dimse_timeout = ae.acse_timeout = ae.network_timeout = 600
    assoc = ae.associate(
        "127.0.0.1", port, ae_title="DICOMVAULT", evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)]
    )
    start = time.perf_counter()
    status, _ = assoc.send_n_action(info, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1")
    acked = time.perf_counter() - start
    if not arrived.wait(600):
        raise RuntimeError("no N-EVENT-REPORT in 600 s")
    reported = time.perf_counter() - start
    assoc.release()
    if status.Status != 0 or failed != [0]:
        raise RuntimeError(f"N-ACTION 0x{status.Status:04X}, failed {failed}")
    start = time.perf_counter()
    subprocess.run(["sha256sum", *map(str, files)], capture_output=True, check=True)
    floor = time.perf_counter() - start
    return {"n_action_ms": acked * 1000, "report_s": reported, "sha256sum_s": floor}


def fill_worklist(archive: Archive, items: int) -> None:
    day0 = time.time() - 15 * 86400
    for i in range(items):
        # 30 days, one after the other; today is day 15.
        date = time.strftime("%Y%m%d", time.localtime(day0 + (i * 30 // items) * 86400))
        worklist.add_item(
            archive,
            {
                "PatientID": f"P{i % (items // 3 + 1):07d}",
                "PatientName": f"Patient^{i}",
                "AccessionNumber": f"A{i:08d}",
                "ScheduledProcedureStepSequence": [
                    {
                        "Modality": MODALITIES[i % len(MODALITIES)],
                        "ScheduledStationAETitle": f"STATION{i % 20:02d}",
                        "ScheduledProcedureStepStartDate": date,
                        "ScheduledProcedureStepStartTime": f"{8 + i % 10:02d}0000",
                        "ScheduledProcedureStepID": f"S{i}",
                    }
                ],
            },
        )


def _encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    fp = DicomFileLike(buffer)
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_dataset(fp, ds)
    return buffer.getvalue()


def worklist_queries(port: int, runs: int) -> dict[str, dict[str, float]]:
    """Timed with our own SCU (dicomvault.net): pynetdicom's requestor adds ~45 ms of its
    own to every C-FIND on this machine, more than the query costs."""
    today = time.strftime("%Y%m%d")

    def station_query() -> Dataset:
        ds = Dataset()
        ds.PatientName = ""
        ds.PatientID = ""
        ds.AccessionNumber = ""
        step = Dataset()
        step.ScheduledStationAETitle = "STATION03"
        step.ScheduledProcedureStepStartDate = today
        step.Modality = MODALITIES[3]
        step.ScheduledProcedureStepID = ""
        ds.ScheduledProcedureStepSequence = [step]
        return ds

    def patient_query() -> Dataset:
        ds = Dataset()
        ds.PatientID = "P0000042"
        ds.AccessionNumber = ""
        ds.ScheduledProcedureStepSequence = [Dataset()]
        return ds

    async def measure() -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        async with associate(
            "127.0.0.1", port, called_ae="DICOMVAULT", calling_ae="STATION03",
            contexts=[(MODALITY_WORKLIST_FIND, [IMPLICIT_VR_LITTLE_ENDIAN])],
        ) as assoc:  # fmt: skip
            for name, make in (("station-today", station_query), ("patient-id", patient_query)):
                identifier = _encode(make())
                times, matches = [], 0
                for _ in range(runs):
                    start = time.perf_counter()
                    matches = 0
                    async for response in assoc.find(MODALITY_WORKLIST_FIND, identifier):
                        matches += response.pending
                    times.append((time.perf_counter() - start) * 1000)
                times.sort()
                out[name] = {
                    "matches": matches,
                    "median_ms": statistics.median(times),
                    "p95_ms": times[max(int(len(times) * 0.95) - 1, 0)],
                }
        return out

    return asyncio.run(measure())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 instances, 2,000 items")
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=30)
    args, _ = parser.parse_known_args(argv)
    if args.quick:
        args.instances, args.items = 200, 2000
    with tempfile.TemporaryDirectory(prefix="dicomvault-bench-workflow-") as tmp:
        files = ct_series(Path(tmp) / "ct", args.instances)
        settings = load_settings(None, {"storage": {"path": Path(tmp) / "data"}})
        with Archive.open(settings) as archive:
            server = _Server(archive)
            try:
                c = commitment(archive, server.port, files)
                print(
                    f"storage commitment of {args.instances} x 0.5 MB: N-ACTION answered in "
                    f"{c['n_action_ms']:.1f} ms, report after {c['report_s']:.2f} s "
                    f"({args.instances / c['report_s']:.0f} instances/s; sha256sum of the "
                    f"same files: {c['sha256sum_s']:.2f} s)"
                )
                start = time.perf_counter()
                fill_worklist(archive, args.items)
                print(f"worklist: {args.items} items added in {time.perf_counter() - start:.1f} s")
                for name, f in worklist_queries(server.port, args.runs).items():
                    print(
                        f"  C-FIND {name}: {f['matches']:.0f} matches, median "
                        f"{f['median_ms']:.1f} ms, p95 {f['p95_ms']:.1f} ms"
                    )
            finally:
                server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
