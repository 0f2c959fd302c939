"""Process metrics in the Prometheus text exposition format (served at ``/metrics``).

A few counters and histograms, kept here rather than behind ``prometheus_client`` because
the set is small and fixed: HTTP requests per route, method and status with latency
histograms; DIMSE messages per service and status; instances and bytes ingested per
front end. Updates are a dict lookup and an add under one lock (well under a microsecond
next to the milliseconds each instance costs).

With ``--workers N`` every process keeps its own figures; a scrape reaches one process
(as with any pre-fork server), which the ``pid`` label tells apart.
"""

from __future__ import annotations

import bisect
import os
import threading
from collections.abc import Iterable

LabelValues = tuple[str, ...]

#: Seconds; covers a 1 ms QIDO to a minutes-long study retrieval.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: LabelValues, extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class Counter:
    """A monotonically increasing count per label combination."""

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...]) -> None:
        self.name = name
        self.help = help_text
        self.label_names = labels
        self._values: dict[LabelValues, float] = {}
        self._lock = threading.Lock()

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, *labels: str) -> float:
        with self._lock:
            return self._values.get(labels, 0.0)

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        with self._lock:
            items = sorted(self._values.items())
        for values, count in items:
            yield f"{self.name}{_labels(self.label_names, values)} {count:g}"


class Histogram:
    """Observations in cumulative buckets, with their sum and count."""

    def __init__(
        self,
        name: str,
        help_text: str,
        labels: tuple[str, ...],
        buckets: tuple[float, ...] = LATENCY_BUCKETS,
    ) -> None:
        self.name = name
        self.help = help_text
        self.label_names = labels
        self.buckets = buckets
        # per label set: [count per bucket (non-cumulative) + overflow, sum]
        self._values: dict[LabelValues, tuple[list[int], list[float]]] = {}
        self._lock = threading.Lock()

    def observe(self, value: float, *labels: str) -> None:
        index = bisect.bisect_left(self.buckets, value)
        with self._lock:
            entry = self._values.get(labels)
            if entry is None:
                entry = ([0] * (len(self.buckets) + 1), [0.0])
                self._values[labels] = entry
            entry[0][index] += 1
            entry[1][0] += value

    def count(self, *labels: str) -> int:
        with self._lock:
            entry = self._values.get(labels)
            return sum(entry[0]) if entry else 0

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        with self._lock:
            items = sorted((k, (list(v[0]), v[1][0])) for k, v in self._values.items())
        for values, (counts, total) in items:
            running = 0
            for bound, n in zip(self.buckets, counts, strict=False):
                running += n
                le = f'le="{bound:g}"'
                yield f"{self.name}_bucket{_labels(self.label_names, values, le)} {running}"
            running += counts[-1]
            inf = 'le="+Inf"'
            yield f"{self.name}_bucket{_labels(self.label_names, values, inf)} {running}"
            yield f"{self.name}_sum{_labels(self.label_names, values)} {total:.6f}"
            yield f"{self.name}_count{_labels(self.label_names, values)} {running}"


HTTP_REQUESTS = Counter(
    "dicomvault_http_requests_total",
    "HTTP requests answered, by route template, method and status code.",
    ("route", "method", "status"),
)
HTTP_LATENCY = Histogram(
    "dicomvault_http_request_duration_seconds",
    "Time from request to the end of the response body, by route template and method.",
    ("route", "method"),
)
DIMSE_MESSAGES = Counter(
    "dicomvault_dimse_messages_total",
    "DIMSE requests answered, by service (C-STORE, C-FIND ...) and final status.",
    ("service", "status"),
)
INGEST_INSTANCES = Counter(
    "dicomvault_ingest_instances_total",
    "Instances received, by front end (dimse, stow) and outcome.",
    ("source", "outcome"),
)
INGEST_BYTES = Counter(
    "dicomvault_ingest_bytes_total",
    "Bytes of instances received, by front end.",
    ("source",),
)

ALL = (HTTP_REQUESTS, HTTP_LATENCY, DIMSE_MESSAGES, INGEST_INSTANCES, INGEST_BYTES)


def render() -> str:
    """Every metric in the Prometheus text format 0.0.4."""
    lines = [
        "# HELP dicomvault_process_info The serving process.",
        "# TYPE dicomvault_process_info gauge",
        f'dicomvault_process_info{{pid="{os.getpid()}"}} 1',
    ]
    for metric in ALL:
        lines.extend(metric.render())
    return "\n".join(lines) + "\n"
