"""C-FIND latency over a large synthetic index (issue: Query/Retrieve FIND).

Fills an index — rows only, bulk inserts through the index layer's tables, no files — with
a synthetic archive (default 100,000 studies / 1,000,000 instances; ``--quick``: 10,000 /
100,000) on SQLite (a file) and on PostgreSQL (a database of its own, created and dropped
here), then measures study-level ``Archive.find`` latency, consuming every match, for:

- ``patient-id``: PatientID exact;
- ``name-prefix``: PatientName ``ABCD*`` (the first letters of a stored family name);
- ``date-month``: StudyDate over one month;
- ``ct-month``: ModalitiesInStudy=CT and StudyDate over one month;
- ``accession``: AccessionNumber exact;
- ``universal-capped``: no keys, max_results=100.

With ``--indexes`` it then adds the indexes recommended in ``docs`` (the report of the
issue) and measures again ("after"). With ``--dimse`` it also times ``dicomvault serve``
on the same index over DIMSE two ways: ``/usr/bin/findscu -v`` (``TCP_NODELAY=1``) end to
end, its process start and printing included, and :mod:`dicomvault.net` over one open
association (C-FIND-RQ to final response, responses counted: the server's own answer
time). Prints median and p95 in ms per query per backend.

Run: ``python -m bench.bench_find [--quick] [--studies N --instances-per-study M]
[--indexes] [--dimse] [--runs R] [--json FILE]``. Targets: median < 50 ms, p95 < 150 ms
for the selective queries on both backends.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, insert, text

from dicomvault.archive import Archive
from dicomvault.config import load_settings
from dicomvault.index import Index
from dicomvault.index.schema import instances, patients, series, studies
from dicomvault.model.query import InformationModel, Level, Query, QueryKey

PG_ADMIN_URL = os.environ.get(
    "DICOMVAULT_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
MODALITIES = ("CT", "MR", "CR", "US", "DX", "MG", "PT", "SR")
CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"
_SYLLABLES = (
    "ka",
    "ro",
    "mi",
    "ta",
    "su",
    "ne",
    "lo",
    "ber",
    "shi",
    "van",
    "der",
    "mü",
    "ll",
    "son",
    "ez",
    "an",
    "ov",
    "ski",
    "li",
    "no",
)
CHUNK = 5000

#: Indexes the queries need beyond schema.py's (see the module docstring / the report).
RECOMMENDED = {
    "sqlite": [
        "CREATE INDEX IF NOT EXISTS ix_patients_name_nocase "
        "ON patients (patient_name COLLATE NOCASE)",
    ],
    "postgres": [
        "CREATE INDEX IF NOT EXISTS ix_patients_name_lower "
        "ON patients (lower(patient_name) text_pattern_ops)",
    ],
}


def family_name(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))).upper()


def fill(
    url: str, studies_count: int, instances_per_study: int = 10, *, seed: int = 7
) -> dict[str, list[str]]:
    """Create the schema at *url* and insert a synthetic archive; returns sample values
    (patient IDs, family names, accession numbers) to query for."""
    index = Index.open(url)
    index.close()
    rng = random.Random(seed)
    engine = create_engine(url)
    now = datetime.now(UTC)
    samples: dict[str, list[str]] = {"patient_id": [], "name": [], "accession": []}
    patient_count = max(1, studies_count // 2)
    names = [f"{family_name(rng)}^{family_name(rng).title()}" for _ in range(patient_count)]
    with engine.begin() as conn:
        for start in range(0, patient_count, CHUNK):
            rows = [
                {
                    "pk": p + 1,
                    "patient_id": f"PID{p:08d}",
                    "issuer_of_patient_id": "",
                    "patient_name": names[p],
                    "patient_birth_date": f"19{rng.randint(30, 99)}0101",
                    "patient_sex": rng.choice("MFO"),
                    "number_of_studies": 0,
                }
                for p in range(start, min(patient_count, start + CHUNK))
            ]
            conn.execute(insert(patients), rows)
    series_pk = instance_pk = 0
    study_rows: list[dict[str, Any]] = []
    series_rows: list[dict[str, Any]] = []
    instance_rows: list[dict[str, Any]] = []
    per_patient = [0] * patient_count

    def flush(force: bool = False) -> None:
        if not force and len(instance_rows) < CHUNK * 4:
            return
        with engine.begin() as conn:
            if study_rows:
                conn.execute(insert(studies), study_rows)
            if series_rows:
                conn.execute(insert(series), series_rows)
            if instance_rows:
                conn.execute(insert(instances), instance_rows)
        study_rows.clear()
        series_rows.clear()
        instance_rows.clear()

    for s in range(studies_count):
        patient = rng.randrange(patient_count)
        per_patient[patient] += 1
        n_series = rng.randint(1, 4)
        modalities = sorted({rng.choice(MODALITIES) for _ in range(n_series)})
        study_uid = f"2.25.{seed}{s:09d}"
        date = f"{rng.randint(2015, 2024)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
        accession = f"ACC{s:09d}"
        if rng.random() < max(0.001, 100 / studies_count):
            samples["patient_id"].append(f"PID{patient:08d}")
            samples["name"].append(names[patient].split("^")[0][:4])
            samples["accession"].append(accession)
        study_rows.append(
            {
                "pk": s + 1,
                "patient_pk": patient + 1,
                "study_instance_uid": study_uid,
                "study_date": date,
                "study_time": f"{rng.randint(0, 23):02d}3000",
                "accession_number": accession,
                "study_id": str(s),
                "study_description": "Study",
                "modalities_in_study": "\\".join(modalities),
                "sop_classes_in_study": CT_CLASS,
                "number_of_series": n_series,
                "number_of_instances": instances_per_study,
                "updated_at": now,
            }
        )
        left = instances_per_study
        for k in range(n_series):
            series_pk += 1
            count = left if k == n_series - 1 else left // (n_series - k)
            left -= count
            series_rows.append(
                {
                    "pk": series_pk,
                    "study_pk": s + 1,
                    "series_instance_uid": f"{study_uid}.{k + 1}",
                    "modality": modalities[k % len(modalities)],
                    "series_number": k + 1,
                    "number_of_instances": count,
                    "updated_at": now,
                }
            )
            for i in range(count):
                instance_pk += 1
                uid = f"{study_uid}.{k + 1}.{i + 1}"
                instance_rows.append(
                    {
                        "pk": instance_pk,
                        "series_pk": series_pk,
                        "sop_instance_uid": uid,
                        "sop_class_uid": CT_CLASS,
                        "transfer_syntax_uid": "1.2.840.10008.1.2.1",
                        "instance_number": i + 1,
                        "blob_name": uuid.uuid4().hex,
                        "size": 1000,
                        "sha256": "0" * 64,
                        "dataset_sha256": "0" * 64,
                        "received_at": now,
                        "metadata_json": json.dumps(
                            {
                                "00080016": {"vr": "UI", "Value": [CT_CLASS]},
                                "00080018": {"vr": "UI", "Value": [uid]},
                                "00080070": {"vr": "LO", "Value": ["ACME"]},
                            }
                        ),
                    }
                )
        flush()
    flush(force=True)
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE patients SET number_of_studies = (SELECT count(*) FROM studies "
                "WHERE studies.patient_pk = patients.pk)"
            )
        )
        if not url.startswith("sqlite"):
            for table in ("patients", "studies", "series", "instances"):
                conn.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'pk'), "
                        f"(SELECT max(pk) FROM {table}))"
                    )
                )
            conn.execute(text("ANALYZE"))
        else:
            conn.execute(text("ANALYZE"))
    engine.dispose()
    return samples


def _key(keyword: str, tag: int, vr: str, value: str) -> QueryKey:
    return QueryKey(tag, keyword, vr, value)


RETURN_KEYS = (
    _key("PatientName", 0x00100010, "PN", ""),
    _key("PatientID", 0x00100020, "LO", ""),
    _key("StudyDate", 0x00080020, "DA", ""),
    _key("AccessionNumber", 0x00080050, "SH", ""),
    _key("ModalitiesInStudy", 0x00080061, "CS", ""),
    _key("NumberOfStudyRelatedInstances", 0x00201208, "IS", ""),
)


def study_query(max_results: int | None = None, **values: str) -> Query:
    keys = {k.keyword: k for k in RETURN_KEYS}
    for keyword, value in values.items():
        base = keys[keyword]
        keys[keyword] = QueryKey(base.tag, keyword, base.vr, value)
    return Query(
        InformationModel.STUDY_ROOT,
        Level.STUDY,
        tuple(sorted(keys.values(), key=lambda k: k.tag)),
        max_results=max_results,
    )


def _month(rng: random.Random) -> str:
    year, month = rng.randint(2015, 2024), rng.randint(1, 12)
    return f"{year}{month:02d}01-{year}{month:02d}31"


def scenarios(
    samples: dict[str, list[str]], rng: random.Random
) -> dict[str, Callable[[], dict[str, str]]]:
    return {
        "patient-id": lambda: {"PatientID": rng.choice(samples["patient_id"])},
        "name-prefix": lambda: {"PatientName": rng.choice(samples["name"]) + "*"},
        "date-month": lambda: {"StudyDate": _month(rng)},
        "ct-month": lambda: {"ModalitiesInStudy": "CT", "StudyDate": _month(rng)},
        "accession": lambda: {"AccessionNumber": rng.choice(samples["accession"])},
        "universal-capped": lambda: {},
    }


def measure(
    archive: Archive, samples: dict[str, list[str]], runs: int
) -> dict[str, dict[str, float]]:
    rng = random.Random(11)
    out: dict[str, dict[str, float]] = {}
    for name, make in scenarios(samples, rng).items():
        times, counts = [], []
        cap = 100 if name == "universal-capped" else None
        for _ in range(runs):
            q = study_query(max_results=cap, **make())
            start = time.perf_counter()
            counts.append(sum(1 for _ in archive.find(q)))
            times.append((time.perf_counter() - start) * 1000)
        times.sort()
        out[name] = {
            "median_ms": statistics.median(times),
            "p95_ms": times[min(len(times) - 1, int(len(times) * 0.95))],
            "mean_matches": statistics.mean(counts),
        }
    return out


def measure_dimse(
    data_dir: Path, url: str, samples: dict[str, list[str]], runs: int
) -> dict[str, dict[str, float]]:
    """End-to-end over DIMSE: findscu against ``dicomvault serve`` on the same index."""
    port = 11000 + random.Random().randrange(2000)
    env = dict(os.environ, DICOMVAULT_INDEX__URL=url, TCP_NODELAY="1")
    exe = str(Path(sys.executable).with_name("dicomvault"))
    server = subprocess.Popen(
        [exe, "serve", "--data-dir", str(data_dir), "--dicom-port", str(port), "--http-port", "0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            probe = subprocess.run(
                ["/usr/bin/echoscu", "127.0.0.1", str(port), "-aec", "DICOMVAULT"],
                env=env,
                capture_output=True,
            )
            if probe.returncode == 0:
                break
            time.sleep(0.2)
        return {
            "findscu": _findscu_times(port, env, samples, runs),
            "lean": _lean_times(port, samples, runs * 4),
        }
    finally:
        server.terminate()
        server.wait(timeout=20)


def _figures(times: list[float], counts: list[int]) -> dict[str, float]:
    times.sort()
    return {
        "median_ms": statistics.median(times),
        "p95_ms": times[min(len(times) - 1, int(len(times) * 0.95))],
        "mean_matches": statistics.mean(counts),
    }


def _lean_times(port: int, samples: dict[str, list[str]], runs: int) -> dict[str, dict[str, float]]:
    """C-FIND-RQ to final response from :mod:`dicomvault.net` over one open association
    (responses counted, not decoded): the server's answer time over DIMSE, without
    findscu's own process start and printing (bench.bench_qr_orthanc does the same
    against Orthanc). On uvloop when installed, as the server."""
    import asyncio

    from bench.bench_qr_orthanc import _identifier
    from dicomvault.net import associate

    find_uid = "1.2.840.10008.5.1.4.1.2.2.1"

    async def main() -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        async with associate(
            "127.0.0.1",
            port,
            called_ae="DICOMVAULT",
            calling_ae="BENCHFIND",
            contexts=[(find_uid, ["1.2.840.10008.1.2"])],
            timeout=120,
        ) as assoc:
            for name, make in scenarios(samples, random.Random(11)).items():
                if name == "universal-capped":
                    continue
                times, counts = [], []
                for run in range(runs + 2):  # two warm-up rounds, not counted
                    identifier = _identifier(make())
                    start = time.perf_counter()
                    pending = 0
                    async for response in assoc.find(find_uid, identifier):
                        pending += response.status.status in (0xFF00, 0xFF01)
                    if run >= 2:
                        times.append((time.perf_counter() - start) * 1000)
                        counts.append(pending)
                out[name] = _figures(times, counts)
        return out

    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    result: dict[str, dict[str, float]] = uvloop.run(main())
    return result


def _findscu_times(
    port: int, env: dict[str, str], samples: dict[str, list[str]], runs: int
) -> dict[str, dict[str, float]]:
    """The whole ``findscu -v`` process per query (start, association, printing)."""
    rng = random.Random(11)
    out: dict[str, dict[str, float]] = {}
    for name, make in scenarios(samples, rng).items():
        if name == "universal-capped":
            continue
        times, counts = [], []
        for _ in range(runs):
            args = [
                "/usr/bin/findscu",
                "-v",
                "-S",
                "-aec",
                "DICOMVAULT",
                "127.0.0.1",
                str(port),
                "-k",
                "QueryRetrieveLevel=STUDY",
                "-k",
                "StudyInstanceUID",
            ]
            for keyword, value in make().items():
                args += ["-k", f"{keyword}={value}"]
            start = time.perf_counter()
            done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
            times.append((time.perf_counter() - start) * 1000)
            counts.append((done.stdout + done.stderr).count("(Pending)"))
        out[name] = _figures(times, counts)
    return out


@contextmanager
def backend(kind: str, work: Path) -> Iterator[str]:
    """An empty index database of the benchmark's own: a SQLite file, or a PostgreSQL
    database created here and dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{work / 'bench-index.sqlite3'}"
        return
    name = f"dicomvault_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def add_indexes(url: str, kind: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        for statement in RECOMMENDED[kind]:
            conn.execute(text(statement))
        conn.execute(text("ANALYZE"))
    engine.dispose()


