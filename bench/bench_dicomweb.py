"""DICOMweb against Orthanc's DICOMweb plugin: STOW-RS, WADO-RS, series metadata, QIDO-RS.

Both servers run as our own processes (private temporary directories, free loopback
ports, ``TCP_NODELAY=1`` in their environment), side by side in one run:

``dicomvault``
    ``dicomvault serve --data-dir D --dicom-port 0 --http-port P``, DICOMweb at
    ``/dicom-web``; ready when ``GET /healthz`` answers 200 (within 20 s, else it is
    reported as not available, with the last probe's outcome and its log's tail).
``orthanc``
    The Debian Orthanc with the Debian DICOMweb plugin (``orthanc``, ``orthanc-dicomweb``;
    installed with apt-get when absent, the plugin found with ``dpkg -L``), loaded through
    ``Plugins``; the ``bench_dimse`` configuration (own storage and index, ``SyncStorageArea``
    on, no compression, no authentication) plus ``DicomWeb`` enabled at ``/dicom-web/``,
    ``StudiesMetadata`` / ``SeriesMetadata`` ``Full`` (every attribute of every instance,
    like ours; ``--orthanc-metadata MainDicomTags`` for its database-only mode), HTTP
    compression off, keep-alive and TCP_NODELAY on, its DICOM server off. Ready when
    ``GET /system`` answers.

The client is httpx: one sync ``httpx.Client`` per server (one keep-alive connection),
one request at a time, ``Accept-Encoding: identity``; every body is read to the end.
Orthanc closes the connection after each multipart WADO-RS answer (``Connection:
close``), so its next request opens a new one (~0.1 ms on loopback). Query strings are
built here with ``*`` left unescaped: Orthanc 1.10 does not percent-decode query values
(httpx's ``params=`` sends ``PatientName=AB%2A``, which matches nothing there).

Measurements (servers alternate which goes first, round by round):

1. STOW-RS: one ``POST /dicom-web/studies`` (``multipart/related;
   type="application/dicom"``, body built in memory beforehand) of a 50-instance study of
   0.5 MB CT (:func:`bench.datasets.ct_series`, seed 5, with new UIDs every round so each
   round stores new instances); instances/s of the median round, and the server's CPU ms
   per instance (user + sys of its process tree). The answer must reference every
   instance.
2. WADO-RS: ``GET /dicom-web/studies/{uid}`` of the study just stored, ``Accept:
   multipart/related; type="application/dicom"; transfer-syntax=*``, streamed and
   counted (bytes and parts, which must equal the instances); instances/s of the median.
3. Series metadata: ``GET .../studies/{s}/series/{r}/metadata`` (``application/dicom+json``)
   of a 1,000-instance series of 64×64 CT (seed 6), loaded once before the server starts
   (dicomvault: ``dicomvault import``; Orthanc: STOW-RS in batches of 100); ms per
   request, median / p95 over ``--runs``; the answer must hold every instance.
4. QIDO-RS ``GET /dicom-web/studies`` on a query set (:func:`bench.datasets.query_studies`,
   2,000 studies of one ~1 KB instance, loaded like 3): PatientID exact, PatientName
   ``ABCD*``, StudyDate one month, each with ``includefield=StudyDescription``; ms median
   / p95 over ``--runs`` (a new random value per run, the same for both servers), and the
   matches each server returned.

Ratios are dicomvault / Orthanc speed: instances/s ours / theirs, and for latencies
Orthanc's time / ours; > 1 means dicomvault is faster. Targets (issue "DICOMweb"): STOW-RS
and WADO-RS ≥ 1.5× Orthanc; series metadata of 1,000 instances < 150 ms. WADO-RS is judged
on the lean client's row: through httpx both servers go at httpx's pace (~1.4 GB/s here),
so that row measures the client.

``--studies N`` adds a dicomvault-only part: an index of N studies (``--instances-per-study``
rows each, no files) filled like :mod:`bench.bench_find` does, served by ``dicomvault
serve``; QIDO-RS PatientID exact, StudyDate one month and PatientName ``ABCD*``, median /
p95 over ``--large-runs`` requests.

Usage::

    python -m bench.bench_dicomweb                       # ~40 s
    python -m bench.bench_dicomweb --quick               # 1 round, 200-instance series; ~10 s
    python -m bench.bench_dicomweb --repeat 5 --json dicomweb.json
    python -m bench.bench_dicomweb --only orthanc        # Orthanc's figures alone
    python -m bench.bench_dicomweb --studies 100000      # plus QIDO over 100k studies

Exit status 1 when a server that started failed a measurement; a server that does not
come up is reported as not available (exit 0, like :mod:`bench.bench_dimse`).
"""

from __future__ import annotations

import argparse
import calendar
import contextlib
import io
import json
import os
import platform
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from bench import datasets
from bench.bench_dimse import (
    LOOPBACK,
    ORTHANC,
    Orthanc,
    Receiver,
    ReceiverUnavailable,
    _dicomvault_executable,
    ensure_debian_package,
    free_port,
)
from bench.bench_memory import tree_cpu_seconds

