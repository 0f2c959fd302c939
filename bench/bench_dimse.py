"""Network ingest benchmark: C-STORE throughput, CPU and memory of DICOM receivers.

The same synthetic data sets are sent with DCMTK ``storescu`` (``TCP_NODELAY=1``,
split over N parallel associations) to each receiver in turn, within one run so
that the ratios are comparable on a noisy machine:

``storescp``
    DCMTK's reference SCP writing files (``-od DIR``).  Run with ``--fork``
    (one process per association) by default, because the single-process mode
    serves associations one after the other and so cannot use the parallel
    associations at all; ``--storescp-mode single`` measures that mode.
    storescp does not fsync.
``orthanc``
    The Debian Orthanc (installed with apt-get when ``/usr/sbin/Orthanc`` is
    absent) as its own process with a private JSON configuration: own storage
    and SQLite index directories, ``SyncStorageArea`` (fsync) on, storage
    compression off, no plugins.  Its default 4 DICOM threads are kept.
``pynetdicom``
    :mod:`bench.pynetdicom_scp`, a bare pynetdicom 3 SCP that only writes the
    received bytes to files.
``dicomvault``
    ``dicomvault serve`` (AE title DICOMVAULT, default settings); skipped with
    "dicomvault: not available" when it does not answer C-ECHO within 20 s.

Each receiver gets a fresh temporary directory and free loopback ports, is
polled with ``echoscu`` until it accepts associations, and is stopped (its
whole process group) afterwards, also on errors.  Measured per receiver and
data set: wall-clock instances/s and MB/s from the start of the first
``storescu`` to the exit of the last, server CPU seconds (user+sys of the
server process tree, before/after), CPU ms per instance, peak RSS of the
server tree (sampled every 50 ms), and the number of instances the receiver
actually stored.

Usage::

    python -m bench.bench_dimse                     # 1000 x 0.5 MB over 4, 2000 x 10 KB over 1
    python -m bench.bench_dimse --quick             # 100 + 200 instances
    python -m bench.bench_dimse --only dicomvault,orthanc --json results.json
    python -m bench.bench_dimse --datasets large    # one 1 GiB instance: peak RSS
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, ClassVar, TypeVar

from bench import datasets
from bench.bench_memory import TreeSampler, tree_cpu_seconds
from bench.disk_floor import durable_write_floor
from bench.pagecache import settle
from bench.workdir import run_root

REPO_ROOT = Path(__file__).resolve().parent.parent
STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"
ECHOSCU = "/usr/bin/echoscu"
ORTHANC = "/usr/sbin/Orthanc"
LOOPBACK = "127.0.0.1"
RECEIVER_NAMES = ("storescp", "orthanc", "pynetdicom", "dicomvault")
DATASET_NAMES = ("ct", "small", "large")

#: Longest argv (bytes of file names) handed to one storescu invocation.
_MAX_ARGV_BYTES = 64 * 1024
#: Seconds a receiver may take to accept its first C-ECHO.
_DEFAULT_STARTUP_TIMEOUT = 60.0
#: Seconds to wait for the stored count to settle after the last storescu exited.
_COUNT_SETTLE_SECONDS = 5.0
_COUNT_MAX_WAIT_SECONDS = 60.0
#: Upper bound for sending one data set to one receiver.
_SEND_TIMEOUT_SECONDS = 1800.0


class ReceiverUnavailable(RuntimeError):
    """The receiver could not be installed or did not start."""


def _environment() -> dict[str, str]:
    """Environment for DCMTK-based processes: disable Nagle (Debian DCMTK leaves it on)."""
    return {**os.environ, "TCP_NODELAY": "1"}


#: Where the kernel picks outgoing connections' source ports (Linux's default range).
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _ephemeral_low() -> int:
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now, below the ephemeral range.

    A port the kernel hands out for listening (bind to port 0) comes from the range it
    also takes outgoing connections' source ports from: between this choice and the
    receiver's bind, a sender's or a C-ECHO poll's connection could take it (seen:
    "cannot listen on 127.0.0.1:39253 (http.port): Address already in use", which
    dropped dicomvault from the rest of a run). No connection is given a port below
    the range, so only another listener can take one there, and the bind check below
    sees those."""
    low = _ephemeral_low()
    below = range(max(1024, low - 12_000), low)
    candidates = random.Random().sample(below, min(200, len(below)))
    for port in candidates:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free TCP port below {low} on {LOOPBACK}")


