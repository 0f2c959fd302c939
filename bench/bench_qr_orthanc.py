"""Query/Retrieve against Orthanc, like for like: C-FIND latency and C-GET throughput.

Both servers run as our own processes (private directories, free loopback ports, see
:mod:`bench.bench_dimse`) and receive the same files with ``/usr/bin/storescu``:

- a query set, :func:`bench.datasets.query_studies` (default 2,000 studies of one ~1 KB
  instance, 1,000 patients, StudyDate over 30 months, 8 modalities);
- one 50-instance CT study of 0.5 MB instances, :func:`bench.datasets.ct_series`.

C-FIND: ``/usr/bin/findscu -S`` (Study Root, STUDY level, return keys PatientName,
PatientID, StudyDate, AccessionNumber, ModalitiesInStudy, StudyInstanceUID), for each of
PatientID exact, PatientName ``ABCD*``, StudyDate one month, ModalitiesInStudy=CT with a
one-month range, AccessionNumber exact, and a universal query that both servers cap at
``--cap`` matches (dicomvault ``query.max_results``, Orthanc ``LimitFindResults``). Each
repetition runs the same query (random values from a fixed seed) against both servers,
alternating which goes first; median and p95 of the wall time of the whole findscu
process (association included). A verbose run per query first checks both servers
return the same number of matches.

C-GET: ``/usr/bin/getscu -S`` of the 50-instance study into a fresh directory, repeated
``--get-runs`` times alternating the servers; instances/s of the median run.

Orthanc: ``DicomAlwaysAllowFind`` / ``DicomAlwaysAllowGet`` so the unknown requestor may
query and retrieve, ``SyncStorageArea`` on, no plugins. Debian's 1.10.1.

Run: ``python -m bench.bench_qr_orthanc [--quick] [--studies N] [--runs R] [--json F]``.
Targets (issue "Query/Retrieve"): each query ≥ 2× faster than Orthanc, C-GET ≥ 1.5×
Orthanc's instances/s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import datasets
from bench.bench_dimse import (
    LOOPBACK,
    STORESCU,
    DicomVault,
    Orthanc,
    Receiver,
    _argv_chunks,
    _environment,
    free_port,
)

FINDSCU = "/usr/bin/findscu"
GETSCU = "/usr/bin/getscu"
RETURN_KEYS = ("PatientName", "PatientID", "StudyDate", "AccessionNumber", "ModalitiesInStudy")
QUERIES = ("patient-id", "name-prefix", "date-month", "ct-month", "accession", "universal-capped")
#: Upper bound for one storescu / findscu / getscu process.
_PROCESS_TIMEOUT = 600.0


class OrthancQR(Orthanc):
    """Orthanc allowing C-FIND and C-GET from any AE, universal queries capped."""

    def __init__(self, workdir: Path, port: int, cap: int) -> None:
        super().__init__(workdir, port)
        self.cap = cap

    def prepare(self) -> None:
        """Orthanc's configuration plus the Query/Retrieve permissions and the cap."""
        super().prepare()
        config = json.loads(self.config_path.read_text())
        config.update(
            {
                "DicomAlwaysAllowFind": True,
                "DicomAlwaysAllowGet": True,
                "DicomAlwaysAllowMove": True,
                "LimitFindResults": self.cap,
                "LimitFindInstances": 0,
            }
        )
        self.config_path.write_text(json.dumps(config, indent=2))


class DicomVaultQR(DicomVault):
    """``dicomvault serve`` with ``query.max_results`` set to the cap (a config file)."""

    def __init__(self, workdir: Path, port: int, cap: int) -> None:
        super().__init__(workdir, port)
        self.config_path = workdir / "dicomvault.toml"
        self.config_path.write_text(f"[query]\nmax_results = {cap}\n")

    def command(self) -> list[str]:
        """``dicomvault serve ... --config FILE``."""
        return [*super().command(), "--config", str(self.config_path)]


