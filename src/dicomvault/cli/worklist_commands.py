"""``worklist add|list|show|cancel``: Modality Worklist items (docs/worklist.md)."""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from dicomvault.archive import Archive, audit, worklist
from dicomvault.cli.common import config_options, console, fail, load_cli_settings, out, run_guarded
from dicomvault.security.audit import ActionCode


@contextmanager
def _archive(config: Path | None, data_dir: Path | None, *, create: bool) -> Iterator[Archive]:
    # No start-up recovery: a server may be running on the same data directory.
    # ``create``: items may be added before the first ``serve``; listing, showing or
    # cancelling in a directory that holds no archive is a mistyped --data-dir.
    settings = load_cli_settings(config, data_dir)
    with Archive.open(settings, recover_on_start=False, create=create) as archive:
        yield archive


def _audit(archive: Archive, item: worklist.WorklistItem, action: ActionCode, what: str) -> None:
    """Procedure Record (PS3.15 A.5.3.15) by the operating-system user, written before the
    archive closes."""
    audit.procedure_record(
        archive, action=action, user=audit.os_user(), host=socket.gethostname(),
        patient_id=item.patient_id, study_uid=item.study_instance_uid,
        accession=item.accession_number, description=f"worklist item {item.id} {what}",
        patient_name=item.patient_name,
    )  # fmt: skip
    audit.close_trail(archive)


