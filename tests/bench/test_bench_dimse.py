"""Tests for the network ingest harness ``bench.bench_dimse``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench import bench_dimse
from bench.bench_dimse import DiskFloor, Result, Run

needs_dcmtk = pytest.mark.skipif(
    not Path(bench_dimse.STORESCU).exists(), reason="DCMTK storescu not installed"
)


def _result(receiver: str, seconds: float, cpu: float, stored: int = 10) -> Result:
    return Result(
        receiver=receiver,
        dataset="ct",
        instances=10,
        associations=4,
        total_bytes=5_000_000,
        seconds=seconds,
        cpu_seconds=cpu,
        peak_rss_bytes=50 * 2**20,
        stored=stored,
    )


def test_argv_chunks_respect_budget_and_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_dimse, "_MAX_ARGV_BYTES", 30)
    names = [f"file_{i:03d}.dcm" for i in range(7)]  # 12 characters + separator each
    chunks = bench_dimse._argv_chunks(names)
    assert [n for chunk in chunks for n in chunk] == names
    assert all(sum(len(n) + 1 for n in chunk) <= 30 for chunk in chunks)
    assert len(chunks) == 4


def test_free_ports_are_below_the_ephemeral_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No outgoing connection can take the port before the receiver binds it."""
    assert bench_dimse.free_port() < bench_dimse._ephemeral_low()
    ranges = tmp_path / "ip_local_port_range"
    ranges.write_text("30000\t60999\n")
    monkeypatch.setattr(bench_dimse, "_EPHEMERAL_RANGE", ranges)
    ports = {bench_dimse.free_port() for _ in range(20)}
    assert all(18_000 <= port < 30_000 for port in ports)
    ranges.write_text("1030 60999\n")  # a range starting low: the few ports below it
    assert 1024 <= bench_dimse.free_port() < 1030
    monkeypatch.setattr(bench_dimse, "_EPHEMERAL_RANGE", tmp_path / "absent")
    assert bench_dimse._ephemeral_low() == 32768  # Linux's default


def test_result_figures() -> None:
    result = _result("storescp", seconds=2.0, cpu=0.5)
    assert result.ok
    assert result.instances_per_second == 5.0
    assert result.mb_per_second == 2.5
    assert result.cpu_ms_per_instance == 50.0
    data = result.to_dict()
    assert data["ok"] is True
    assert data["instances_per_second"] == 5.0
    assert not _result("x", 1.0, 1.0, stored=9).ok


def test_report_has_ratios_and_unavailable() -> None:
    outcome = Run(
        labels={"ct": "10 x 0.5 MB CT, 4 assoc"},
        results=[_result("orthanc", 4.0, 1.0), _result("dicomvault", 2.0, 0.25)],
        unavailable={"pynetdicom": "exited"},
    )
    report = bench_dimse.format_report(outcome)
    assert "dicomvault / orthanc: throughput x2.00, CPU per instance x0.25" in report
    assert "page cache: kept between receivers" in report
    outcome.page_cache_dropped = True
    report = bench_dimse.format_report(outcome)
    assert "page cache: dropped before each receiver (bench/pagecache.py)" in report
    assert "pynetdicom: not available" in report


def test_report_has_the_disk_ceiling() -> None:
    outcome = Run(
        labels={"ct": "ct", "small": "small"},
        rounds=3,
        results=[_result("orthanc", 4.0, 1.0)],
        floors={"ct": DiskFloor(streams=4, rates=[700.0, 500.0, 650.0])},
    )
    report = bench_dimse.format_report(outcome)
    assert "the disk: 4 writers of these files, each fdatasync'd and nothing else" in report
    assert "at most 650/s\npage cache: kept" in report  # the median round; none for "small"
    assert DiskFloor(streams=1).median == 0.0


def test_report_notes_missing_rounds() -> None:
    outcome = Run(
        labels={"ct": "ct"},
        rounds=2,
        results=[
            _result("orthanc", 4.0, 1.0),
            _result("dicomvault", 2.0, 1.0),
            _result("orthanc", 4.0, 1.0),
        ],
        unavailable={"dicomvault": "Traceback\nSyntaxError: oops"},
    )
    report = bench_dimse.format_report(outcome)
    assert "(median of 2 rounds)" in report
    assert "(1 of 2 rounds)" in report
    assert "dicomvault: stopped being available during the run: SyntaxError: oops" in report