SERVER_NAMES = ("dicomvault", "orthanc")
ROOT = "/dicom-web"
DICOM_JSON = "application/dicom+json"
MULTIPART_DICOM = 'multipart/related; type="application/dicom"'
WADO_ACCEPT = f"{MULTIPART_DICOM}; transfer-syntax=*"
PLUGIN_PACKAGE = "orthanc-dicomweb"
#: Where Debian 12's orthanc-dicomweb puts the plugin (the lookup itself uses ``dpkg -L``).
DEBIAN_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
QUERIES = ("patient-id", "name-prefix", "date-month")
QUERY_LABELS = {
    "patient-id": "PatientID exact",
    "name-prefix": "PatientName ABCD*",
    "date-month": "StudyDate one month",
}
INCLUDE_FIELDS = ("StudyDescription",)
CLIENT_NOTE = (
    f"httpx {httpx.__version__} sync Client per server (one keep-alive connection), "
    "one request at a time, Accept-Encoding: identity"
)
#: Upper bound for one HTTP request (a 25 MB STOW on a slow machine stays well below).
_HTTP_TIMEOUT = 600.0
_STOW_BATCH = 100
_DICOMVAULT_STARTUP_TIMEOUT = 20.0
#: Defaults of the options ``--quick`` lowers (explicit values win).
_DEFAULTS = {
    "repeat": 5,
    "runs": 20,
    "large_runs": 50,
    "series_instances": 1000,
    "query_studies": 2000,
}
_QUICK = {"repeat": 1, "runs": 5, "large_runs": 10, "series_instances": 200, "query_studies": 500}


# --------------------------------------------------------------------------- servers


def _plugin_from_dpkg() -> Path | None:
    """The DICOMweb plugin's shared library as listed by ``dpkg -L``, if installed."""
    try:
        listing = subprocess.run(
            ["dpkg", "-L", PLUGIN_PACKAGE], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if listing.returncode != 0:
        return None
    found = [
        Path(line)
        for line in listing.stdout.splitlines()
        if re.search(r"libOrthancDicomWeb\.so", line) and Path(line).exists()
    ]
    # The plugins directory's unversioned name first, then the shortest (versioned) path.
    found.sort(key=lambda p: ("/plugins/" not in str(p), len(str(p))))
    return found[0] if found else None


def dicomweb_plugin() -> Path:
    """Return the Orthanc DICOMweb plugin, installing ``orthanc-dicomweb`` when absent."""
    plugin = _plugin_from_dpkg()
    if plugin is None:
        with contextlib.suppress(ReceiverUnavailable):  # installed elsewhere: dpkg says
            ensure_debian_package(DEBIAN_PLUGIN, PLUGIN_PACKAGE)
        plugin = _plugin_from_dpkg()
    if plugin is None:
        raise ReceiverUnavailable(
            f"Orthanc's DICOMweb plugin missing; run: apt-get install -y orthanc {PLUGIN_PACKAGE}"
        )
    return plugin


class OrthancWeb(Orthanc):
    """Orthanc with the DICOMweb plugin at ``/dicom-web/``, HTTP only."""

    def __init__(self, workdir: Path, metadata_mode: str = "Full") -> None:
        super().__init__(workdir, free_port())
        self.metadata_mode = metadata_mode
        self.plugin: Path | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{LOOPBACK}:{self.http_port}"

    def prepare(self) -> None:
        """Orthanc's ``bench_dimse`` configuration plus the plugin and DICOMweb settings."""
        super().prepare()
        self.plugin = dicomweb_plugin()
        config = json.loads(self.config_path.read_text())
        config.update(
            {
                "Plugins": [str(self.plugin)],
                "DicomServerEnabled": False,
                "HttpCompressionEnabled": False,
                "KeepAlive": True,
                "TcpNoDelay": True,
                "DicomWeb": {
                    "Enable": True,
                    "Root": f"{ROOT}/",
                    "StudiesMetadata": self.metadata_mode,
                    "SeriesMetadata": self.metadata_mode,
                },
            }
        )
        self.config_path.write_text(json.dumps(config, indent=2))

    def ready(self) -> bool:
        """``GET /system`` answers (the DICOM server is off)."""
        try:
            self._rest("/system")
        except (OSError, ValueError):
            return False
        return True

    def versions(self) -> dict[str, str]:
        """Orthanc's version and the DICOMweb plugin's."""
        return {
            "orthanc": str(self._rest("/system").get("Version")),
            "dicomweb_plugin": str(self._rest("/plugins/dicom-web").get("Version")),
        }


class DicomVaultWeb(Receiver):
    """``dicomvault serve`` with DICOMweb on a free HTTP port (DIMSE on an ephemeral one)."""

    name = "dicomvault"
    aet = "DICOMVAULT"
    startup_timeout = _DICOMVAULT_STARTUP_TIMEOUT

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, 0)
        self.http_port = free_port()
        self.last_probe = "no answer yet"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{LOOPBACK}:{self.http_port}"

    def command(self) -> list[str]:
        """``dicomvault serve --data-dir D --dicom-port 0 --http-port P``."""
        return [
            _dicomvault_executable(),
            "serve",
            "--data-dir",
            str(self.storage),
            "--dicom-port",
            "0",
            "--http-port",
            str(self.http_port),
        ]

    def ready(self) -> bool:
        """``GET /healthz`` answers 200."""
        try:
            answer = httpx.get(f"{self.base_url}/healthz", timeout=2.0)
        except httpx.HTTPError as exc:
            self.last_probe = f"{type(exc).__name__}: {exc}"
            return False
        self.last_probe = f"HTTP {answer.status_code}"
        return answer.status_code == 200

    def start(self) -> None:
        """Start, and on failure say what the last ``/healthz`` probe saw."""
        try:
            super().start()
        except ReceiverUnavailable as exc:
            tail = self.log_tail(300)
            log = "" if tail and tail in str(exc) else f"; log tail: {tail or '(empty)'}"
            raise ReceiverUnavailable(
                f"{exc}; HTTP server at {self.base_url} never answered GET /healthz with 200 "
                f"(last probe: {self.last_probe}){log}"
            ) from None

    def import_files(self, directories: Sequence[Path]) -> float:
        """``dicomvault import`` into the (not yet served) data directory; seconds taken."""
        self.storage.mkdir(parents=True, exist_ok=True)
        command = [_dicomvault_executable(), "import", "--data-dir", str(self.storage)]
        command += ["--json", "--no-progress", *map(str, directories)]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
        elapsed = time.perf_counter() - start
        try:
            summary = json.loads(done.stdout)
        except ValueError:
            summary = None
        if done.returncode != 0 or not isinstance(summary, dict):
            raise ReceiverUnavailable(
                f"dicomvault import exited {done.returncode}: "
                f"{(done.stderr or done.stdout).strip()[-500:]}"
            )
        return elapsed

    def stored_count(self) -> int:
        """``instances`` from ``dicomvault stats --json``."""
        result = subprocess.run(
            [_dicomvault_executable(), "stats", "--json", "--data-dir", str(self.storage)],
            capture_output=True,
            timeout=60,
            check=True,
        )
        return int(json.loads(result.stdout)["instances"])


