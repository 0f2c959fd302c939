"""The disk's ceiling for durable stores: files written and ``fdatasync``'d, nothing else.

A receiver that answers Success only once the instance is on disk cannot be faster
than the disk allows for the same files written the same way. This measures that
bound for a data set: ``streams`` threads (one per association) each create a file,
write one of the data set's files into it, ``fdatasync`` it and close it, one file
after another, as Orthanc with ``SyncStorageArea`` does (its pattern; see
docs/benchmarks.md, "What fsync on means"). No parsing, no hashing, no index, no
directory ``fsync``: what is measured is the page-cache write, the writeback and the
device's flush, so the figure is an upper bound for any receiver with per-file
durability, ours included.

``bench_dimse`` runs it in every round beside the receivers and prints it under each
table. Alone::

    python -m bench.disk_floor ct --streams 4
    python -m bench.disk_floor small --streams 4 --count 2000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from bench import datasets
from bench.workdir import run_root


def durable_write_floor(paths: Sequence[Path], streams: int, directory: Path) -> float:
    """Files per second for ``paths`` written durably into ``directory`` by ``streams``
    threads (``os.write`` and ``os.fdatasync`` release the GIL, so the threads overlap
    as a C program's would). The files are left in ``directory``: removing thousands of
    files makes the next creations in their block group slower on ext4 without a
    journal (bench/workdir.py), so the caller removes them when the run is over."""
    if streams < 1:
        raise ValueError("streams must be at least 1")
    if not paths:
        return 0.0
    shares = [list(paths[k::streams]) for k in range(streams)]
    failures: list[BaseException] = []

    def write(stream: int, share: list[Path]) -> None:
        try:
            for number, source in enumerate(share):
                data = source.read_bytes()  # the page cache: the senders read it too
                fd = os.open(
                    directory / f"{stream}-{number}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644
                )
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
        except BaseException as exc:  # reported by the caller, not lost in a thread
            failures.append(exc)

    threads = [
        threading.Thread(target=write, args=(k, share), name=f"floor-{k}")
        for k, share in enumerate(shares)
        if share
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise failures[0]
    return len(paths) / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.disk_floor", description=__doc__)
    parser.add_argument("kind", choices=["ct", "small"], help="which generated data set")
    parser.add_argument("--count", type=int, default=None, help="files (default: 1000 / 2000)")
    parser.add_argument("--streams", type=int, default=4, help="parallel writers")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    count = args.count or (1000 if args.kind == "ct" else 2000)
    paths = datasets.cached(args.kind, count)
    with run_root(args.work_dir, "bench-floor-") as root:
        for _ in range(args.repeat):
            directory = Path(tempfile.mkdtemp(prefix="floor-", dir=root))
            rate = durable_write_floor(paths, args.streams, directory)
            print(f"{args.kind}: {len(paths)} files, {args.streams} streams: {rate:.1f}/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