def run(kind: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    result: dict[str, Any] = {}
    with backend(kind, work) as url:
        start = time.perf_counter()
        samples = fill(url, args.studies, args.instances_per_study)
        result["fill_s"] = round(time.perf_counter() - start, 1)
        data_dir = work / f"data-{kind}"
        settings = load_settings(None, {"storage": {"path": data_dir}, "index": {"url": url}})
        with Archive.open(settings, recover_on_start=False) as archive:
            result["before"] = measure(archive, samples, args.runs)
            if args.indexes:
                add_indexes(url, kind)
                result["after"] = measure(archive, samples, args.runs)
        if args.dimse:
            result["dimse"] = measure_dimse(data_dir, url, samples, max(5, args.runs // 4))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 studies / 100,000 instances")
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--instances-per-study", type=int, default=10)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--indexes", action="store_true", help="measure again with RECOMMENDED")
    parser.add_argument("--dimse", action="store_true", help="also time findscu end to end")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.studies = 10_000
    kinds = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    report: dict[str, Any] = {
        "studies": args.studies,
        "instances": args.studies * args.instances_per_study,
    }
    with tempfile.TemporaryDirectory(prefix="dicomvault-bench-find-") as tmp:
        for kind in kinds:
            report[kind] = run(kind, args, Path(tmp))
            print(
                f"== {kind}: {args.studies} studies, "
                f"{args.studies * args.instances_per_study} instances "
                f"(filled in {report[kind]['fill_s']} s)"
            )
            phases = [(p, report[kind].get(p)) for p in ("before", "after")]
            dimse = report[kind].get("dimse", {})
            phases += [("dimse, findscu -v", dimse.get("findscu"))]
            phases += [("dimse, dicomvault.net open association", dimse.get("lean"))]
            for phase, figures_of in phases:
                if figures_of is None:
                    continue
                print(f"  [{phase}]")
                for name, figures in figures_of.items():
                    extra = (
                        f"  ({figures['mean_matches']:.0f} matches)"
                        if "mean_matches" in figures
                        else ""
                    )
                    print(
                        f"    {name:18s} median {figures['median_ms']:7.1f} ms   "
                        f"p95 {figures['p95_ms']:7.1f} ms{extra}"
                    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
