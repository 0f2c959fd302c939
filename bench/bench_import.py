"""``dicomvault import`` throughput and memory (issue: the archive core).

Measures, each in a fresh data directory with SQLite and fsync on:

- 1,000 CT-like 512×512 16-bit instances (~0.5 MB each): instances/s, MB/s, peak RSS;
- 2,000 small (~10 KB) instances: the same;
- one ~1 GB multi-frame instance: peak RSS (memory must stay flat in instance size).

Targets: ≥ 300 instances/s for the CT set on 2 cores; peak RSS < 150 MB for the 1 GB
instance. Run: ``python -m bench.bench_import [--quick] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from bench.bench_memory import TreeSampler
from bench.datasets import cached
from bench.workdir import run_root

DICOMVAULT = str(Path(sys.executable).with_name("dicomvault"))


def run_import(files_dir: Path, *, workers: int | None = None) -> dict[str, float | int | str]:
    # A data directory in a block group of its own (bench/workdir.py): the previous
    # set's removed files must not slow this one's file creation.
    with run_root(files_dir.parent, "dv-bench-import-") as root:
        tmp = str(root / "data")
        cmd = [DICOMVAULT, "import", str(files_dir), "--data-dir", tmp, "--json"]
        if workers:
            cmd += ["--workers", str(workers)]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        with TreeSampler(proc.pid) as sampler:
            stdout, stderr = proc.communicate(timeout=3600)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"import failed ({proc.returncode}): {stderr.decode()[-2000:]}")
        report = json.loads(stdout)
        done = report["stored"] + report["duplicate"]
        seconds = float(report["seconds"])
        return {
            "instances": done,
            "seconds": round(seconds, 2),
            "wall_seconds": round(wall, 2),
            "instances_per_s": round(done / seconds, 1),
            "mb_per_s": round(report["bytes"] / 1e6 / seconds, 1),
            "peak_rss_mb": round(sampler.peak_rss / 1e6, 1),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10x smaller sets, 100 MB instance")
    parser.add_argument("--json", type=Path, help="write results here")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    scale = 10 if args.quick else 1
    sets = {
        f"CT 512x512 x{1000 // scale}": cached("ct", 1000 // scale),
        f"small 10 KB x{2000 // scale}": cached("small", 2000 // scale),
        f"multiframe {1024 // scale} MB x1": cached("multiframe", 1, size_bytes=(1 << 30) // scale),
    }
    results: dict[str, dict[str, float | int | str]] = {}
    print(
        f"dicomvault import benchmark — {platform.node()}, {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d')}"
    )
    print(f"{'set':<24}{'inst/s':>10}{'MB/s':>10}{'peak RSS MB':>14}{'seconds':>10}")
    for label, files in sets.items():
        res = run_import(files[0].parent, workers=args.workers)
        results[label] = res
        print(
            f"{label:<24}{res['instances_per_s']:>10}{res['mb_per_s']:>10}"
            f"{res['peak_rss_mb']:>14}{res['seconds']:>10}"
        )
    ct = next(v for k, v in results.items() if k.startswith("CT"))
    mf = next(v for k, v in results.items() if k.startswith("multiframe"))
    print(
        f"target CT ≥ 300 inst/s: {'met' if float(ct['instances_per_s']) >= 300 else 'NOT met'}; "
        f"target 1 GB peak RSS < 150 MB: {'met' if float(mf['peak_rss_mb']) < 150 else 'NOT met'}"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