def test_report_without_dicomvault_has_no_ratios() -> None:
    outcome = Run(labels={"ct": "ct"}, results=[_result("orthanc", 4.0, 1.0)])
    report = bench_dimse.format_report(outcome)
    assert "orthanc" in report
    assert "dicomvault /" not in report
    assert not math.isnan(outcome.results[0].cpu_ms_per_instance)


def test_representative_takes_median_or_failure() -> None:
    rounds = [_result("orthanc", s, 1.0) for s in (1.0, 4.0, 2.0)]
    rounds += [_result("pynetdicom", 1.0, 1.0), _result("pynetdicom", 1.0, 1.0, stored=3)]
    chosen = bench_dimse.representative(rounds)
    assert [r.receiver for r in chosen] == ["orthanc", "pynetdicom"]
    assert chosen[0].seconds == 2.0
    assert not chosen[1].ok


def test_parse_args() -> None:
    args = bench_dimse.parse_args(["--quick", "--only", "orthanc,dicomvault"])
    assert (args.ct_count, args.small_count) == (100, 200)
    assert args.only == ["orthanc", "dicomvault"]
    assert args.datasets == ["ct", "small"]
    assert args.storescp_fork is True
    assert args.drop_page_cache is True
    assert bench_dimse.parse_args(["--keep-page-cache"]).drop_page_cache is False
    with pytest.raises(SystemExit):
        bench_dimse.parse_args(["--only", "nosuch"])
    with pytest.raises(SystemExit):
        bench_dimse.parse_args(["--repeat", "0"])


def test_unavailable_receiver_is_reported_not_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(bench_dimse, "_dicomvault_executable", lambda: "/bin/false")
    monkeypatch.setattr(bench_dimse, "ensure_debian_package", lambda binary, package: None)
    argv = ["--only", "dicomvault", "--datasets", "small", "--small-count", "2"]
    argv += ["--keep-page-cache"]  # a test leaves the machine's page cache alone
    argv += ["--cache-dir", str(tmp_path / "cache"), "--json", str(tmp_path / "r.json")]
    assert bench_dimse.main(argv) == 0
    assert "dicomvault: not available" in capsys.readouterr().out
    payload = json.loads((tmp_path / "r.json").read_text())
    assert payload["results"] == []
    assert "dicomvault" in payload["unavailable"]


@pytest.mark.dcmtk
@needs_dcmtk
def test_end_to_end_storescp_and_pynetdicom(tmp_path: Path) -> None:
    argv = ["--only", "storescp,pynetdicom", "--ct-count", "6", "--small-count", "5"]
    argv += ["--repeat", "2", "--keep-page-cache"]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--work-dir", str(tmp_path)]
    argv += ["--json", str(tmp_path / "r.json")]
    assert bench_dimse.main(argv) == 0
    results = json.loads((tmp_path / "r.json").read_text())["results"]
    assert sorted((r["receiver"], r["dataset"], r["round"]) for r in results) == sorted(
        (receiver, dataset, round_number)
        for receiver in ("storescp", "pynetdicom")
        for dataset in ("ct", "small")
        for round_number in (0, 1)
    )
    for r in results:
        assert r["ok"], r
        assert r["stored"] == r["instances"]
        assert r["instances_per_second"] > 0
        assert r["peak_rss_bytes"] > 0
    # The disk's ceiling, beside the receivers in every round: 4 writers for CT, 1 for
    # the 10 KB set (the default --small-assoc).
    floors = json.loads((tmp_path / "r.json").read_text())["disk_floors"]
    assert {name: floor["streams"] for name, floor in floors.items()} == {"ct": 4, "small": 1}
    assert all(len(floor["rates"]) == 2 and min(floor["rates"]) > 0 for floor in floors.values())
    # Receivers' temporary directories are removed afterwards.
    assert not list(tmp_path.glob("bench-*"))
    assert json.loads((tmp_path / "r.json").read_text())["page_cache_dropped"] is False


@pytest.mark.dcmtk
@needs_dcmtk
@pytest.mark.skipif(not Path(bench_dimse.ORTHANC).exists(), reason="Orthanc not installed")
def test_end_to_end_orthanc(tmp_path: Path) -> None:
    argv = ["--only", "orthanc", "--datasets", "small", "--small-count", "4"]
    argv += ["--keep-page-cache"]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--json", str(tmp_path / "r.json")]
    assert bench_dimse.main(argv) == 0
    (result,) = json.loads((tmp_path / "r.json").read_text())["results"]
    assert result["stored"] == 4
    assert result["ok"]
