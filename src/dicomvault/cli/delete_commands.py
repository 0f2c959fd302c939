"""``delete``, ``protect``, ``unprotect``, ``retention run``: deletion from the command
line (issue 6 part 4), through the archive's one deletion service."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import click
from rich.table import Table

from dicomvault.archive import Archive, audit
from dicomvault.archive.deletion import DeletionReport, Selection
from dicomvault.archive.retention import RetentionReport, run_once
from dicomvault.cli.common import (
    config_options,
    console,
    fail,
    human_bytes,
    load_cli_settings,
    out,
    run_guarded,
)
from dicomvault.model.errors import Protected
from dicomvault.model.uid import uid_problem

#: UIDs listed under the table at most (``--json`` lists them all).
_SHOWN = 20


def _report_table(report: DeletionReport) -> Table:
    verb = "would delete" if report.dry_run else "deleted"
    table = Table(title=f"{verb}: {report.target}", title_justify="left")
    for col in ("patients", "studies", "series", "instances", "bytes"):
        table.add_column(col, justify="right")
    table.add_row(
        str(report.patients),
        str(report.studies),
        str(report.series),
        str(report.instances),
        human_bytes(report.bytes),
    )
    return table


def _print_report(report: DeletionReport) -> None:
    out.print(_report_table(report))
    for title, uids in (
        ("studies", report.study_instance_uids),
        ("series", report.series_instance_uids),
        ("instances", report.sop_instance_uids),
    ):
        if uids:
            shown = ", ".join(uids[:_SHOWN])
            more = f" … and {len(uids) - _SHOWN} more" if len(uids) > _SHOWN else ""
            out.print(f"{title}: {shown}{more}", highlight=False)
    if report.protected:
        out.print(f"protected: {', '.join(report.protected)}", highlight=False)


def _selection(
    patient: str | None,
    issuer: str | None,
    study: str | None,
    series: str | None,
    instance: str | None,
) -> Selection:
    given = [
        (level, value)
        for level, value in (
            ("patient", patient),
            ("study", study),
            ("series", series),
            ("instance", instance),
        )
        if value is not None
    ]
    if len(given) != 1:
        fail("name exactly one of --patient, --study, --series, --instance", 2)
    level, value = given[0]
    if issuer is not None and level != "patient":
        fail("--issuer goes with --patient", 2)
    if level == "patient":
        if not value.strip():
            fail("--patient: the Patient ID is empty", 2)
        return Selection("patient", value, issuer=issuer)
    problem = uid_problem(value)
    if problem is not None:
        fail(f"--{level}: {value[:80]!r} {problem}", 2)
    return Selection(level, value)  # type: ignore[arg-type]


@click.command("delete")
@click.option("--patient", metavar="ID", help="Delete a patient (Patient ID) and all studies.")
@click.option("--issuer", metavar="I", help="Issuer of Patient ID of --patient.")
@click.option("--study", metavar="UID", help="Delete a study (Study Instance UID).")
@click.option("--series", metavar="UID", help="Delete a series (Series Instance UID).")
@click.option("--instance", metavar="UID", help="Delete an instance (SOP Instance UID).")
@click.option("--dry-run", is_flag=True, help="Say what would be deleted; change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--force", is_flag=True, help="Delete protected studies too.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@config_options
def delete_command(
    patient: str | None,
    issuer: str | None,
    study: str | None,
    series: str | None,
    instance: str | None,
    dry_run: bool,
    yes: bool,
    force: bool,
    as_json: bool,
    config: Path | None,
    data_dir: Path | None,
) -> None:
    """Delete a patient, study, series or instance: index rows and files.

    Asks for confirmation on a terminal (--yes skips it; without a terminal --yes is
    required). Exit status: 0 deleted (or dry run), 1 not confirmed, 2 on an error
    (nothing found, a protected study without --force, a bad option).
    """
    selection = _selection(patient, issuer, study, series, instance)

    def body() -> int:
        settings = load_cli_settings(config, data_dir)
        with Archive.open(settings, create=False) as archive:
            planned = archive.deletion.plan(selection)
            if dry_run:
                _show(planned, as_json)
                return 0
            if planned.protected and not force:
                raise Protected(
                    f"study {', '.join(planned.protected)} is protected: "
                    "'dicomvault unprotect' it or pass --force"
                )
            if not yes:
                if not sys.stdin.isatty():
                    fail("refusing to delete without --yes when not on a terminal", 2)
                _print_report(planned)
                if not click.confirm("delete these for good?", default=False):
                    console.print("nothing deleted")
                    return 1
            subjects = audit.subjects_of_selection(archive, selection)
            report = archive.deletion.delete(selection, force=force)
            audit.selection_deleted(  # Study Deleted (A.5.3.8) or Instances Accessed D
                archive, selection, report, subjects, user=audit.os_user(),
                host=socket.gethostname(), reason="dicomvault delete",
            )  # fmt: skip
            audit.close_trail(archive)
        _show(report, as_json)
        return 0

    run_guarded(body)


def _show(report: DeletionReport, as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(report.as_dict()))
    else:
        _print_report(report)


def _study_uid(value: str) -> str:
    problem = uid_problem(value)
    if problem is not None:
        fail(f"STUDY_UID {value[:80]!r} {problem}", 2)
    return value


@click.command("protect")
@click.argument("study_uid")
@click.option("--note", default="", help="Why (kept with the protection).")
@config_options
def protect_command(study_uid: str, note: str, config: Path | None, data_dir: Path | None) -> None:
    """Protect a study from retention rules and quota recycling (and from delete
    without --force)."""
    uid = _study_uid(study_uid)

    def body() -> int:
        settings = load_cli_settings(config, data_dir)
        with Archive.open(settings, create=False) as archive:
            changed = archive.deletion.protect(uid, note)
        console.print(f"study {uid} " + ("protected" if changed else "was already protected"))
        return 0

    run_guarded(body)


@click.command("unprotect")
@click.argument("study_uid")
@config_options
def unprotect_command(study_uid: str, config: Path | None, data_dir: Path | None) -> None:
    """Lift a study's protection."""
    uid = _study_uid(study_uid)

    def body() -> int:
        settings = load_cli_settings(config, data_dir)
        with Archive.open(settings, create=False) as archive:
            changed = archive.deletion.unprotect(uid)
        console.print(f"study {uid} " + ("unprotected" if changed else "was not protected"))
        return 0

    run_guarded(body)