def store(receiver: Receiver, files: list[Path]) -> float:
    """C-STORE *files* (one association per argv chunk); seconds taken."""
    start = time.perf_counter()
    for chunk in _argv_chunks([str(p) for p in files]):
        done = subprocess.run(
            [STORESCU, "-aec", receiver.aet, LOOPBACK, str(receiver.port), *chunk],
            env=_environment(),
            capture_output=True,
            text=True,
            timeout=_PROCESS_TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"storescu to {receiver.name} failed: {done.stderr[-500:]}")
    return time.perf_counter() - start


def findscu(receiver: Receiver, keys: dict[str, str], *, verbose: bool) -> tuple[float, int]:
    """One findscu process; (milliseconds, matches counted when *verbose*)."""
    args = [FINDSCU, "-v" if verbose else "-q", "-S", "-aec", receiver.aet]
    args += [LOOPBACK, str(receiver.port), "-k", "QueryRetrieveLevel=STUDY"]
    args += ["-k", "StudyInstanceUID"]
    for keyword in RETURN_KEYS:
        args += ["-k", f"{keyword}={keys.get(keyword, '')}"]
    start = time.perf_counter()
    done = subprocess.run(
        args,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=_PROCESS_TIMEOUT,
        check=False,
    )
    elapsed = (time.perf_counter() - start) * 1000
    if done.returncode != 0:
        raise RuntimeError(f"findscu to {receiver.name} failed: {done.stderr[-500:]}")
    return elapsed, (done.stdout + done.stderr).count("(Pending)")


