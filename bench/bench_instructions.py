"""Instructions per received instance: the receivers' CPU work, counted, not timed.

Each receiver runs under Valgrind's callgrind with counting off; once it answers C-ECHO
and has received a few warm-up instances, counting is switched on
(``callgrind_control -i on``), DCMTK ``storescu`` sends the measured instances over one
association, counting is switched off and the receiver is stopped. What is printed is
the instructions the receiver's process executed in user space (every thread) per
instance, by shared object; the association's set-up and release are in it, spread over
the instances (storescp: ~9 million instructions an association, ~0.5 million an
instance).

Why: on the 2-core development VMs the same receiver's instances/s moves by ±20 % within
minutes (docs/benchmarks.md), so a change worth 5–10 % of CPU cannot be seen in
``bench_dimse``. The count is the same to ±0.5 % from run to run whatever else the host
does (measured: 2,693,585 and 2,686,141 instructions per 10 KB instance, 200 and 400
instances). It is a measure of work, not of time: kernel time (system calls, page
cache, the device) is not in it, and instructions of different code take different
times. ``bench_dimse`` stays the measure of the issue's targets.

Under Valgrind, OpenSSL does not see the CPU's SHA extensions and hashes with its
generic code: the ``libcrypto`` share is several times what it is natively (two SHA-256
digests of 10 KB took ~17 µs natively here). The table shows the total without it too.

::

    python -m bench.bench_instructions                  # 200 x 10 KB, dicomvault and Orthanc
    python -m bench.bench_instructions --datasets small,ct --count 100
    python -m bench.bench_instructions --only dicomvault --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from bench import datasets
from bench.bench_dimse import (
    Receiver,
    ReceiverUnavailable,
    ensure_debian_package,
    make_receiver,
    send,
)
from bench.workdir import run_root

VALGRIND = "/usr/bin/valgrind"
CALLGRIND_CONTROL = "/usr/bin/callgrind_control"
CALLGRIND_ANNOTATE = "/usr/bin/callgrind_annotate"
RECEIVER_NAMES = ("dicomvault", "orthanc", "storescp")
#: A receiver under Valgrind starts ~20-50x slower (Python imports, Orthanc's plugins dir).
_STARTUP_TIMEOUT = 300.0
#: Writing the profile at exit takes a few seconds more than a normal stop.
_STOP_GRACE = 120.0
#: ``  1,074,456,602 (20.46%)  ???:func [/usr/lib/x86_64-linux-gnu/libcrypto.so.3]``
_LINE = re.compile(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+\S.*\[([^\]]+)\]\s*$")
_TOTAL = re.compile(r"^\s*([\d,]+)\s+\(100\.0+%\)\s+PROGRAM TOTALS")


class Counted(Receiver):
    """A receiver run under callgrind with counting off until :meth:`count` turns it on."""

    def __init__(self, inner: Receiver) -> None:
        self.name = inner.name  # type: ignore[misc]
        self.aet = inner.aet  # type: ignore[misc]
        self.startup_timeout = _STARTUP_TIMEOUT  # type: ignore[misc]
        super().__init__(inner.workdir, inner.port)
        self.inner = inner
        self.profile = inner.workdir / "callgrind.out"
        self.log_path = inner.workdir / f"{inner.name}-valgrind.log"

    def prepare(self) -> None:
        self.inner.prepare()

    def command(self) -> list[str]:
        return [
            VALGRIND,
            "--tool=callgrind",
            "--instr-atstart=no",
            "--trace-children=no",
            f"--callgrind-out-file={self.profile}",
            *self.inner.command(),
        ]

    def ready(self) -> bool:
        return self.inner.ready()

    def stored_count(self) -> int:
        return self.inner.stored_count()

    def count(self, on: bool) -> None:
        """Switch counting on or off in the running receiver."""
        subprocess.run(
            [CALLGRIND_CONTROL, "-i", "on" if on else "off", str(self.pid)],
            capture_output=True,
            timeout=60,
            check=True,
        )

    def stop(self) -> None:
        """SIGTERM to the receiver alone (not Valgrind's helpers), a long grace for the
        profile to be written, then :meth:`Receiver.stop`."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=_STOP_GRACE)
        super().stop()


@dataclass
class Count:
    """One receiver's instructions for one data set."""

    receiver: str
    dataset: str
    instances: int
    stored: int
    instructions: int
    by_object: dict[str, int]

    @property
    def per_instance(self) -> float:
        return self.instructions / self.instances

    @property
    def per_instance_without_crypto(self) -> float:
        return (self.instructions - self.by_object.get("libcrypto", 0)) / self.instances


def object_group(path: str) -> str:
    """A shared object's short name: ``libcrypto``, ``python``, ``uvloop`` …"""
    name = Path(path).name
    if name.startswith("python"):
        return "python"
    if "uvloop" in path or name.startswith("loop.cpython"):
        return "uvloop"
    return name.split(".so")[0].split(".cpython")[0]


def read_profile(profile: Path) -> tuple[int, dict[str, int]]:
    """Total instructions and their split by shared object (``callgrind_annotate``)."""
    out = subprocess.run(
        [CALLGRIND_ANNOTATE, "--threshold=100", str(profile)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout
    return parse_annotation(out)


def parse_annotation(text: str) -> tuple[int, dict[str, int]]:
    """The program total and the per-object sums of ``callgrind_annotate``'s function
    lines (every function: ``--threshold=100``)."""
    total = 0
    by_object: dict[str, int] = {}
    for line in text.splitlines():
        if found := _TOTAL.match(line):
            total = int(found.group(1).replace(",", ""))
        elif found := _LINE.match(line):
            group = object_group(found.group(2))
            by_object[group] = by_object.get(group, 0) + int(found.group(1).replace(",", ""))
    return total, by_object


def measure(name: str, label: str, paths: Sequence[Path], warm: int, workdir: Path) -> Count:
    workdir.mkdir(parents=True)
    # storescp without --fork: forked children would not be counted.
    receiver = Counted(make_receiver(name, workdir, storescp_fork=False))
    receiver.start()
    try:
        if warm:
            _, errors = send(paths[:warm], receiver.aet, receiver.port, 1, log_dir=workdir)
            if errors:
                raise ReceiverUnavailable(f"{name}: warm-up failed: {errors[0]}")
        measured = paths[warm:]
        receiver.count(True)
        _, errors = send(measured, receiver.aet, receiver.port, 1, log_dir=workdir)
        receiver.count(False)
        if errors:
            raise ReceiverUnavailable(f"{name}: sending failed: {errors[0]}")
        stored = receiver.stored_count()
    finally:
        receiver.stop()
    total, by_object = read_profile(receiver.profile)
    return Count(name, label, len(measured), stored, total, by_object)


def format_table(counts: Sequence[Count]) -> str:
    groups = ("python", "libsqlite3", "libcrypto", "libc", "uvloop")
    head = f"{'receiver':<11} {'set':<6} {'per inst':>11} {'w/o crypto':>11}  " + "  ".join(
        f"{g:>10}" for g in groups
    )
    rows = [head]
    for c in counts:
        split = "  ".join(f"{c.by_object.get(g, 0) / c.instances:>10,.0f}" for g in groups)
        rows.append(
            f"{c.receiver:<11} {c.dataset:<6} {c.per_instance:>11,.0f} "
            f"{c.per_instance_without_crypto:>11,.0f}  {split}"
        )
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="dicomvault,orthanc", help="receivers, comma-separated")
    parser.add_argument("--datasets", default="small", help="small and/or ct, comma-separated")
    parser.add_argument("--count", type=int, default=200, help="instances counted per set")
    parser.add_argument("--warm", type=int, default=20, help="instances sent before counting")
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the counts here")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    if unknown := set(names) - set(RECEIVER_NAMES):
        parser.error(f"unknown receiver(s) {', '.join(sorted(unknown))}")
    ensure_debian_package(VALGRIND, "valgrind")
    ensure_debian_package("/usr/bin/storescu", "dcmtk")
    sets = {
        "small": lambda: datasets.cached("small", 2000),
        "ct": lambda: datasets.cached("ct", 1000),
    }
    counts: list[Count] = []
    failed = False
    with run_root(args.work_dir, "dicomvault-instr-") as root:
        for label in [s for s in args.datasets.split(",") if s]:
            if label not in sets:
                parser.error(f"unknown data set {label!r} (small, ct)")
            paths = sets[label]()[: args.warm + args.count]
            for name in names:
                print(f"{name}: {label}, {len(paths) - args.warm} instances ...", file=sys.stderr)
                try:
                    count = measure(name, label, paths, args.warm, root / f"{name}-{label}")
                except ReceiverUnavailable as exc:
                    print(f"  {exc}", file=sys.stderr)
                    failed = True
                    continue
                if count.stored < len(paths):
                    print(f"  stored {count.stored} of {len(paths)}", file=sys.stderr)
                    failed = True
                counts.append(count)
    print(format_table(counts))
    dv = {c.dataset: c for c in counts if c.receiver == "dicomvault"}
    for c in counts:
        if c.receiver != "dicomvault" and c.dataset in dv:
            mine = dv[c.dataset]
            print(
                f"  dicomvault / {c.receiver} ({c.dataset}): "
                f"x{mine.per_instance / c.per_instance:.2f} instructions per instance, "
                f"x{mine.per_instance_without_crypto / c.per_instance_without_crypto:.2f} "
                "without libcrypto"
            )
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(c) for c in counts], indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