# --------------------------------------------------------------------------- HTTP helpers


def multipart(parts: Sequence[bytes], content_type: str = "application/dicom") -> tuple[bytes, str]:
    """A ``multipart/related`` body of *parts*; returns (body, Content-Type header)."""
    boundary = uuid.uuid4().hex
    head = f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode()
    body = b"".join(head + part + b"\r\n" for part in parts) + f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="{content_type}"; boundary={boundary}'


def boundary_of(content_type: str) -> bytes:
    """The ``boundary`` parameter of a multipart Content-Type."""
    match = re.search(r'boundary=(?:"([^"]+)"|([^;\s]+))', content_type, re.IGNORECASE)
    if match is None:
        raise ValueError(f"no boundary in Content-Type {content_type!r}")
    return (match.group(1) or match.group(2)).encode()


class PartCounter:
    """Counts the parts of a multipart body fed chunk by chunk (delimiters may straddle
    chunks), and its bytes."""

    def __init__(self, boundary: bytes) -> None:
        self.delimiter = b"--" + boundary
        self.delimiters = 0
        self.bytes = 0
        self._tail = b""
        self._end = b""

    def feed(self, chunk: bytes) -> None:
        """Account for the next *chunk* of the body."""
        self.bytes += len(chunk)
        window = self._tail + chunk
        self.delimiters += window.count(self.delimiter)
        self._tail = window[-(len(self.delimiter) - 1) :]
        self._end = (self._end + chunk)[-(len(self.delimiter) + 8) :]

    @property
    def parts(self) -> int:
        """Body parts seen: delimiters, less the closing one."""
        closed = self.delimiter + b"--" in self._end
        return max(0, self.delimiters - (1 if closed else 0))


def _expect(answer: httpx.Response, *statuses: int) -> None:
    """Raise with the start of the (read) body unless the status is one of *statuses*."""
    if answer.status_code not in statuses:
        raise RuntimeError(
            f"{answer.request.method} {answer.request.url.path} answered "
            f"{answer.status_code}: {answer.text.strip()[:300]}"
        )


def _sequence_items(document: Any, tag: str) -> int:
    if not isinstance(document, dict):
        return 0
    element = document.get(tag) or {}
    return len(element.get("Value") or [])


def stow(client: httpx.Client, body: bytes, content_type: str, expected: int) -> float:
    """POST one multipart body to ``/studies``; seconds. Every instance must be referenced."""
    start = time.perf_counter()
    answer = client.post(
        "/studies", content=body, headers={"Content-Type": content_type, "Accept": DICOM_JSON}
    )
    elapsed = time.perf_counter() - start
    _expect(answer, 200, 202)
    document = answer.json() if answer.content else {}
    stored = _sequence_items(document, "00081199")
    failed = _sequence_items(document, "00081198")
    if stored != expected or failed:
        raise RuntimeError(
            f"STOW-RS answered {answer.status_code}: {stored} of {expected} instances "
            f"referenced, {failed} failed"
        )
    return elapsed


def wado_study(client: httpx.Client, study_uid: str, expected: int) -> tuple[float, int]:
    """GET a whole study as multipart DICOM, streamed to the end; (seconds, bytes)."""
    start = time.perf_counter()
    with client.stream("GET", f"/studies/{study_uid}", headers={"Accept": WADO_ACCEPT}) as answer:
        if answer.status_code != 200:
            answer.read()
            _expect(answer, 200)
        counter = PartCounter(boundary_of(answer.headers.get("content-type", "")))
        for chunk in answer.iter_raw():
            counter.feed(chunk)
    elapsed = time.perf_counter() - start
    if counter.parts != expected:
        raise RuntimeError(f"WADO-RS returned {counter.parts} parts, expected {expected}")
    return elapsed, counter.bytes