def getscu(
    receiver: Receiver, study_uid: str, out: Path, *, ignore: bool = False
) -> tuple[float, int]:
    """C-GET one study into an empty *out*; (seconds, files received). With *ignore*,
    getscu receives every instance and answers Success but writes nothing
    (``--ignore``, largest PDU): the pace is the server's; the count is then that of the
    ``Received`` lines of its log."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    args = [GETSCU, "-v" if ignore else "-q", "-S", "-aec", receiver.aet]
    args += [LOOPBACK, str(receiver.port)]
    args += ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}"]
    args += ["--ignore", "--max-pdu", "131072"] if ignore else ["-od", str(out)]
    start = time.perf_counter()
    done = subprocess.run(
        args, env=_environment(), capture_output=True, text=True, timeout=_PROCESS_TIMEOUT
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"getscu from {receiver.name} failed: {done.stderr[-500:]}")
    if ignore:
        return elapsed, (done.stdout + done.stderr).count("Received C-STORE Request")
    return elapsed, sum(1 for p in out.iterdir() if p.is_file())


def _month(rng: random.Random, months: int) -> str:
    month = rng.randrange(months)
    year, m = 2022 + month // 12, 1 + month % 12
    return f"{year}{m:02d}01-{year}{m:02d}31"


def query_makers(
    files: list[Path], months: int, seed: int = 11
) -> dict[str, Callable[[], dict[str, str]]]:
    """Random query values (from the stored files) per scenario; deterministic."""
    from pydicom import dcmread

    rng = random.Random(seed)
    sample = [dcmread(p, stop_before_pixels=True) for p in rng.sample(files, min(50, len(files)))]
    ids = [str(ds.PatientID) for ds in sample]
    prefixes = [str(ds.PatientName).split("^")[0][:4] for ds in sample]
    accessions = [str(ds.AccessionNumber) for ds in sample]
    return {
        "patient-id": lambda: {"PatientID": rng.choice(ids)},
        "name-prefix": lambda: {"PatientName": rng.choice(prefixes) + "*"},
        "date-month": lambda: {"StudyDate": _month(rng, months)},
        "ct-month": lambda: {"ModalitiesInStudy": "CT", "StudyDate": _month(rng, months)},
        "accession": lambda: {"AccessionNumber": rng.choice(accessions)},
        "universal-capped": lambda: {},
    }


def _figures(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "median_ms": round(statistics.median(ordered), 1),
        "p95_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))], 1),
    }


def measure_find(
    servers: list[Receiver], makers: dict[str, Callable[[], dict[str, str]]], runs: int
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in QUERIES:
        keys = makers[name]()
        counts = {s.name: findscu(s, keys, verbose=True)[1] for s in servers}
        times: dict[str, list[float]] = {s.name: [] for s in servers}
        for run in range(runs):
            keys = makers[name]()
            order = servers if run % 2 == 0 else servers[::-1]
            for server in order:
                times[server.name].append(findscu(server, keys, verbose=False)[0])
        out[name] = {"matches": counts, **{s: _figures(t) for s, t in times.items()}}
    return out


def _find_dataset(keys: dict[str, str]) -> Any:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    for keyword in RETURN_KEYS:
        setattr(ds, keyword, keys.get(keyword, ""))
    return ds


def measure_find_association(
    servers: list[Receiver], makers: dict[str, Callable[[], dict[str, str]]], runs: int
) -> dict[str, dict[str, Any]]:
    """The same queries from pynetdicom over one open association per server: the time
    from sending the C-FIND-RQ to the final response, without findscu's process start
    and association set-up (a like-for-like view of the servers' own work). The match
    counts reported are those of the last run (both servers get the same query)."""
    from pynetdicom import AE
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        StudyRootQueryRetrieveInformationModelFind as FIND,
    )

    ae = AE(ae_title="BENCHQR")
    ae.add_requested_context(FIND)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    associations = {}
    try:
        for server in servers:
            assoc = ae.associate(LOOPBACK, server.port, ae_title=server.aet)
            if not assoc.is_established:
                raise RuntimeError(f"pynetdicom could not associate with {server.name}")
            # pynetdicom leaves Nagle on: each request would wait ~40 ms for a delayed ACK.
            assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            associations[server.name] = assoc
        out: dict[str, dict[str, Any]] = {}
        lost: dict[str, int] = {}
        for name in QUERIES:
            times: dict[str, list[float]] = {s.name: [] for s in servers}
            counts: dict[str, int] = {}
            for run in range(runs):
                ds = _find_dataset(makers[name]())
                for server in servers if run % 2 == 0 else servers[::-1]:
                    start = time.perf_counter()
                    statuses = [
                        status for status, _ in associations[server.name].send_c_find(ds, FIND)
                    ]
                    elapsed = (time.perf_counter() - start) * 1000
                    if any(status is None or "Status" not in status for status in statuses):
                        # pynetdicom 3.0's requestor lost a response (its race, then its
                        # DIMSE timeout): not a figure of the server's.
                        lost[server.name] = lost.get(server.name, 0) + 1
                        continue
                    times[server.name].append(elapsed)
                    counts[server.name] = sum(s.Status in (0xFF00, 0xFF01) for s in statuses)
            out[name] = {"matches": counts, **{s: _figures(t) for s, t in times.items()}}
        if lost:
            print(f"pynetdicom lost a response (not counted): {lost}", file=sys.stderr)
        return out
    finally:
        for assoc in associations.values():
            assoc.release()
        ae.shutdown()


class _Discard:
    """A C-STORE sink that keeps nothing: the C-GET client measures the server's pace."""

    __slots__ = ("size",)

    def __init__(self) -> None:
        self.size = 0

    def write(self, chunk: memoryview) -> None:
        self.size += len(chunk)

    def finish(self) -> Any:
        from dicomvault.net import SUCCESS

        return SUCCESS

    def abort(self) -> None:
        self.size = 0


class _DiscardHandler:
    def __init__(self) -> None:
        self.bytes = 0

    def begin_store(self, request: Any) -> _Discard:
        return _Discard()


def _implicit_le(ds: Any) -> bytes:
    """``ds`` as Implicit VR Little Endian bytes (the only syntax proposed)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, True
    write_dataset(out, ds)
    return out.getvalue()


def _identifier(keys: dict[str, str]) -> bytes:
    return _implicit_le(_find_dataset(keys))


def _get_identifier(study_uid: str) -> bytes:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = study_uid
    return _implicit_le(ds)


def measure_engine_client(
    servers: list[Receiver],
    makers: dict[str, Callable[[], dict[str, str]]],
    runs: int,
    study_uid: str,
    expected: int,
    get_runs: int,
) -> dict[str, Any]:
    """C-FIND and C-GET from :mod:`dicomvault.net` over one open association per server.

    The client's own cost per response is a few µs (responses are counted, not decoded
    into data sets), so what is timed — C-FIND-RQ to final response, C-GET-RQ to final
    response with every C-STORE sub-operation answered Success and discarded — is the
    servers' work and the loopback, not the client's. Both servers get the same query
    bytes; the servers alternate which goes first. The client runs on uvloop when it is
    installed (as ``dicomvault serve`` does): on asyncio's own loop its reading of a
    0.5 MB C-STORE sub-operation cost ~0.45 ms of CPU against ~0.3 ms, and a C-GET
    sub-operation waits for the client's answer before the next can start, so the
    client's pace capped both servers alike.
    """
    import asyncio

    from dicomvault.net import ServiceRegistry, associate
    from dicomvault.net.items import RoleSelection

    find_uid = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Q/R FIND
    get_uid = "1.2.840.10008.5.1.4.1.2.2.3"  # Study Root Q/R GET
    ct_uid = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    implicit = ["1.2.840.10008.1.2"]
    explicit = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]

    async def main() -> dict[str, Any]:
        registry = ServiceRegistry()
        registry.add_store(_DiscardHandler(), sop_classes=[ct_uid])
        async with contextlib.AsyncExitStack() as stack:
            assocs = {}
            for server in servers:
                assocs[server.name] = await stack.enter_async_context(
                    associate(
                        LOOPBACK,
                        server.port,
                        called_ae=server.aet,
                        calling_ae="BENCHQR",
                        contexts=[(find_uid, implicit), (get_uid, implicit), (ct_uid, explicit)],
                        roles=[RoleSelection(ct_uid, False, True)],
                        registry=registry,
                        timeout=120,
                    )
                )
            find: dict[str, dict[str, Any]] = {}
            for name in QUERIES:
                times: dict[str, list[float]] = {s.name: [] for s in servers}
                counts: dict[str, int] = {}
                for run in range(runs + 2):  # two warm-up rounds, not counted
                    identifier = _identifier(makers[name]())
                    for server in servers if run % 2 == 0 else servers[::-1]:
                        start = time.perf_counter()
                        pending = 0
                        async for response in assocs[server.name].find(find_uid, identifier):
                            pending += response.status.status in (0xFF00, 0xFF01)
                        if run >= 2:
                            times[server.name].append((time.perf_counter() - start) * 1000)
                        counts[server.name] = pending
                find[name] = {"matches": counts, **{s: _figures(t) for s, t in times.items()}}
            get_identifier = _get_identifier(study_uid)
            seconds: dict[str, list[float]] = {s.name: [] for s in servers}
            for run in range(get_runs + 1):  # one warm-up round (page cache), not counted
                for server in servers if run % 2 == 0 else servers[::-1]:
                    start = time.perf_counter()
                    final = None
                    async for response in assocs[server.name].get(get_uid, get_identifier):
                        final = response
                    elapsed = time.perf_counter() - start
                    if final is None or final.completed != expected:
                        done = None if final is None else final.completed
                        raise RuntimeError(f"C-GET from {server.name}: {done} of {expected}")
                    if run >= 1:
                        seconds[server.name].append(elapsed)
            get = {
                name: {
                    "median_s": round(statistics.median(values), 4),
                    "instances_per_s": round(expected / statistics.median(values), 1),
                }
                for name, values in seconds.items()
            }
            return {"find": find, "get": get}

    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    result: dict[str, Any] = uvloop.run(main())
    return result


def measure_get(
    servers: list[Receiver],
    study_uid: str,
    expected: int,
    runs: int,
    work: Path,
    *,
    ignore: bool = False,
) -> dict[str, dict[str, float]]:
    seconds: dict[str, list[float]] = {s.name: [] for s in servers}
    for run in range(runs):
        for server in servers if run % 2 == 0 else servers[::-1]:
            elapsed, got = getscu(server, study_uid, work / f"get-{server.name}", ignore=ignore)
            if got != expected:
                raise RuntimeError(f"C-GET from {server.name}: {got} of {expected} instances")
            seconds[server.name].append(elapsed)
    return {
        name: {
            "median_s": round(statistics.median(values), 4),
            "instances_per_s": round(expected / statistics.median(values), 1),
        }
        for name, values in seconds.items()
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    query_files = datasets.cached("query", args.studies, months=args.months)
    ct_files = datasets.cached("ct", args.get_instances, seed=5)
    from pydicom import dcmread

    study_uid = str(dcmread(ct_files[0], stop_before_pixels=True).StudyInstanceUID)
    report: dict[str, Any] = {
        "studies": args.studies,
        "get_instances": args.get_instances,
        "runs": args.runs,
        "cap": args.cap,
    }
    with tempfile.TemporaryDirectory(prefix="dicomvault-bench-qr-") as tmp:
        work = Path(tmp)
        (work / "dv").mkdir()
        (work / "orthanc").mkdir()
        servers: list[Receiver] = [
            DicomVaultQR(work / "dv", free_port(), args.cap),
            OrthancQR(work / "orthanc", free_port(), args.cap),
        ]
        started: list[Receiver] = []
        try:
            for server in servers:
                server.start()
                started.append(server)
            report["load_s"] = {}
            for server in servers:
                report["load_s"][server.name] = round(
                    store(server, query_files) + store(server, ct_files), 1
                )
            makers = query_makers(query_files, args.months)
            report["find"] = measure_find(servers, makers, args.runs)
            report["find_association"] = measure_find_association(servers, makers, args.runs)
            report["get"] = measure_get(
                servers, study_uid, len(ct_files), args.get_runs, work / "get"
            )
            get_runs = max(args.get_runs, args.runs)
            report["get_ignore"] = measure_get(
                servers, study_uid, len(ct_files), get_runs, work / "get", ignore=True
            )
            engine = measure_engine_client(
                servers, makers, args.runs, study_uid, len(ct_files), get_runs
            )
            report["find_engine"], report["get_engine"] = engine["find"], engine["get"]
        finally:
            for server in reversed(started):
                server.stop()
    return report


def format_report(report: dict[str, Any]) -> str:
    lines: list[str] = []
    for section, title in (
        ("find", "findscu process wall time, association included"),
        ("find_association", "pynetdicom, one open association, C-FIND-RQ to final response"),
        ("find_engine", "dicomvault.net, one open association, C-FIND-RQ to final response"),
    ):
        lines += [
            f"C-FIND, {report['studies']} studies, {report['runs']} runs per query "
            f"({title}; ms; universal cap {report['cap']})",
            f"  {'query':18s} {'matches':>9s} {'dicomvault med/p95':>20s} "
            f"{'orthanc med/p95':>18s} {'ratio med':>10s} {'ratio p95':>10s}",
        ]
        for name, row in report[section].items():
            dv, orth = row["dicomvault"], row["orthanc"]
            matches = "/".join(str(row["matches"][k]) for k in ("dicomvault", "orthanc"))
            lines.append(
                f"  {name:18s} {matches:>9s} {dv['median_ms']:>9.1f} / {dv['p95_ms']:<8.1f} "
                f"{orth['median_ms']:>8.1f} / {orth['p95_ms']:<8.1f} "
                f"{orth['median_ms'] / dv['median_ms']:>9.2f}x "
                f"{orth['p95_ms'] / dv['p95_ms']:>9.2f}x"
            )
    for section, title in (
        ("get", "getscu -od DIR: writes each instance to a file"),
        ("get_ignore", "getscu --ignore --max-pdu 131072: receives, writes nothing"),
        ("get_engine", "dicomvault.net over one open association, discards"),
    ):
        get = report[section]
        lines.append(f"C-GET, one study of {report['get_instances']} x 0.5 MB CT ({title}; median)")
        for name, row in get.items():
            lines.append(
                f"  {name:12s} {row['median_s']:7.4f} s  {row['instances_per_s']:7.1f} instances/s"
            )
        ratio = get["dicomvault"]["instances_per_s"] / get["orthanc"]["instances_per_s"]
        lines.append(f"  dicomvault / orthanc: {ratio:.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="500 studies, 5 runs, 1 C-GET run")
    parser.add_argument("--studies", type=int, default=2000)
    parser.add_argument("--months", type=int, default=30)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--cap", type=int, default=100)
    parser.add_argument("--get-instances", type=int, default=50)
    parser.add_argument("--get-runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args, _unknown = parser.parse_known_args(argv)
    if args.quick:
        args.studies, args.runs, args.get_runs = 500, 5, 1
    report = run(args)
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
