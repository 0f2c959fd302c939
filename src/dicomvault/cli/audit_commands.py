"""``dicomvault audit``: search the audit trail (DICOM Audit Messages, PS3.15 A.5)
recorded in the index (table ``audit_events``)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import click
from rich.table import Table
from rich.text import Text

from dicomvault.cli.common import config_options, console, fail, load_cli_settings, out, run_guarded
from dicomvault.index import Index
from dicomvault.index.audit import MAX_LIMIT, AuditFilter, search
from dicomvault.model.digits import ascii_digits

#: Event IDs of PS3.16 CID 400 by the names the command accepts too.
EVENT_NAMES = {
    "application-activity": "110100",
    "begin-transferring": "110102",
    "instances-accessed": "110103",
    "instances-transferred": "110104",
    "study-deleted": "110105",
    "export": "110106",
    "query": "110112",
    "security-alert": "110113",
    "user-authentication": "110114",
}


def _time(value: str | None, option: str) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        fail(f"{option}: {value!r} is not an ISO 8601 date or date-time", 2)


@click.command("audit")
@click.option("--since", help="From this ISO 8601 date-time on (e.g. 2026-01-31T08:00).")
@click.option("--until", help="Up to this ISO 8601 date-time.")
@click.option(
    "--event",
    help="Audit Event ID (e.g. 110112) or name: " + ", ".join(sorted(EVENT_NAMES)) + ".",
)
@click.option("--user", help="UserID of the requesting participant (AE title or user name).")
@click.option("--patient", help="Patient ID named by the message.")
@click.option("--study", help="Study Instance UID named by the message.")
@click.option(
    "--outcome",
    type=click.Choice(["0", "4", "8", "12"]),
    help="EventOutcomeIndicator: 0 success, 4 minor, 8 serious, 12 major failure.",
)
@click.option(
    "--limit",
    type=click.IntRange(1, MAX_LIMIT),
    default=100,
    show_default=True,
    help="Newest messages shown at most.",
)
@click.option("--json", "as_json", is_flag=True, help="JSON lines with the XML of each message.")
@config_options
def audit_command(
    since: str | None,
    until: str | None,
    event: str | None,
    user: str | None,
    patient: str | None,
    study: str | None,
    outcome: str | None,
    limit: int,
    as_json: bool,
    config: Path | None,
    data_dir: Path | None,
) -> None:
    """Search the audit trail (PS3.15 A.5 audit messages), newest first."""

    def body() -> int:
        event_id = EVENT_NAMES.get(event or "", event)
        if event_id is not None and not ascii_digits(event_id):
            fail(f"--event: {event!r} is neither an Audit Event ID nor a known name", 2)
        where = AuditFilter(
            since=_time(since, "--since"),
            until=_time(until, "--until"),
            event_id=event_id,
            user=user,
            patient=patient,
            study=study,
            outcome=None if outcome is None else int(outcome),
            limit=limit,
        )
        settings = load_cli_settings(config, data_dir)
        index = Index.open(settings.index_url, create=False)
        try:
            rows = search(index, where)
        finally:
            index.close()
        if as_json:
            for row in rows:
                click.echo(json.dumps(row.as_dict()))
            return 0
        if not rows:
            console.print("no audit messages match")
            return 0
        table = Table("time", "event", "type", "outcome", "user", "peer", "patient", "study")
        for row in rows:
            table.add_row(
                *(
                    Text(value)
                    for value in (
                        row.time.isoformat(timespec="seconds"),
                        row.event_id,
                        row.event_type,
                        str(row.outcome),
                        row.user,
                        row.peer,
                        row.patient_id,
                        row.study_instance_uid,
                    )
                )
            )
        out.print(table)
        return 0

    run_guarded(body)
