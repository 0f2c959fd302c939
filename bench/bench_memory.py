"""Process-tree resource sampling: peak RSS and CPU seconds of a process and its descendants.

Used by :mod:`bench.bench_dimse` to watch receivers, and on its own for
"peak RSS while importing / receiving one 1 GB instance"::

    python -m bench.bench_memory -- .venv/bin/dicomvault import big.dcm

RSS is the sum over the live processes of the tree at each sample, so memory
shared between forked processes is counted once per process (an upper bound).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import psutil

__all__ = ["TreeSampler", "peak_rss_of", "tree_cpu_seconds", "tree_rss"]

DEFAULT_INTERVAL = 0.05


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_rss(pid: int) -> int:
    """Return the summed resident set size in bytes of ``pid`` and its live descendants."""
    total = 0
    for proc in _tree(pid):
        try:
            total += proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def tree_cpu_seconds(pid: int) -> float:
    """Return user+system CPU seconds of ``pid``'s tree, including reaped children.

    Each live process contributes its own time plus the time of the children it
    has already waited for, so a forked worker is counted while it runs and,
    once reaped, through its parent: snapshots taken before and after a run
    give the tree's CPU use in between.
    """
    total = 0.0
    for proc in _tree(pid):
        try:
            t = proc.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


class TreeSampler:
    """Background thread sampling the RSS of a process tree; use as a context manager.

    ``peak_rss`` holds the largest summed RSS seen while the sampler ran.
    """

    def __init__(self, pid: int, interval: float = DEFAULT_INTERVAL) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)

    def _run(self) -> None:
        while True:
            self.peak_rss = max(self.peak_rss, tree_rss(self.pid))
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        # One last sample: short runs may finish between two ticks.
        self.peak_rss = max(self.peak_rss, tree_rss(self.pid))


def peak_rss_of(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 3600.0,
    interval: float = DEFAULT_INTERVAL,
) -> tuple[int, int, float]:
    """Run ``cmd`` and return ``(returncode, peak_rss_bytes, seconds)`` for its process tree.

    The RSS of the process and all its descendants is sampled every
    ``interval`` seconds.  On timeout the command is killed and
    :class:`subprocess.TimeoutExpired` is raised.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(
        list(cmd),
        env=None if env is None else dict(env),
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with TreeSampler(proc.pid, interval) as sampler:
            returncode = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return returncode, sampler.peak_rss, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m bench.bench_memory [--timeout S] -- CMD ARGS...``."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_memory",
        description="Run a command and report the peak RSS of its process tree.",
    )
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("no command given")
    returncode, peak, seconds = peak_rss_of(cmd, timeout=args.timeout)
    print(f"exit {returncode}  peak RSS {peak / 2**20:.1f} MiB  {seconds:.2f} s", file=sys.stderr)
    return returncode


if __name__ == "__main__":
    raise SystemExit(main())