def _read_item(source: str) -> dict[str, Any]:
    """The item in FILE (``-``: standard input) as a JSON object."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {source}: {exc}", 2)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"{source} is not JSON: {exc}", 2)
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, dict):
        fail(f"{source} does not hold one JSON object (a worklist item)", 2)
    return value


def _from_options(options: dict[str, Any]) -> dict[str, Any]:
    """A keyword-form item from the options of ``worklist add``."""
    step: dict[str, Any] = {
        "Modality": options["modality"],
        "ScheduledProcedureStepStartDate": options["date"],
        "ScheduledProcedureStepStartTime": options["time"],
    }
    for option, keyword in (
        ("station_ae", "ScheduledStationAETitle"),
        ("step_id", "ScheduledProcedureStepID"),
        ("description", "ScheduledProcedureStepDescription"),
        ("performing_physician", "ScheduledPerformingPhysicianName"),
    ):
        if options[option]:
            step[keyword] = options[option]
    item: dict[str, Any] = {
        "PatientID": options["patient_id"],
        "ScheduledProcedureStepSequence": [step],
    }
    for option, keyword in (
        ("patient_name", "PatientName"),
        ("birth_date", "PatientBirthDate"),
        ("sex", "PatientSex"),
        ("accession", "AccessionNumber"),
        ("study_uid", "StudyInstanceUID"),
        ("procedure_id", "RequestedProcedureID"),
        ("procedure_description", "RequestedProcedureDescription"),
        ("referring_physician", "ReferringPhysicianName"),
    ):
        if options[option]:
            item[keyword] = options[option]
    return item


def _print_item(item: worklist.WorklistItem) -> None:
    console.print(
        f"worklist item {item.id}: {item.status}, patient {item.patient_id} "
        f"{item.patient_name or ''}, accession {item.accession_number or '-'}, "
        f"study {item.study_instance_uid}",
        highlight=False,
    )
    for step in item.steps:
        console.print(
            f"  step {step.scheduled_procedure_step_id}: {step.status}, {step.modality or '?'} "
            f"on {step.start_date} {step.start_time or ''} "
            f"at {'/'.join(step.station_ae_titles) or 'any station'}",
            highlight=False,
        )


@click.group("worklist")
def worklist_group() -> None:
    """Modality Worklist items (PS3.4 K): what the modalities will find with C-FIND."""


_ADD_OPTIONS = (
    ("--patient-id", "Patient ID (0010,0020)."),
    ("--patient-name", "Patient's Name, e.g. DOE^JOHN."),
    ("--birth-date", "Patient's Birth Date, YYYYMMDD."),
    ("--sex", "Patient's Sex: M, F or O."),
    ("--accession", "Accession Number."),
    ("--study-uid", "Study Instance UID [default: generated]."),
    ("--procedure-id", "Requested Procedure ID [default: generated]."),
    ("--procedure-description", "Requested Procedure Description."),
    ("--referring-physician", "Referring Physician's Name."),
    ("--modality", "Modality of the scheduled step, e.g. CT."),
    ("--date", "Scheduled Procedure Step Start Date, YYYYMMDD."),
    ("--time", "Scheduled Procedure Step Start Time, HHMM[SS]."),
    ("--station-ae", "Scheduled Station AE Title (the modality's AE title)."),
    ("--step-id", "Scheduled Procedure Step ID [default: generated]."),
    ("--description", "Scheduled Procedure Step Description."),
    ("--performing-physician", "Scheduled Performing Physician's Name."),
)


def _add_options(func: Any) -> Any:
    for name, help_text in reversed(_ADD_OPTIONS):
        func = click.option(name, default=None, help=help_text)(func)
    return func


@worklist_group.command("add")
@click.argument("file", required=False)
@_add_options
@click.option("--json", "as_json", is_flag=True, help="Print the stored item as JSON.")
@config_options
def worklist_add(
    file: str | None, as_json: bool, config: Path | None, data_dir: Path | None, **options: Any
) -> None:
    """Add a worklist item from FILE (JSON, "-" for standard input) or from the options.

    FILE holds one item in the DICOM JSON Model or in keyword form
    ({"PatientID": "123", "ScheduledProcedureStepSequence": [{"Modality": "CT", …}]}).
    Without FILE, --patient-id, --modality, --date and --time are needed.
    """

    def body() -> int:
        given = [name for name, value in options.items() if value]
        if file is not None:
            if given:
                fail("give either FILE or the item options, not both", 2)
            item = _read_item(file)
        else:
            missing = [o for o in ("patient_id", "modality", "date", "time") if not options[o]]
            if missing:
                fail(
                    "without FILE, these options are needed: "
                    + ", ".join("--" + m.replace("_", "-") for m in missing),
                    2,
                )
            item = _from_options(options)
        with _archive(config, data_dir, create=True) as archive:
            added = worklist.add_item(archive, item)
            _audit(archive, added, "C", "added")
        if as_json:
            out.print_json(json.dumps(added.to_json()))
        else:
            _print_item(added)
        return 0

    run_guarded(body)


@worklist_group.command("list")
@click.option(
    "--status",
    type=click.Choice(worklist.STATUSES),
    default=None,
    help="Only items in this status.",
)
@click.option("--patient-id", default=None, help="Only this Patient ID.")
@click.option("--accession", default=None, help="Only this Accession Number.")
@click.option("--modality", default=None, help="Only items with a step of this modality.")
@click.option("--date", default=None, help="Only items with a step on this date (YYYYMMDD or A-B).")
@click.option("--limit", type=click.IntRange(1, 10000), default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the items as JSON.")
@config_options
def worklist_list(
    status: str | None,
    patient_id: str | None,
    accession: str | None,
    modality: str | None,
    date: str | None,
    limit: int,
    as_json: bool,
    config: Path | None,
    data_dir: Path | None,
) -> None:
    """List worklist items, newest first."""

    def body() -> int:
        with _archive(config, data_dir, create=False) as archive:
            items = worklist.list_items(
                archive,
                status=status,
                patient_id=patient_id,
                accession_number=accession,
                modality=modality,
                date=date,
                limit=limit,
            )
        if as_json:
            out.print_json(json.dumps([item.to_json() for item in items]))
            return 0
        table = Table(show_header=True)
        table.add_column("id", no_wrap=True, min_width=32)  # the key of show / cancel: whole
        for column in ("status", "patient", "name", "accession", "modality", "start"):
            table.add_column(column)
        for item in items:
            first = item.steps[0] if item.steps else None
            table.add_row(
                item.id,
                item.status,
                item.patient_id,
                item.patient_name or "",
                item.accession_number or "",
                " ".join(s.modality or "?" for s in item.steps),
                f"{first.start_date} {first.start_time or ''}" if first else "",
            )
        out.print(table)
        return 0

    run_guarded(body)


@worklist_group.command("show")
@click.argument("item_id")
@click.option("--json", "as_json", is_flag=True, help="Print the item as JSON.")
@config_options
def worklist_show(item_id: str, as_json: bool, config: Path | None, data_dir: Path | None) -> None:
    """Show worklist item ITEM_ID (with its DICOM JSON data set under --json)."""

    def body() -> int:
        with _archive(config, data_dir, create=False) as archive:
            item = worklist.get_item(archive, item_id)
        if as_json:
            out.print_json(json.dumps(item.to_json()))
        else:
            _print_item(item)
        return 0

    run_guarded(body)


@worklist_group.command("cancel")
@click.argument("item_id")
@config_options
def worklist_cancel(item_id: str, config: Path | None, data_dir: Path | None) -> None:
    """Cancel worklist item ITEM_ID: it leaves the worklist (kept as CANCELLED)."""

    def body() -> int:
        with _archive(config, data_dir, create=False) as archive:
            item = worklist.cancel_item(archive, item_id)
            _audit(archive, item, "U", "cancelled")
        _print_item(item)
        return 0

    run_guarded(body)