@click.group("retention")
def retention_group() -> None:
    """Retention rules, quota recycling and the deletion queue ([retention] settings)."""


def _print_retention(report: RetentionReport) -> None:
    verb = "would delete" if report.dry_run else "deleted"
    table = Table(title=f"retention pass ({verb})", title_justify="left")
    for col in ("study", "why", "instances", "bytes"):
        table.add_column(col, justify="left" if col in ("study", "why") else "right")
    for why, reports in (("rule", report.retention), ("quota", report.recycled)):
        for r in reports:
            if r.instances:
                uid = r.target.removeprefix("study ")
                table.add_row(uid, why, str(r.instances), human_bytes(r.bytes))
    out.print(table)
    if not report.dry_run:
        console.print(
            f"{report.queue_finished} queued blob(s) removed, "
            f"{report.rejected_swept} rejected instance(s) swept"
        )
    console.print(f"archive holds {human_bytes(report.used_bytes)}")


@retention_group.command("run")
@click.option("--dry-run", is_flag=True, help="Say what would be deleted; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@config_options
def retention_run(dry_run: bool, as_json: bool, config: Path | None, data_dir: Path | None) -> None:
    """Apply the retention rules and the quota once (what the server's runner does every
    retention.interval_seconds)."""

    def body() -> int:
        settings = load_cli_settings(config, data_dir)
        with Archive.open(settings, create=False) as archive:
            report = run_once(archive, dry_run=dry_run)
            audit.close_trail(archive)  # its Study Deleted messages written before closing
        if as_json:
            out.print_json(json.dumps(report.as_dict()))
        else:
            _print_retention(report)
        return 0

    run_guarded(body)
