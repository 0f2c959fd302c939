"""Tests for the process-tree sampling helpers in ``bench.bench_memory``."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from bench.bench_memory import peak_rss_of, tree_cpu_seconds, tree_rss


def test_peak_rss_of_sees_a_large_allocation() -> None:
    code = "import time; b = bytearray(200_000_000); time.sleep(0.3)"
    returncode, peak, seconds = peak_rss_of([sys.executable, "-c", code])
    assert returncode == 0
    assert 190_000_000 < peak < 600_000_000
    assert seconds >= 0.3


def test_peak_rss_of_includes_children_and_returncode() -> None:
    child = "import time; b = bytearray(150_000_000); time.sleep(0.4)"
    parent = (
        f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}]); sys.exit(3)"
    )
    returncode, peak, _ = peak_rss_of([sys.executable, "-c", parent])
    assert returncode == 3
    assert peak > 150_000_000


def test_peak_rss_of_times_out() -> None:
    with pytest.raises(subprocess.TimeoutExpired):
        peak_rss_of([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)


def test_tree_cpu_counts_reaped_children() -> None:
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    parent = (
        f"import subprocess, sys, time; subprocess.run([sys.executable, '-c', {burn!r}]); "
        "time.sleep(30)"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent])
    try:
        root = psutil.Process(proc.pid)
        deadline = time.monotonic() + 20
        # Wait until the burning child has exited and been reaped by its parent.
        while time.monotonic() < deadline and (tree_cpu_seconds(proc.pid) < 0.3 or root.children()):
            time.sleep(0.05)
        assert not root.children()
        assert tree_cpu_seconds(proc.pid) >= 0.3
        assert tree_rss(proc.pid) > 0
    finally:
        proc.kill()
        proc.wait()


def test_tree_helpers_tolerate_missing_process() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert tree_rss(proc.pid) == 0
    assert tree_cpu_seconds(proc.pid) == 0.0
