"""Tests for the instruction-count harness ``bench.bench_instructions``."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import bench_instructions, datasets
from bench.bench_instructions import Count, object_group, parse_annotation

ANNOTATION = """\
--------------------------------------------------------------------------------
Ir
--------------------------------------------------------------------------------
1,074,456,602 (100.0%)  PROGRAM TOTALS

--------------------------------------------------------------------------------
Ir                    file:function
--------------------------------------------------------------------------------
219,814,621 (20.46%)  ???:_PyEval_EvalFrameDefault'2 [/usr/bin/python3.11]
219,294,694 (20.41%)  ???:0x000000000029c680 [/usr/lib/x86_64-linux-gnu/libcrypto.so.3]
 48,822,715 ( 4.54%)  ???:_PyEval_EvalFrameDefault [/usr/bin/python3.11]
 33,918,064 ( 3.16%)  ./string/memmove.S:__memcpy_avx [/usr/lib/x86_64-linux-gnu/libc.so.6]
  3,682,996 ( 0.34%)  ???:uv__io_poll [/v/site-packages/uvloop/loop.cpython-311-x86_64-linux-gnu.so]
  8,235,327 ( 0.77%)  ???:sqlite3VdbeExec [/usr/lib/x86_64-linux-gnu/libsqlite3.so.0.8.6]
"""


def test_parse_annotation_sums_by_object() -> None:
    total, by_object = parse_annotation(ANNOTATION)
    assert total == 1_074_456_602
    assert by_object == {
        "python": 219_814_621 + 48_822_715,
        "libcrypto": 219_294_694,
        "libc": 33_918_064,
        "uvloop": 3_682_996,
        "libsqlite3": 8_235_327,
    }


def test_object_group_names() -> None:
    assert object_group("/usr/sbin/Orthanc") == "Orthanc"
    assert object_group("/usr/lib/x86_64-linux-gnu/libdcmdata.so.17.3.6.7") == "libdcmdata"
    assert object_group("/usr/lib/python3.11/lib-dynload/_json.cpython-311-x86_64.so") == "_json"


def test_count_figures_leave_out_libcrypto() -> None:
    count = Count("dicomvault", "small", 10, 10, 1000, {"python": 700, "libcrypto": 300})
    assert count.per_instance == 100
    assert count.per_instance_without_crypto == 70


@pytest.mark.skipif(
    not Path(bench_instructions.VALGRIND).exists() or not Path("/usr/bin/storescp").exists(),
    reason="Valgrind or DCMTK not installed (make tools)",
)
def test_storescp_counted_only_while_switched_on(tmp_path: Path) -> None:
    # storescp is the quickest receiver to start under Valgrind (about a second).
    paths = datasets.cached("small", 12, cache_root=tmp_path / "data")
    few = bench_instructions.measure("storescp", "small", paths[:5], 2, tmp_path / "a")
    more = bench_instructions.measure("storescp", "small", paths, 2, tmp_path / "b")
    assert (few.instances, few.stored) == (3, 5)
    assert (more.instances, more.stored) == (10, 12)
    assert few.by_object["libdcmdata"] > 0
    # Start-up and the warm-up are not counted: both counts are one association's
    # set-up and release plus the instances sent, so seven more instances cost seven
    # times what one does (storescp: ~0.5 million instructions; the association ~9).
    extra = (more.instructions - few.instructions) / 7
    assert 100_000 < extra < 5_000_000
    assert few.instructions < 30_000_000