def ensure_debian_package(binary: str, package: str) -> None:
    """Install ``package`` with apt-get when ``binary`` is missing (needs root)."""
    if Path(binary).exists():
        return
    if os.geteuid() != 0:
        raise ReceiverUnavailable(f"{binary} missing; run: apt-get install -y {package}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", package]
    print(f"installing {package} with apt-get ...", file=sys.stderr)
    if subprocess.run(install, env=env, timeout=900, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, timeout=900, check=False)
        subprocess.run(install, env=env, timeout=900, check=False)
    if not Path(binary).exists():
        raise ReceiverUnavailable(f"could not install {package} ({binary} still missing)")


def echo(aet: str, port: int, timeout: float = 5.0) -> bool:
    """Return whether ``aet`` at 127.0.0.1:``port`` answers a C-ECHO."""
    cmd = [ECHOSCU, "-aec", aet, "-to", "3", "-ta", "3", "-td", "3", LOOPBACK, str(port)]
    try:
        result = subprocess.run(
            cmd, env=_environment(), capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0


# --------------------------------------------------------------------------- receivers


class Receiver(ABC):
    """A DICOM receiver run as its own process group in a private directory."""

    name: ClassVar[str]
    aet: ClassVar[str]
    startup_timeout: ClassVar[float] = _DEFAULT_STARTUP_TIMEOUT

    def __init__(self, workdir: Path, port: int) -> None:
        self.workdir = workdir
        self.port = port
        self.storage = workdir / "storage"
        self.log_path = workdir / f"{self.name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @abstractmethod
    def command(self) -> list[str]:
        """Return the argv that starts the receiver."""

    @abstractmethod
    def stored_count(self) -> int:
        """Return the number of instances the receiver has stored."""

    def prepare(self) -> None:
        """Create the storage directory; subclasses also install or configure the receiver."""
        self.storage.mkdir(parents=True, exist_ok=True)

    @property
    def pid(self) -> int:
        """PID of the receiver's main process."""
        if self.process is None:
            raise RuntimeError(f"{self.name} not started")
        return self.process.pid

    def start(self) -> None:
        """Start the process and wait until it is :meth:`ready` (bounded)."""
        self.prepare()
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.command(),
            cwd=REPO_ROOT,
            env=_environment(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ReceiverUnavailable(
                    f"{self.name} exited with {self.process.returncode}: {self.log_tail()}"
                )
            if self.ready():
                return
            time.sleep(0.2)
        raise ReceiverUnavailable(f"{self.name} not ready within {self.startup_timeout} s")

    def ready(self) -> bool:
        """Whether the receiver accepts associations (answers C-ECHO)."""
        return echo(self.aet, self.port)

    def stop(self) -> None:
        """Stop the receiver's process group: SIGTERM, up to 10 s grace, then SIGKILL."""
        if self.process is not None:
            group = self.process.pid
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)  # the leader if stuck, and stray children
            self.process.wait(timeout=10)
        if self._log is not None:
            self._log.close()

    def log_tail(self, limit: int = 600) -> str:
        """Return the end of the receiver's log, for error messages."""
        try:
            return self.log_path.read_text(errors="replace")[-limit:].strip()
        except OSError:
            return ""

    def _count_files(self) -> int:
        return sum(1 for p in self.storage.rglob("*") if p.is_file())


class StoreScp(Receiver):
    """DCMTK storescp writing each instance to a file."""

    name = "storescp"
    aet = "STORESCP"

    def __init__(self, workdir: Path, port: int, *, fork: bool = True) -> None:
        super().__init__(workdir, port)
        self.fork = fork

    def prepare(self) -> None:
        """Install DCMTK if needed."""
        super().prepare()
        ensure_debian_package(STORESCP, "dcmtk")

    def command(self) -> list[str]:
        """``storescp [--fork] -aet STORESCP -od DIR PORT``."""
        fork = ["--fork"] if self.fork else []
        return [STORESCP, *fork, "-aet", self.aet, "-od", str(self.storage), str(self.port)]

    def stored_count(self) -> int:
        """Files written to the output directory."""
        return self._count_files()


class Orthanc(Receiver):
    """Orthanc with a private configuration (fsync on, no compression, no plugins)."""

    name = "orthanc"
    aet = "ORTHANC"

    def __init__(self, workdir: Path, port: int) -> None:
        super().__init__(workdir, port)
        self.http_port = free_port()
        self.config_path = workdir / "orthanc.json"

    def prepare(self) -> None:
        """Install Orthanc if needed and write its configuration file."""
        super().prepare()
        ensure_debian_package(ORTHANC, "orthanc")
        config = {
            "Name": "dicomvault-bench",
            "StorageDirectory": str(self.storage),
            "IndexDirectory": str(self.workdir / "index"),
            "StorageCompression": False,
            "SyncStorageArea": True,
            "Plugins": [],
            "LuaScripts": [],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomModalities": {},
            "OrthancPeers": {},
            "SaveJobs": False,
        }
        self.config_path.write_text(json.dumps(config, indent=2))

    def command(self) -> list[str]:
        """``Orthanc CONFIG``."""
        return [ORTHANC, str(self.config_path)]

    def _rest(self, path: str) -> dict[str, Any]:
        url = f"http://{LOOPBACK}:{self.http_port}{path}"
        with urllib.request.urlopen(url, timeout=10) as response:
            answer: dict[str, Any] = json.load(response)
            return answer

    def ready(self) -> bool:
        """C-ECHO answered and the REST API (used for counting) is up."""
        if not super().ready():
            return False
        try:
            self._rest("/system")
        except OSError:
            return False
        return True

    def stored_count(self) -> int:
        """``CountInstances`` from the REST ``/statistics``."""
        return int(self._rest("/statistics")["CountInstances"])


class PynetdicomScp(Receiver):
    """The bare pynetdicom SCP of :mod:`bench.pynetdicom_scp`."""

    name = "pynetdicom"
    aet = "PYNETDICOM"

    def command(self) -> list[str]:
        """``python -m bench.pynetdicom_scp --port P --out DIR``."""
        return [
            sys.executable,
            "-m",
            "bench.pynetdicom_scp",
            "--port",
            str(self.port),
            "--out",
            str(self.storage),
            "--aet",
            self.aet,
        ]

    def stored_count(self) -> int:
        """Files written to the output directory."""
        return self._count_files()


def _dicomvault_executable() -> str:
    candidate = Path(sys.executable).parent / "dicomvault"
    if candidate.exists():
        return str(candidate)
    return shutil.which("dicomvault") or "dicomvault"


class DicomVault(Receiver):
    """``dicomvault serve`` with its default settings (``DICOMVAULT_SERVER__WORKERS=auto``
    in the environment measures one process per CPU, which needs fixed ports: the HTTP
    port is a free one, not 0)."""

    name = "dicomvault"
    aet = "DICOMVAULT"
    startup_timeout = 20.0

    def command(self) -> list[str]:
        """``dicomvault serve --data-dir DIR --dicom-port P --http-port Q --ae-title AET``."""
        return [
            _dicomvault_executable(),
            "serve",
            "--data-dir",
            str(self.storage),
            "--dicom-port",
            str(self.port),
            "--http-port",
            str(free_port()),
            "--ae-title",
            self.aet,
        ]

    def stored_count(self) -> int:
        """``instances`` from ``dicomvault stats --json``."""
        result = subprocess.run(
            [_dicomvault_executable(), "stats", "--json", "--data-dir", str(self.storage)],
            capture_output=True,
            timeout=60,
            check=True,
        )
        return int(json.loads(result.stdout)["instances"])


# --------------------------------------------------------------------------- sending


@dataclass(frozen=True)
class DataSet:
    """Files to send and the number of parallel associations to use."""

    name: str
    label: str
    paths: tuple[Path, ...]
    associations: int

    @property
    def total_bytes(self) -> int:
        """Sum of the file sizes."""
        return sum(p.stat().st_size for p in self.paths)


def _argv_chunks(names: Sequence[str]) -> list[list[str]]:
    """Split file names into runs whose summed length stays under the argv budget."""
    chunks: list[list[str]] = [[]]
    used = 0
    for name in names:
        if chunks[-1] and used + len(name) + 1 > _MAX_ARGV_BYTES:
            chunks.append([])
            used = 0
        chunks[-1].append(name)
        used += len(name) + 1
    return chunks


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def send(
    paths: Sequence[Path],
    aet: str,
    port: int,
    associations: int,
    *,
    log_dir: Path,
    timeout: float = _SEND_TIMEOUT_SECONDS,
) -> tuple[float, list[str]]:
    """Send ``paths`` with storescu over ``associations`` parallel associations.

    Each association is one worker thread running storescu on its contiguous
    share of the files (one invocation, or several in a row if the argv would
    get too long).  Returns the wall-clock seconds from the start of the first
    storescu to the exit of the last, and a list of error descriptions.  After
    ``timeout`` seconds the remaining storescu processes are killed.
    """
    if not paths:
        return 0.0, []
    base = Path(os.path.commonpath([p.parent for p in paths]))
    names = [str(p.relative_to(base)) for p in paths]
    n = max(1, min(associations, len(names)))
    shares = [names[i * len(names) // n : (i + 1) * len(names) // n] for i in range(n)]
    errors: list[str] = []
    lock = threading.Lock()
    running: list[subprocess.Popen[bytes]] = []
    stopping = threading.Event()

    def worker(index: int, share: list[str]) -> None:
        log = log_dir / f"storescu-{index}.log"
        with log.open("ab") as out:
            for chunk in _argv_chunks(share):
                cmd = [STORESCU, "-aec", aet, "-to", "30", "-ta", "30", "-td", "60"]
                with lock:
                    if stopping.is_set():
                        return
                    proc = subprocess.Popen(
                        [*cmd, LOOPBACK, str(port), *chunk],
                        cwd=base,
                        env=_environment(),
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                    running.append(proc)
                if proc.wait() != 0:
                    with lock:
                        errors.append(f"storescu #{index} exited {proc.returncode}: {_tail(log)}")
                    return

    threads = [
        threading.Thread(target=worker, args=(i, share), daemon=True)
        for i, share in enumerate(shares)
    ]
    start = time.perf_counter()
    deadline = time.monotonic() + timeout
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        elapsed = time.perf_counter() - start
        if any(thread.is_alive() for thread in threads):
            errors.append(f"sending did not finish within {timeout:.0f} s")
        return elapsed, errors
    finally:
        stopping.set()
        with lock:
            for proc in running:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()


# --------------------------------------------------------------------------- measuring


@dataclass
class Result:
    """One receiver's figures for one data set."""

    receiver: str
    dataset: str
    instances: int
    associations: int
    total_bytes: int
    round: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    #: CPU of the storescu senders (user + sys): they share the machine's cores with the
    #: receiver, so together they bound what any receiver can reach here.
    sender_cpu_seconds: float = 0.0
    peak_rss_bytes: int = 0
    stored: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """All instances sent without error and stored."""
        return not self.errors and self.stored == self.instances

    @property
    def instances_per_second(self) -> float:
        """Instances per wall-clock second."""
        return self.instances / self.seconds if self.seconds else 0.0

    @property
    def mb_per_second(self) -> float:
        """Megabytes (10^6) per wall-clock second."""
        return self.total_bytes / 1e6 / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms_per_instance(self) -> float:
        """Server CPU milliseconds per instance."""
        return 1000 * self.cpu_seconds / self.instances if self.instances else 0.0

    @property
    def sender_cpu_ms_per_instance(self) -> float:
        """The senders' CPU milliseconds per instance."""
        return 1000 * self.sender_cpu_seconds / self.instances if self.instances else 0.0

    @property
    def cpu_ceiling(self) -> float:
        """Instances/s the machine's cores could give at this server's and the senders'
        CPU per instance, were nothing else in the way."""
        per_instance = self.cpu_ms_per_instance + self.sender_cpu_ms_per_instance
        return _cores() * 1000 / per_instance if per_instance else 0.0

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict including the derived figures."""
        return {
            **asdict(self),
            "ok": self.ok,
            "instances_per_second": round(self.instances_per_second, 2),
            "mb_per_second": round(self.mb_per_second, 2),
            "cpu_ms_per_instance": round(self.cpu_ms_per_instance, 3),
            "sender_cpu_ms_per_instance": round(self.sender_cpu_ms_per_instance, 3),
        }


def _children_cpu_seconds() -> float:
    """User + system CPU of this process's reaped children (the senders)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cores() -> int:
    return len(os.sched_getaffinity(0))


def _wait_for_count(receiver: Receiver, expected: int) -> int:
    """Poll the stored count until it reaches ``expected`` or stops changing (bounded)."""
    deadline = time.monotonic() + _COUNT_MAX_WAIT_SECONDS
    last, last_change = -1, time.monotonic()
    while time.monotonic() < deadline:
        count = receiver.stored_count()
        if count >= expected:
            return count
        if count != last:
            last, last_change = count, time.monotonic()
        elif time.monotonic() - last_change > _COUNT_SETTLE_SECONDS:
            break
        time.sleep(0.2)
    return last


def measure(receiver: Receiver, dataset: DataSet, round_number: int = 0) -> Result:
    """Start ``receiver``, send ``dataset`` to it, collect the figures and stop it."""
    result = Result(
        receiver=receiver.name,
        dataset=dataset.name,
        instances=len(dataset.paths),
        associations=dataset.associations,
        total_bytes=dataset.total_bytes,
        round=round_number,
    )
    os.sync()  # flush the previous run's writes so they do not land in this one
    try:
        receiver.start()
        cpu_before = tree_cpu_seconds(receiver.pid)
        senders_before = _children_cpu_seconds()
        with TreeSampler(receiver.pid) as sampler:
            result.seconds, result.errors = send(
                dataset.paths,
                receiver.aet,
                receiver.port,
                dataset.associations,
                log_dir=receiver.workdir,
            )
            # send() has reaped every storescu; the receiver is still running.
            result.sender_cpu_seconds = _children_cpu_seconds() - senders_before
            result.stored = _wait_for_count(receiver, result.instances)
        result.cpu_seconds = tree_cpu_seconds(receiver.pid) - cpu_before
        result.peak_rss_bytes = sampler.peak_rss
        if receiver.process is not None and receiver.process.poll() is not None:
            result.errors.append(f"{receiver.name} died: {receiver.log_tail()}")
    except ReceiverUnavailable:
        raise
    except Exception as exc:  # keep the other receivers' figures: record, don't crash
        result.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        receiver.stop()
    return result


def make_receiver(name: str, workdir: Path, *, storescp_fork: bool) -> Receiver:
    """Instantiate the receiver called ``name`` on a free port in ``workdir``."""
    port = free_port()
    if name == "storescp":
        return StoreScp(workdir, port, fork=storescp_fork)
    classes: dict[str, type[Receiver]] = {
        "orthanc": Orthanc,
        "pynetdicom": PynetdicomScp,
        "dicomvault": DicomVault,
    }
    return classes[name](workdir, port)


def build_datasets(args: argparse.Namespace) -> list[DataSet]:
    """Generate (or reuse from ``bench/.cache``) the selected data sets."""
    out: list[DataSet] = []
    for name in args.datasets:
        if name == "ct":
            paths = datasets.cached("ct", args.ct_count, cache_root=args.cache_dir)
            label = f"{args.ct_count} x 0.5 MB CT, {args.ct_assoc} assoc"
            out.append(DataSet(name, label, tuple(paths), args.ct_assoc))
        elif name == "small":
            paths = datasets.cached("small", args.small_count, cache_root=args.cache_dir)
            label = f"{args.small_count} x 10 KB SC, {args.small_assoc} assoc"
            out.append(DataSet(name, label, tuple(paths), args.small_assoc))
        else:
            paths = datasets.cached(
                "multiframe", 1, cache_root=args.cache_dir, size_bytes=args.large_bytes
            )
            label = f"1 x {args.large_bytes / 2**20:.0f} MiB multi-frame, 1 assoc"
            out.append(DataSet(name, label, tuple(paths), 1))
    return out


@dataclass
class Run:
    """Everything one benchmark run produced."""

    labels: dict[str, str]
    rounds: int = 1
    results: list[Result] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    #: Per data set: the disk's durable-write ceiling (bench/disk_floor.py) in each
    #: round, files/s, and the number of writers (the data set's associations).
    floors: dict[str, DiskFloor] = field(default_factory=dict)
    #: Whether the clean page cache was dropped before each receiver (bench/pagecache.py).
    page_cache_dropped: bool = False


@dataclass
class DiskFloor:
    """:func:`~bench.disk_floor.durable_write_floor` of one data set, every round."""

    streams: int
    rates: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        """The median round, chosen as for receivers (:func:`lower_middle`)."""
        return lower_middle(sorted(self.rates)) if self.rates else 0.0


def run(args: argparse.Namespace) -> Run:
    """Measure every selected receiver on every selected data set, one after another.

    With ``--repeat K`` the receivers take turns K times per data set (rounds
    interleave, so slow phases of a noisy machine hit every receiver).  A
    receiver that cannot be started is reported once and skipped afterwards.
    """
    ensure_debian_package(STORESCU, "dcmtk")
    data = build_datasets(args)
    outcome = Run(labels={d.name: d.label for d in data}, rounds=args.repeat)
    # Every receiver's directory is kept until the whole run is over, and each is in
    # an ext4 block group of its own (bench/workdir.py): on this machine's ext4
    # without a journal, creating a file skips every inode of its group deleted in the
    # last minute, so a receiver started after thousands of files were removed nearby
    # (by the previous receiver or the previous run) paid up to 0.5 ms per file.
    with run_root(args.work_dir, "bench-dimse-") as root, contextlib.ExitStack() as directories:
        for dataset in data:
            print(f"== {dataset.label}", file=sys.stderr)
            for round_number in range(args.repeat):
                for name in args.only:
                    if name in outcome.unavailable:
                        continue
                    tmp = directories.enter_context(
                        tempfile.TemporaryDirectory(prefix=f"bench-{name}-", dir=root)
                    )
                    receiver = make_receiver(name, Path(tmp), storescp_fork=args.storescp_fork)
                    # The same page cache for each (bench/pagecache.py): on these VMs a
                    # write into memory not touched before costs twice the CPU.
                    outcome.page_cache_dropped = settle(dataset.paths, drop=args.drop_page_cache)
                    try:
                        result = measure(receiver, dataset, round_number)
                    except ReceiverUnavailable as exc:
                        print(f"{name}: not available ({exc})", file=sys.stderr)
                        outcome.unavailable[name] = str(exc)
                        continue
                    outcome.results.append(result)
                    print(f"   {format_row(result)}", file=sys.stderr)
                if len(dataset.paths) > 1:  # one 1 GiB file says nothing a receiver's run does not
                    floor = outcome.floors.setdefault(
                        dataset.name, DiskFloor(streams=dataset.associations)
                    )
                    tmp = directories.enter_context(
                        tempfile.TemporaryDirectory(prefix="bench-disk-", dir=root)
                    )
                    settle(dataset.paths, drop=args.drop_page_cache)
                    rate = durable_write_floor(dataset.paths, floor.streams, Path(tmp))
                    floor.rates.append(rate)
                    print(f"   {'the disk':<11} {rate:>16.1f}", file=sys.stderr)
    return outcome


# --------------------------------------------------------------------------- reporting

_HEADER = (
    f"{'receiver':<11} {'wall s':>7} {'inst/s':>8} {'MB/s':>7} {'CPU s':>7} {'CPU ms/inst':>11} "
    f"{'sender ms':>9} {'peak RSS MiB':>12} {'stored':>11}"
)


def format_row(result: Result) -> str:
    """One table line for ``result``."""
    stored = f"{result.stored}/{result.instances}"
    flag = "" if result.ok else "  FAILED: " + "; ".join(result.errors or ["missing instances"])
    return (
        f"{result.receiver:<11} {result.seconds:>7.2f} {result.instances_per_second:>8.1f} "
        f"{result.mb_per_second:>7.1f} "
        f"{result.cpu_seconds:>7.2f} {result.cpu_ms_per_instance:>11.2f} "
        f"{result.sender_cpu_ms_per_instance:>9.2f} "
        f"{result.peak_rss_bytes / 2**20:>12.1f} {stored:>11}{flag}"
    )


T = TypeVar("T")


def lower_middle(ordered: Sequence[T]) -> T:
    """The median of a sorted, non-empty sequence; the lower middle one for even counts
    (a round that was measured, never an average of two)."""
    return ordered[(len(ordered) - 1) // 2]


def representative(results: Sequence[Result]) -> list[Result]:
    """One result per receiver, in first-seen order: the first failed round if any, else
    the round with the median throughput (the lower middle one for even counts)."""
    by_receiver: dict[str, list[Result]] = {}
    for result in results:
        by_receiver.setdefault(result.receiver, []).append(result)
    chosen: list[Result] = []
    for rounds in by_receiver.values():
        failed = [r for r in rounds if not r.ok]
        ordered = sorted(rounds, key=lambda r: r.instances_per_second)
        chosen.append(failed[0] if failed else lower_middle(ordered))
    return chosen


def format_report(outcome: Run) -> str:
    """The results table per data set, plus dicomvault-to-peer ratios when dicomvault ran."""
    lines: list[str] = []
    for dataset, label in outcome.labels.items():
        measured = [r for r in outcome.results if r.dataset == dataset]
        rows = representative(measured)
        if not rows:
            continue
        if outcome.rounds > 1:
            label += f" (median of {outcome.rounds} rounds)"
        lines += ["", label, _HEADER]
        for row in rows:
            done = sum(1 for r in measured if r.receiver == row.receiver)
            note = f"  ({done} of {outcome.rounds} rounds)" if done < outcome.rounds else ""
            lines.append(format_row(row) + note)
        for row in rows:
            if row.ok and row.receiver != "storescp" and row.instances > 1:
                lines.append(
                    f"  {row.receiver}: {_cores()} cores at its CPU per instance plus the "
                    f"senders' allow at most {row.cpu_ceiling:.0f}/s"
                )
        floor = outcome.floors.get(dataset)
        if floor is not None and floor.rates:
            lines.append(
                f"  the disk: {floor.streams} writers of these files, each fdatasync'd and "
                f"nothing else (bench/disk_floor.py), at most {floor.median:.0f}/s"
            )
        ours = next((r for r in rows if r.receiver == "dicomvault" and r.ok), None)
        for peer in rows:
            if ours is None or peer is ours or not peer.ok:
                continue
            speed = ours.instances_per_second / peer.instances_per_second
            cpu = (
                ours.cpu_ms_per_instance / peer.cpu_ms_per_instance
                if peer.cpu_ms_per_instance
                else float("nan")
            )
            lines.append(
                f"  dicomvault / {peer.receiver}: throughput x{speed:.2f}, "
                f"CPU per instance x{cpu:.2f}"
            )
    if outcome.results:
        lines.append(
            "page cache: dropped before each receiver (bench/pagecache.py)"
            if outcome.page_cache_dropped
            else "page cache: kept between receivers (not root, or --keep-page-cache)"
        )
    ran = {r.receiver for r in outcome.results}
    for name, reason in outcome.unavailable.items():
        last_line = reason.strip().splitlines()[-1] if reason.strip() else ""
        if name in ran:
            lines.append(f"{name}: stopped being available during the run: {last_line}")
        else:
            lines.append(f"{name}: not available")
    return "\n".join(lines)


def _name_list(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    """An argparse type for a comma-separated subset of ``allowed``."""

    def parse(text: str) -> list[str]:
        chosen = [n.strip() for n in text.split(",") if n.strip()]
        if not chosen or set(chosen) - set(allowed):
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)}")
        return chosen

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_dimse",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    parser.add_argument(
        "--only",
        type=_name_list(RECEIVER_NAMES),
        default=list(RECEIVER_NAMES),
        help="comma-separated receivers (default: all)",
    )
    parser.add_argument(
        "--datasets",
        type=_name_list(DATASET_NAMES),
        default=["ct", "small"],
        help="comma-separated data sets: ct, small, large (default: ct,small)",
    )
    parser.add_argument("--quick", action="store_true", help="100 CT + 200 small instances")
    parser.add_argument("--ct-count", type=int, default=1000)
    parser.add_argument("--small-count", type=int, default=2000)
    parser.add_argument("--ct-assoc", type=int, default=4, help="parallel associations (CT)")
    parser.add_argument("--small-assoc", type=int, default=1, help="parallel associations (10 KB)")
    parser.add_argument("--large-bytes", type=int, default=1 << 30, help="size of 'large'")
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds per data set; the table shows medians"
    )
    parser.add_argument("--storescp-mode", choices=["fork", "single"], default="fork")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="where receivers' temporary directories go (default: system temp)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where generated data sets are kept (default: bench/.cache)",
    )
    parser.add_argument(
        "--keep-page-cache",
        dest="drop_page_cache",
        action="store_false",
        help="do not drop the clean page cache before each receiver (bench/pagecache.py)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write results as JSON here")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.quick:
        args.ct_count, args.small_count = 100, 200
    args.storescp_fork = args.storescp_mode == "fork"
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, optionally write JSON; 1 if any run failed."""
    args = parse_args(argv)
    outcome = run(args)
    print(format_report(outcome))
    if args.json is not None:
        payload = {
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
            },
            "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "results": [r.to_dict() for r in outcome.results],
            "unavailable": outcome.unavailable,
            "disk_floors": {name: asdict(floor) for name, floor in outcome.floors.items()},
            "page_cache_dropped": outcome.page_cache_dropped,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0 if all(r.ok for r in outcome.results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
