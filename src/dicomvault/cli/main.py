"""``dicomvault``: the command-line entry point."""

from __future__ import annotations

import click

from dicomvault import __version__
from dicomvault.cli.anonymize_command import anonymize_command
from dicomvault.cli.archive_commands import (
    config_group,
    db_group,
    import_command,
    stats_command,
    verify_command,
)
from dicomvault.cli.audit_commands import audit_command
from dicomvault.cli.commit_command import commit_command
from dicomvault.cli.delete_commands import (
    delete_command,
    protect_command,
    retention_group,
    unprotect_command,
)
from dicomvault.cli.net_commands import echo_command, store_command
from dicomvault.cli.qr_commands import find_command, get_command, move_command
from dicomvault.cli.remote_commands import remote_group
from dicomvault.cli.serve import serve_command
from dicomvault.cli.tls_commands import tls_group
from dicomvault.cli.user_commands import token_group, user_group
from dicomvault.cli.worklist_commands import worklist_group


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="dicomvault")
def cli() -> None:
    """dicomvault — a DICOM archive (PACS): store, index, query and retrieve images.

    Every command that touches the archive takes --config FILE and --data-dir DIR.
    """


for command in (
    serve_command,
    import_command,
    verify_command,
    stats_command,
    db_group,
    config_group,
    echo_command,
    store_command,
    find_command,
    move_command,
    get_command,
    commit_command,
    tls_group,
    user_group,
    token_group,
    remote_group,
    audit_command,
    delete_command,
    protect_command,
    unprotect_command,
    retention_group,
    worklist_group,
    anonymize_command,
):
    cli.add_command(command)


def main() -> None:
    cli()