def wado_study_lean(base_url: str, study_uid: str) -> tuple[float, int]:
    """The same GET with a minimal client: a raw socket, ``Connection: close``, the answer
    read with ``recv_into`` into one buffer until the server closes. httpx spends ~16 ms
    of its own CPU on a 26 MB body, the same order as either server: this row shows the
    servers' difference without that floor. Seconds and bytes (headers included)."""
    url = httpx.URL(base_url)
    path = f"{url.path.rstrip('/')}/studies/{study_uid}"
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {url.host}:{url.port}\r\n"
        f"Accept: {WADO_ACCEPT}\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n"
    ).encode()
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    received = 0
    start = time.perf_counter()
    with socket.create_connection((url.host, url.port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(request)
        first = b""
        while n := sock.recv_into(view):
            if not first:
                first = bytes(view[: min(n, 32)])
            received += n
    elapsed = time.perf_counter() - start
    if first.split(b" ")[1:2] != [b"200"]:
        raise RuntimeError(f"lean WADO-RS answered {first!r}")
    return elapsed, received


def query_string(params: Sequence[tuple[str, str]]) -> str:
    """``?k=v&...`` with ``*`` left as is: Orthanc 1.10 does not percent-decode query
    values (``PatientName=AB%2A`` matches nothing), and httpx's ``params=`` encodes ``*``."""
    if not params:
        return ""
    return "?" + "&".join(f"{quote(k, safe='')}={quote(v, safe='*')}" for k, v in params)


def get_json(
    client: httpx.Client, path: str, params: Sequence[tuple[str, str]] = ()
) -> tuple[float, list[Any]]:
    """GET *path* as ``application/dicom+json``, body read in full; (ms, parsed list).
    204 No Content is an empty list."""
    url = path + query_string(params)
    start = time.perf_counter()
    answer = client.get(url, headers={"Accept": DICOM_JSON})
    elapsed = (time.perf_counter() - start) * 1000
    _expect(answer, 200, 204)
    document = answer.json() if answer.status_code == 200 and answer.content else []
    if not isinstance(document, list):
        raise RuntimeError(f"GET {path}: expected a JSON array, got {type(document).__name__}")
    return elapsed, document


def load_by_stow(client: httpx.Client, paths: Sequence[Path], batch: int = _STOW_BATCH) -> float:
    """STOW *paths* in batches; seconds taken."""
    start = time.perf_counter()
    for first in range(0, len(paths), batch):
        chunk = paths[first : first + batch]
        body, content_type = multipart([p.read_bytes() for p in chunk])
        stow(client, body, content_type, len(chunk))
    return time.perf_counter() - start


def http_client(base_url: str) -> httpx.Client:
    """The benchmark's client for one server: keep-alive, no compression, long timeout."""
    return httpx.Client(
        base_url=base_url + ROOT,
        timeout=_HTTP_TIMEOUT,
        headers={"Accept-Encoding": "identity"},
    )


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Study:
    """A STOW-RS body ready to send, and what it holds."""

    study_uid: str
    body: bytes
    content_type: str
    instances: int
    dicom_bytes: int


class StudyMaker:
    """The template CT study with fresh Study / Series / SOP Instance UIDs per round."""

    def __init__(self, paths: Sequence[Path], seed: int = 5) -> None:
        from pydicom import dcmread

        self.templates = [dcmread(p) for p in paths]
        self.seed = seed

    def make(self, round_number: int) -> Study:
        """Serialise the study for *round_number* (deterministic)."""
        from pydicom import dcmwrite

        study_uid = datasets.derive_uid(self.seed, "stow-study", round_number)
        series_uid = datasets.derive_uid(self.seed, "stow-series", round_number)
        parts: list[bytes] = []
        for i, ds in enumerate(self.templates):
            sop_uid = datasets.derive_uid(self.seed, "stow-instance", round_number, i)
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.SOPInstanceUID = sop_uid
            ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
            buffer = io.BytesIO()
            dcmwrite(buffer, ds, enforce_file_format=True)
            parts.append(buffer.getvalue())
        body, content_type = multipart(parts)
        return Study(str(study_uid), body, content_type, len(parts), sum(map(len, parts)))


def _month_range(year: int, month: int) -> str:
    last = calendar.monthrange(year, month)[1]
    return f"{year}{month:02d}01-{year}{month:02d}{last:02d}"


def query_makers(
    files: Sequence[Path], months: int, seed: int = 11
) -> dict[str, Callable[[], dict[str, str]]]:
    """Random QIDO values taken from the query set (50 sampled files); deterministic."""
    from pydicom import dcmread

    rng = random.Random(seed)
    sample = [
        dcmread(p, stop_before_pixels=True) for p in rng.sample(list(files), min(50, len(files)))
    ]
    ids = [str(ds.PatientID) for ds in sample]
    prefixes = [str(ds.PatientName).split("^")[0][:4] for ds in sample]

    def month() -> str:
        index = rng.randrange(months)
        return _month_range(2022 + index // 12, 1 + index % 12)

    return {
        "patient-id": lambda: {"PatientID": rng.choice(ids)},
        "name-prefix": lambda: {"PatientName": rng.choice(prefixes) + "*"},
        "date-month": lambda: {"StudyDate": month()},
    }


def qido_params(keys: dict[str, str]) -> list[tuple[str, str]]:
    """Query parameters: the keys plus ``includefield`` for :data:`INCLUDE_FIELDS`."""
    return [*keys.items(), *(("includefield", name) for name in INCLUDE_FIELDS)]


# --------------------------------------------------------------------------- measuring


@dataclass
class Server:
    """A server under test: its process, client and per-measurement samples and errors."""

    name: str
    receiver: DicomVaultWeb | OrthancWeb
    client: httpx.Client | None = None
    samples: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def attempt(
        self,
        measurement: str,
        action: Callable[[httpx.Client], dict[str, float]],
        *,
        keep: bool = True,
    ) -> None:
        """Run *action* (one sample) unless this measurement already failed here; keep the
        sample, with the server CPU it cost, or record the first error (a warm-up's too)."""
        if measurement in self.errors or self.client is None:
            return
        try:
            before = tree_cpu_seconds(self.receiver.pid)
            sample = action(self.client)
            sample["server_cpu_s"] = tree_cpu_seconds(self.receiver.pid) - before
        except Exception as exc:  # keep the other server's figures: record, don't crash
            self.errors[measurement] = f"{type(exc).__name__}: {exc}"
            print(
                f"   {self.name} {measurement}: FAILED {self.errors[measurement]}", file=sys.stderr
            )
            return
        if keep:
            self.samples.setdefault(measurement, []).append(sample)


def _order(servers: list[Server], index: int) -> list[Server]:
    return servers if index % 2 == 0 else servers[::-1]


#: WADO-RS retrievals of the round's study per server and round.
WADO_GETS_PER_ROUND = 5


def measure_transfer(servers: list[Server], maker: StudyMaker, rounds: int) -> None:
    """STOW-RS a new study into each server, then WADO-RS it back, *rounds* times."""
    for round_number in range(rounds):
        study = maker.make(round_number)

        def post(client: httpx.Client, study: Study = study) -> dict[str, float]:
            seconds = stow(client, study.body, study.content_type, study.instances)
            return {"seconds": seconds, "bytes": study.dicom_bytes}

        def get(client: httpx.Client, study: Study = study) -> dict[str, float]:
            seconds, received = wado_study(client, study.study_uid, study.instances)
            return {"seconds": seconds, "bytes": received}

        def get_lean(client: httpx.Client, study: Study = study) -> dict[str, float]:
            seconds, received = wado_study_lean(str(client.base_url), study.study_uid)
            return {"seconds": seconds, "bytes": received}

        order = _order(servers, round_number)
        for server in order:
            os.sync()  # earlier writes must not land in this measurement
            server.attempt("stow", post)
        for server in order:
            # Several GETs per round: a single one is at the mercy of one scheduling hiccup.
            for _ in range(WADO_GETS_PER_ROUND):
                server.attempt("wado", get)
                server.attempt("wado-lean", get_lean)
        done = [
            f"{s.name} {m} {s.samples[m][-1]['seconds']:.3f} s"
            for s in servers
            for m in ("stow", "wado", "wado-lean")
            if s.samples.get(m) and m not in s.errors
        ]
        print(f"   round {round_number + 1}/{rounds}: {', '.join(done)}", file=sys.stderr)


def measure_latency(
    servers: list[Server],
    measurement: str,
    runs: int,
    request: Callable[[httpx.Client, int], tuple[float, list[Any]]],
    expected: int | None = None,
) -> None:
    """One warm-up request per server (run -1), then *runs* timed requests, the servers
    alternating; ``request(client, run)`` gets the same run number for both servers."""

    def action(run: int) -> Callable[[httpx.Client], dict[str, float]]:
        def once(client: httpx.Client) -> dict[str, float]:
            ms, items = request(client, run)
            if expected is not None and len(items) != expected:
                raise RuntimeError(f"{len(items)} items in the answer, expected {expected}")
            return {"ms": ms, "matches": len(items)}

        return once

    for server in servers:
        server.attempt(measurement, action(-1), keep=False)
    for run in range(runs):
        for server in _order(servers, run):
            server.attempt(measurement, action(run))


def measure_qido(
    servers: list[Server],
    makers: dict[str, Callable[[], dict[str, str]]],
    runs: int,
) -> None:
    """Each query *runs* times; a new random value per run, the same for every server."""
    for name in makers:
        values = [makers[name]() for _ in range(runs + 1)]  # [0]: the warm-up's

        def request(
            client: httpx.Client, run: int, values: list[dict[str, str]] = values
        ) -> tuple[float, list[Any]]:
            return get_json(client, "/studies", qido_params(values[run + 1]))

        measure_latency(servers, f"qido {name}", runs, request)


# --------------------------------------------------------------------------- figures


def _p95(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]


def throughput_figures(samples: Sequence[dict[str, float]], instances: int) -> dict[str, float]:
    """Median round: seconds, instances/s, MB/s; server CPU ms per instance (mean)."""
    seconds = statistics.median(s["seconds"] for s in samples)
    mbytes = statistics.median(s["bytes"] for s in samples) / 1e6
    cpu = statistics.fmean(s["server_cpu_s"] for s in samples)
    return {
        "rounds": len(samples),
        "median_s": round(seconds, 4),
        "instances_per_s": round(instances / seconds, 1),
        "mb_per_s": round(mbytes / seconds, 1),
        "server_cpu_ms_per_instance": round(1000 * cpu / instances, 2),
    }


def latency_figures(samples: Sequence[dict[str, float]]) -> dict[str, float]:
    """Median / p95 ms, server CPU ms per request (the mean: CPU times tick every 10 ms)
    and matches (last run)."""
    times = [s["ms"] for s in samples]
    cpu = statistics.fmean(s["server_cpu_s"] for s in samples)
    return {
        "runs": len(samples),
        "median_ms": round(statistics.median(times), 2),
        "p95_ms": round(_p95(times), 2),
        "server_cpu_ms": round(1000 * cpu, 2),
        "matches": int(samples[-1]["matches"]),
    }


def summarise(servers: list[Server], instances: int) -> dict[str, dict[str, Any]]:
    """Per measurement: each server's figures or error, its raw samples, and the
    dicomvault / Orthanc ratio."""
    out: dict[str, dict[str, Any]] = {}
    names = ["stow", "wado", "wado-lean", "metadata", *(f"qido {q}" for q in QUERIES)]
    for name in names:
        row: dict[str, Any] = {"figures": {}, "errors": {}, "samples": {}}
        for server in servers:
            if name in server.errors:
                row["errors"][server.name] = server.errors[name]
            elif server.samples.get(name):
                samples = server.samples[name]
                row["samples"][server.name] = [
                    {k: round(v, 6) for k, v in sample.items()} for sample in samples
                ]
                row["figures"][server.name] = (
                    throughput_figures(samples, instances)
                    if name in THROUGHPUT
                    else latency_figures(samples)
                )
        ours, theirs = row["figures"].get("dicomvault"), row["figures"].get("orthanc")
        if ours and theirs:
            if name in THROUGHPUT:
                row["ratio"] = round(ours["instances_per_s"] / theirs["instances_per_s"], 2)
            else:
                row["ratio"] = round(theirs["median_ms"] / ours["median_ms"], 2)
        out[name] = row
    return out


# --------------------------------------------------------------------------- running


def _start(server: Server, started: list[Server]) -> bool:
    """Start the server's process (stopped at the end even if this fails); False when it
    is not available (the reason goes to ``errors['start']``)."""
    started.append(server)
    try:
        server.receiver.start()
    except ReceiverUnavailable as exc:
        server.errors["start"] = str(exc)
        print(f"{server.name}: not available ({exc})", file=sys.stderr)
        return False
    server.client = http_client(server.receiver.base_url)
    return True


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the selected servers, load them, measure; the JSON-ready report."""
    print("preparing data sets ...", file=sys.stderr)
    ct = datasets.cached("ct", args.instances, seed=5, cache_root=args.cache_dir)
    series_files = datasets.cached(
        "ct", args.series_instances, rows=64, cols=64, seed=6, cache_root=args.cache_dir
    )
    query_files = datasets.cached("query", args.query_studies, months=30, cache_root=args.cache_dir)
    maker = StudyMaker(ct)
    from pydicom import dcmread

    first = dcmread(series_files[0], stop_before_pixels=True)
    series_path = f"/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}/metadata"
    report: dict[str, Any] = {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "client": CLIENT_NOTE,
        "instances": args.instances,
        "instance_bytes": sum(p.stat().st_size for p in ct) // len(ct),
        "versions": {},
        "setup_s": {},
        "unavailable": {},
    }
    with tempfile.TemporaryDirectory(prefix="dicomvault-bench-dicomweb-", dir=args.work_dir) as tmp:
        work = Path(tmp)
        servers: list[Server] = []
        for name in args.only:
            (work / name).mkdir()
            if name == "dicomvault":
                servers.append(Server(name, DicomVaultWeb(work / name)))
            else:
                servers.append(Server(name, OrthancWeb(work / name, args.orthanc_metadata)))
        started: list[Server] = []
        try:
            for server in servers:
                receiver = server.receiver
                if isinstance(receiver, DicomVaultWeb):
                    try:
                        report["setup_s"]["dicomvault import"] = round(
                            receiver.import_files([series_files[0].parent, query_files[0].parent]),
                            2,
                        )
                    except ReceiverUnavailable as exc:
                        server.errors["start"] = str(exc)
                        continue
                    _start(server, started)
                elif _start(server, started):
                    assert isinstance(receiver, OrthancWeb) and server.client is not None
                    report["versions"] = receiver.versions()
                    try:
                        report["setup_s"]["orthanc STOW-RS load"] = round(
                            load_by_stow(server.client, [*series_files, *query_files]), 2
                        )
                    except Exception as exc:
                        server.errors["start"] = f"loading by STOW-RS failed: {exc}"
                        server.client.close()
                        server.client = None
            live = [s for s in servers if s.client is not None]
            for server in servers:
                if "start" in server.errors:
                    report["unavailable"][server.name] = server.errors.pop("start")
            if live:
                print(f"== STOW-RS / WADO-RS, {args.repeat} rounds", file=sys.stderr)
                measure_transfer(live, maker, args.repeat)
                print(f"== series metadata, {args.runs} runs", file=sys.stderr)
                measure_latency(
                    live,
                    "metadata",
                    args.runs,
                    lambda client, _run: get_json(client, series_path),
                    expected=len(series_files),
                )
                print(f"== QIDO-RS, {args.runs} runs per query", file=sys.stderr)
                measure_qido(live, query_makers(query_files, 30), args.runs)
        finally:
            for server in reversed(started):
                if server.client is not None:
                    server.client.close()
                server.receiver.stop()
        report["measurements"] = summarise(servers, args.instances)
        if args.studies:
            if "dicomvault" not in args.only:
                report["large_qido"] = {"skipped": "dicomvault not selected"}
            elif "dicomvault" in report["unavailable"]:
                report["large_qido"] = {"skipped": "dicomvault not available"}
            else:
                report["large_qido"] = run_large_qido(args, work / "large")
    return report


def run_large_qido(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """QIDO-RS over an index of ``--studies`` studies (rows only, as bench_find fills it)."""
    from bench.bench_find import fill  # imports dicomvault: only when this part runs

    work.mkdir()
    receiver = DicomVaultWeb(work)
    receiver.storage.mkdir(parents=True)
    print(f"== QIDO-RS over {args.studies} studies: filling the index ...", file=sys.stderr)
    start = time.perf_counter()
    samples = fill(
        f"sqlite:///{receiver.storage / 'index.sqlite3'}", args.studies, args.instances_per_study
    )
    out: dict[str, Any] = {
        "studies": args.studies,
        "instances": args.studies * args.instances_per_study,
        "fill_s": round(time.perf_counter() - start, 1),
    }
    rng = random.Random(11)
    makers: dict[str, Callable[[], dict[str, str]]] = {
        "patient-id": lambda: {"PatientID": rng.choice(samples["patient_id"])},
        "date-month": lambda: {
            "StudyDate": _month_range(rng.randint(2015, 2024), rng.randint(1, 12))
        },
        "name-prefix": lambda: {"PatientName": rng.choice(samples["name"]) + "*"},
    }
    server = Server("dicomvault", receiver)
    try:
        if not _start(server, []):
            out["unavailable"] = server.errors.pop("start")
            return out
        measure_qido([server], makers, args.large_runs)
    finally:
        if server.client is not None:
            server.client.close()
        receiver.stop()
    out["figures"] = {
        name: latency_figures(server.samples[f"qido {name}"])
        for name in makers
        if server.samples.get(f"qido {name}")
    }
    out["errors"] = {name.removeprefix("qido "): e for name, e in server.errors.items()}
    return out


# --------------------------------------------------------------------------- reporting

_ROWS = {
    "stow": "STOW-RS {n} x {size} CT, inst/s",
    "wado": "WADO-RS that study, inst/s",
    "wado-lean": "  same, lean socket client, inst/s",
    "metadata": "series metadata, {series} inst, ms",
    "qido patient-id": "QIDO PatientID exact, ms",
    "qido name-prefix": "QIDO PatientName ABCD*, ms",
    "qido date-month": "QIDO StudyDate one month, ms",
}


THROUGHPUT = ("stow", "wado", "wado-lean")


def _target(name: str, row: dict[str, Any]) -> str:
    ours = row["figures"].get("dicomvault")
    if name == "wado":
        # httpx reads ~1.4 GB/s here, slower than either server sends: this row shows the
        # client's pace (both servers alike); the target is judged on the lean client.
        return "(httpx's pace; target: next row)"
    if name in THROUGHPUT:
        ratio = row.get("ratio")
        return ">= 1.5x: " + ("-" if ratio is None else "met" if ratio >= 1.5 else "not met")
    if name == "metadata":
        verdict = "-" if ours is None else "met" if ours["median_ms"] < 150 else "not met"
        return f"< 150 ms: {verdict}"
    return ""


def _cell(figures: dict[str, Any] | None, error: str | None, throughput: bool) -> str:
    if figures is None:
        return "FAILED" if error else "-"
    if throughput:
        return f"{figures['instances_per_s']:.1f}"
    return f"{figures['median_ms']:.1f} / {figures['p95_ms']:.1f}"


def format_report(report: dict[str, Any]) -> str:
    """The results table, the notes on failures and, with ``--studies``, the large part."""
    args = report["arguments"]
    versions = report.get("versions") or {}
    orthanc = (
        f"Orthanc {versions['orthanc']} + DICOMweb plugin {versions['dicomweb_plugin']} "
        f"(metadata: {args['orthanc_metadata']})"
        if versions
        else "Orthanc"
    )
    size = f"{report['instance_bytes'] / 1e6:.2f} MB"
    lines = [
        f"DICOMweb: dicomvault vs {orthanc}",
        f"client: {report['client']}",
        f"{args['repeat']} round(s) of STOW-RS + WADO-RS (median round), {args['runs']} runs per "
        "latency row (median / p95 ms); servers alternate",
        "ratio: dicomvault / Orthanc speed (> 1: dicomvault faster)",
        "",
        f"{'measurement':38s} {'dicomvault':>15s} {'orthanc':>15s} {'ratio':>7s}  target",
    ]
    notes: list[str] = []
    for name, row in report["measurements"].items():
        throughput = name in THROUGHPUT
        label = _ROWS[name].format(n=args["instances"], size=size, series=args["series_instances"])
        cells = [
            _cell(row["figures"].get(s), row["errors"].get(s), throughput) for s in SERVER_NAMES
        ]
        ratio = f"{row['ratio']:.2f}x" if "ratio" in row else "-"
        line = f"{label:38s} {cells[0]:>15s} {cells[1]:>15s} {ratio:>7s}  {_target(name, row)}"
        lines.append(line.rstrip())
        if throughput:
            cpu = [
                f"{row['figures'][s]['server_cpu_ms_per_instance']:.2f}"
                if s in row["figures"]
                else "-"
                for s in SERVER_NAMES
            ]
            lines.append(f"{'  server CPU ms/instance':38s} {cpu[0]:>15s} {cpu[1]:>15s}")
        else:
            matches = [
                str(row["figures"][s]["matches"]) if s in row["figures"] else "-"
                for s in SERVER_NAMES
            ]
            cpu = [
                f"{row['figures'][s]['server_cpu_ms']:.1f}" if s in row["figures"] else "-"
                for s in SERVER_NAMES
            ]
            lines.append(
                f"{'  server CPU ms / items (last run)':38s} "
                f"{cpu[0] + ' / ' + matches[0]:>15s} {cpu[1] + ' / ' + matches[1]:>15s}"
            )
            if "-" not in matches and matches[0] != matches[1]:
                lines.append("  (the servers returned different numbers of items)")
        notes += [f"{s} {name}: {e}" for s, e in row["errors"].items()]
    if report["setup_s"]:
        setup = ", ".join(f"{k} {v} s" for k, v in report["setup_s"].items())
        lines.append(
            f"load ({args['series_instances']}-instance series + {args['query_studies']} "
            f"query studies): {setup}"
        )
    for name, reason in report["unavailable"].items():
        lines.append(f"{name}: not available: {reason}")
    lines += [f"FAILED {note}" for note in notes]
    large = report.get("large_qido")
    if large:
        lines.append("")
        if "skipped" in large:
            lines.append(f"QIDO-RS over {args['studies']} studies: skipped ({large['skipped']})")
        elif "unavailable" in large:
            lines.append(
                f"QIDO-RS over {args['studies']} studies: dicomvault not available: "
                f"{large['unavailable']}"
            )
        else:
            lines.append(
                f"QIDO-RS over {large['studies']} studies / {large['instances']} instances "
                f"(dicomvault only, index filled in {large['fill_s']} s; "
                f"{args['large_runs']} requests each)"
            )
            for name, figures in large["figures"].items():
                lines.append(
                    f"  {QUERY_LABELS[name]:22s} median {figures['median_ms']:7.1f} ms  "
                    f"p95 {figures['p95_ms']:7.1f} ms  ({figures['matches']} matches, last run)"
                )
            lines += [f"  FAILED {name}: {error}" for name, error in large["errors"].items()]
    return "\n".join(lines)


def failed(report: dict[str, Any]) -> bool:
    """Whether a server that started failed any measurement."""
    errors = any(row["errors"] for row in report["measurements"].values())
    large = report.get("large_qido") or {}
    return errors or bool(large.get("errors"))


def _name_list(text: str) -> list[str]:
    chosen = [n.strip() for n in text.split(",") if n.strip()]
    if not chosen or set(chosen) - set(SERVER_NAMES):
        raise argparse.ArgumentTypeError(f"choose from {', '.join(SERVER_NAMES)}")
    return [n for n in SERVER_NAMES if n in chosen]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line (unknown options are ignored, as ``make bench`` passes the
    same ARGS to every benchmark)."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_dicomweb",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--only", type=_name_list, default=list(SERVER_NAMES), help="dicomvault,orthanc"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller defaults: "
        + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in _QUICK.items()),
    )
    parser.add_argument("--repeat", type=int, help="STOW/WADO rounds, median (default 5)")
    parser.add_argument("--instances", type=int, default=50, help="instances in the STOW study")
    parser.add_argument("--series-instances", type=int, help="metadata series (default 1000)")
    parser.add_argument("--query-studies", type=int, help="QIDO query set (default 2000)")
    parser.add_argument("--runs", type=int, help="requests per latency row (default 20)")
    parser.add_argument(
        "--orthanc-metadata",
        choices=["Full", "MainDicomTags"],
        default="Full",
        help="Orthanc's StudiesMetadata / SeriesMetadata mode",
    )
    parser.add_argument(
        "--studies", type=int, default=0, help="also QIDO over N studies (dicomvault only)"
    )
    parser.add_argument("--instances-per-study", type=int, default=10)
    parser.add_argument("--large-runs", type=int, help="requests per large QIDO row (default 50)")
    parser.add_argument("--work-dir", type=Path, default=None, help="for the servers' temp dirs")
    parser.add_argument("--cache-dir", type=Path, default=None, help="generated data sets")
    parser.add_argument("--json", type=Path, default=None, help="write the report as JSON here")
    args, _unknown = parser.parse_known_args(argv)
    for name, default in (_QUICK if args.quick else _DEFAULTS).items():
        if getattr(args, name) is None:  # explicit values win over --quick
            setattr(args, name, default)
    for name in ("repeat", "instances", "series_instances", "query_studies", "runs", "large_runs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run, print the table, optionally write JSON; 1 if a started server failed."""
    args = parse_args(argv)
    if "orthanc" in args.only:
        with contextlib.suppress(ReceiverUnavailable):  # reported when Orthanc starts
            ensure_debian_package(ORTHANC, "orthanc")
    report = run(args)
    print(format_report(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if failed(report) else 0


if __name__ == "__main__":
    raise SystemExit(main())
