"""A bare pynetdicom Storage SCP: the baseline "Python DICOM receiver" for the benchmarks.

It does nothing but write each received data set, undecoded, in the DICOM file
format (``Event.encoded_dataset()``: preamble, file meta, received bytes) to
``OUT_DIR/<SOPInstanceUID>.dcm``.  Run as a separate process by
:mod:`bench.bench_dimse`::

    python -m bench.pynetdicom_scp --port 11112 --out DIR [--aet PYNETDICOM]
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import cast

from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]


def _handle_store(event: Event, out_dir: Path) -> int:
    """Write the received data set bytes to a file and return Success (0x0000)."""
    uid = cast(C_STORE, event.request).AffectedSOPInstanceUID
    with (out_dir / f"{uid}.dcm").open("wb") as fp:
        fp.write(event.encoded_dataset())
    return 0x0000


def main(argv: list[str] | None = None) -> int:
    """Serve on 127.0.0.1 until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m bench.pynetdicom_scp")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--aet", default="PYNETDICOM")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    ae = AE(ae_title=args.aet)
    ae.supported_contexts = AllStoragePresentationContexts
    ae.add_supported_context(Verification)
    server = ae.start_server(
        ("127.0.0.1", args.port),
        block=False,
        evt_handlers=[(evt.EVT_C_STORE, _handle_store, [args.out])],
    )

    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    stop.wait()
    if server is not None:
        server.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
