"""``dicomvault anonymize``: de-identified copies (PS3.15 Annex E, Basic Application Level
Confidentiality Profile and options) of files or stored studies, written to a folder,
stored in this archive as new studies, or sent to a Storage SCP (docs/deidentification.md).

All or nothing: every instance is de-identified into a staging folder first; one that
cannot be (unreadable, not DICOM when named, Burned In Annotation YES) stops the command
with exit 1 before anything is written, stored or sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any, cast

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dicomvault.archive import Archive, audit
from dicomvault.archive.anonymize import (
    Source,
    Staging,
    deid_keys,
    file_sources,
    output_folder_ready,
    publish,
    stage,
    staging_folder,
    store_staged,
    study_sources,
)
from dicomvault.cli.common import config_options, console, fail, load_cli_settings, out, run_guarded
from dicomvault.cli.net_commands import resolve_target, target_tls, tls_option
from dicomvault.config import Settings
from dicomvault.dicom.deid_profile import Options, RetainDates
from dicomvault.model.records import StoreResult
from dicomvault.net import AssociationAborted, NetError
from dicomvault.net.sender import SendResult, send_files

#: Problems listed under the summary at most (``--json`` lists them all).
_SHOWN = 50


def _progress(label: str, quiet: bool) -> Progress:
    return Progress(
        TextColumn(f"[bold]{label}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=quiet or not console.is_terminal,
    )


@click.command("anonymize")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--study",
    "studies",
    multiple=True,
    metavar="UID",
    help="A stored study to de-identify (repeatable); with or instead of PATHS.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Write the de-identified files to this folder (IMG00001.dcm …).",
)
@click.option("--store", is_flag=True, help="Store them in this archive as new studies.")
@click.option(
    "--to", "target", default=None, help="Send them (C-STORE) to AET@HOST:PORT or a remote's name."
)
@click.option("--force", is_flag=True, help="With --out: add to a folder that is not empty.")
@click.option("--retain-uids", is_flag=True, help="Retain UIDs Option (PS3.15 E.3.9).")
@click.option(
    "--retain-dates",
    type=click.Choice(["full", "modified"]),
    default=None,
    help="Retain Longitudinal Temporal Information with Full or Modified Dates (E.3.6).",
)
@click.option("--retain-patient-characteristics", is_flag=True, help="Option E.3.7.")
@click.option("--retain-device-identity", is_flag=True, help="Option E.3.8.")
@click.option("--retain-institution-identity", is_flag=True, help="Option E.3.11.")
@click.option("--retain-safe-private", is_flag=True, help="Retain Safe Private Option (E.3.10).")
@click.option("--clean-descriptors", is_flag=True, help="Clean Descriptors Option (E.3.5).")
@click.option(
    "--allow-burned-in",
    is_flag=True,
    help="De-identify instances with Burned In Annotation YES (their pixels are not cleaned).",
)
@click.option(
    "--calling-ae", default=None, help="With --to: our AE title [default: dicom.ae_title]."
)
@tls_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@config_options
def anonymize_command(
    paths: tuple[Path, ...],
    studies: tuple[str, ...],
    out_dir: Path | None,
    store: bool,
    target: str | None,
    force: bool,
    retain_uids: bool,
    retain_dates: str | None,
    retain_patient_characteristics: bool,
    retain_device_identity: bool,
    retain_institution_identity: bool,
    retain_safe_private: bool,
    clean_descriptors: bool,
    allow_burned_in: bool,
    calling_ae: str | None,
    use_tls: bool,
    as_json: bool,
    config: Path | None,
    data_dir: Path | None,
) -> None:
    """De-identify files and folders (PATHS, recursively) or stored studies (--study) per
    PS3.15 Annex E, into exactly one of --out DIR, --store or --to TARGET.

    Exit status: 0 when every instance was de-identified and delivered; 1 when one could
    not be (nothing is then written, stored or sent) or a send failed; 2 on a usage or
    configuration error or an unknown study.
    """
    outputs = [
        name for name, given in (("--out", out_dir), ("--store", store), ("--to", target)) if given
    ]
    if len(outputs) != 1:
        raise click.UsageError(
            "give exactly one output: --out DIR, --store or --to TARGET"
            + (f" (got {' and '.join(outputs)})" if outputs else "")
        )
    if not paths and not studies:
        raise click.UsageError("nothing to de-identify: give PATHS or --study UID")
    if force and out_dir is None:
        raise click.UsageError("--force goes with --out")
    if store and retain_uids:
        # Same SOP Instance UIDs, other bytes: the copies would replace the originals
        # (storage.duplicates) or be refused — never what anyone wants.
        raise click.UsageError(
            "--retain-uids cannot go with --store (the copies would have the originals' UIDs)"
        )
    options = Options(
        retain_uids=retain_uids,
        retain_dates=cast(RetainDates, retain_dates or "none"),
        retain_patient_characteristics=retain_patient_characteristics,
        retain_device_identity=retain_device_identity,
        retain_institution_identity=retain_institution_identity,
        retain_safe_private=retain_safe_private,
        clean_descriptors=clean_descriptors,
    )

    def body() -> int:
        settings = load_cli_settings(config, data_dir)
        keys = deid_keys(settings)
        destination = _Destination(settings, target, calling_ae, use_tls) if target else None
        created = out_dir is not None and not out_dir.exists()
        if out_dir is not None:
            output_folder_ready(out_dir, force=force)
        with ExitStack() as stack:
            if created:
                assert out_dir is not None  # a folder we made holds nothing after a failure
                stack.callback(_remove_if_empty, out_dir)
            archive = None
            if studies or store:
                # Stored studies must exist; --store alone may start a new archive.
                archive = stack.enter_context(Archive.open(settings, create=not studies))
                stack.callback(audit.close_trail, archive)  # queued messages written first
            try:
                sources = file_sources(paths)
            except FileNotFoundError as exc:
                fail(str(exc), 2)
            if studies:
                assert archive is not None
                sources += study_sources(archive, studies)  # NotFound: exit 2
            folder = Path(stack.enter_context(staging_folder(out_dir)))
            started = time.perf_counter()
            with _progress("de-identify", as_json) as progress:
                task = progress.add_task("de-identify", total=len(sources))
                staging = stage(
                    archive,
                    sources,
                    keys,
                    options,
                    folder,
                    allow_burned_in=allow_burned_in,
                    on_done=lambda _: progress.advance(task),
                )
            report = _Report(staging, options, outputs[0])
            if staging.ok and not staging.staged:
                staging.failed.append((", ".join(map(str, paths)), "no DICOM instance found"))
            if not staging.ok:
                report.print(as_json, time.perf_counter() - started)
                return 1
            from_archive = _from_archive(staging)
            if out_dir is not None:
                report.written = [str(p) for p in publish(staging, out_dir)]
                report.destination = str(out_dir.resolve())
                if archive is not None and from_archive:
                    audit.exported(
                        archive,
                        from_archive,
                        user=audit.os_user(),
                        destination=report.destination,
                    )
            elif store:
                assert archive is not None
                with _progress("store", as_json) as progress:
                    task = progress.add_task("store", total=len(staging.staged))
                    results = store_staged(
                        archive, staging, on_done=lambda _: progress.advance(task)
                    )
                report.stored = results
                report.destination = str(settings.storage.path.resolve())
                tally = _tally(
                    r for r, s in zip(results, staging.staged, strict=True) if s.source.path
                )
                if tally:  # files from outside: a Data Import (PS3.15 A.5.3.5) as `import`
                    audit.imported(
                        archive,
                        tally,
                        user=audit.os_user(),
                        media=", ".join(str(p.resolve()) for p in paths),
                    )
            else:
                assert destination is not None
                report.sent = destination.send(staging, as_json)
                report.destination = destination.describe()
                failed = {r.path for r in report.sent if r.outcome == "failed"}
                if archive is not None and from_archive:
                    audit.exported(
                        archive,
                        from_archive,
                        user=audit.os_user(),
                        destination=f"dicom://{report.destination}",
                        receiver=(destination.aet, destination.host),
                        failed=sum(
                            1 for s in staging.staged if s.source.stored and s.path in failed
                        ),
                    )
            report.print(as_json, time.perf_counter() - started)
            return 0 if report.ok else 1

    run_guarded(body)


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


def _from_archive(staging: Staging) -> dict[str, dict[str, int]]:
    """Original study → SOP class → instances, of the staged instances read from the
    archive (what an Export message names)."""
    found: dict[str, dict[str, int]] = {}
    for item in staging.staged:
        if item.source.stored is not None:
            counts = found.setdefault(item.original_study_instance_uid, {})
            counts[item.sop_class_uid] = counts.get(item.sop_class_uid, 0) + 1
    return found


def _tally(results: Any) -> dict[str, dict[str, int]]:
    tally: dict[str, dict[str, int]] = {}
    for result in results:
        counts = tally.setdefault(result.study_instance_uid, {})
        counts[result.sop_class_uid] = counts.get(result.sop_class_uid, 0) + 1
    return tally


class _Destination:
    """``--to``: a Storage SCP, resolved before any work is done (a bad TARGET is a usage
    error, exit 2)."""

    def __init__(
        self, settings: Settings, target: str, calling_ae: str | None, use_tls: bool
    ) -> None:
        self.aet, self.host, self.port = resolve_target(target, settings)
        self.tls = target_tls(target, settings, use_tls)
        self.calling = calling_ae or settings.dicom.ae_title

    def describe(self) -> str:
        return f"{self.aet}@{self.host}:{self.port}"

    def send(self, staging: Staging, quiet: bool) -> list[SendResult]:
        with _progress("send", quiet) as progress:
            task = progress.add_task("send", total=len(staging.staged))
            try:
                return asyncio.run(
                    send_files(
                        [staging.folder],
                        self.host,
                        self.port,
                        called_ae=self.aet,
                        calling_ae=self.calling,
                        on_result=lambda _: progress.advance(task),
                        ssl=self.tls,
                    )
                )
            except (AssociationAborted, NetError, OSError) as exc:
                fail(f"sending to {self.describe()} failed: {exc}", 1)


class _Report:
    """What happened, as a table or as JSON."""

    def __init__(self, staging: Staging, options: Options, output: str) -> None:
        self.staging = staging
        self.options = options
        self.output = output
        self.destination = ""
        self.written: list[str] = []
        self.stored: list[StoreResult] = []
        self.sent: list[SendResult] = []

    @property
    def ok(self) -> bool:
        return self.staging.ok and all(r.outcome != "failed" for r in self.sent)

    def as_dict(self, seconds: float) -> dict[str, Any]:
        staged = self.staging.staged
        studies: dict[str, dict[str, Any]] = {}
        for item in staged:
            entry = studies.setdefault(
                item.study_instance_uid,
                {"study_instance_uid": item.study_instance_uid, "instances": 0},
            )
            entry["instances"] += 1
            if item.source.stored is not None:  # the operator named it: no new disclosure
                entry["source_study_instance_uid"] = item.original_study_instance_uid
        by_path = {str(item.path): item for item in staged}
        return {
            "ok": self.ok,
            "output": self.output,
            "destination": self.destination,
            "options": [meaning for _, meaning in self.options.codes()],
            "instances": len(staged),
            "studies": list(studies.values()),
            "written": self.written,
            "stored": dict(Counter(r.status.value for r in self.stored)),
            "sent": dict(Counter(r.outcome for r in self.sent)),
            "send_problems": [
                {"source": _label(by_path, r.path), "reason": r.reason}
                for r in self.sent
                if r.outcome != "sent"
            ],
            "failed": [{"source": s, "reason": r} for s, r in self.staging.failed],
            "skipped": [{"source": s, "reason": r} for s, r in self.staging.skipped],
            "seconds": round(seconds, 3),
        }

    def print(self, as_json: bool, seconds: float) -> None:
        data = self.as_dict(seconds)
        if as_json:
            out.print_json(json.dumps(data))
            return
        table = Table(title="anonymize summary", title_justify="left")
        table.add_column("outcome")
        table.add_column("instances", justify="right")
        table.add_row("de-identified", str(data["instances"]) if self.staging.ok else "0")
        table.add_row(
            "failed (nothing was written)" if data["failed"] else "failed", str(len(data["failed"]))
        )
        table.add_row("skipped (not DICOM)", str(len(data["skipped"])))
        for status, count in data["stored"].items():
            table.add_row(f"stored: {status}", str(count))
        for outcome, count in data["sent"].items():
            table.add_row(f"sent: {outcome}" if outcome != "sent" else "sent", str(count))
        console.print(table)
        if self.staging.ok:
            console.print(f"options: {'; '.join(data['options'])}", highlight=False)
            verb = {"--out": "written to", "--store": "stored in", "--to": "sent to"}[self.output]
            console.print(f"{verb} {data['destination']}", highlight=False)
            for study in data["studies"]:
                origin = study.get("source_study_instance_uid")
                console.print(
                    f"study {study['study_instance_uid']}: {study['instances']} instance(s)"
                    + (f" (from {origin})" if origin else ""),
                    highlight=False,
                )
        for key, colour in (("failed", "red"), ("send_problems", "red"), ("skipped", "yellow")):
            title = key.replace("_", " ")
            for problem in data[key][:_SHOWN]:
                console.print(
                    f"[{colour}]{title}[/] {problem['source']}: {problem['reason']}",
                    highlight=False,
                )
            if len(data[key]) > _SHOWN:
                console.print(f"… and {len(data[key]) - _SHOWN} more", highlight=False)
        if any("Burned In Annotation" in problem["reason"] for problem in data["failed"]):
            console.print(
                "hint: --allow-burned-in de-identifies them anyway (text burned into the "
                "pixels stays)",
                highlight=False,
            )
        if self.staging.ok:
            console.print(f"{data['instances']} instance(s) in {seconds:.1f} s", highlight=False)
        else:
            console.print("nothing was written, stored or sent", highlight=False)


def _label(by_path: dict[str, Any], path: Path) -> str:
    item = by_path.get(str(path))
    source: Source | None = getattr(item, "source", None)
    return source.label if source is not None else str(path)
