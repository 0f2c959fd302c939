"""``dicomvault``: the command-line entry point."""

from __future__ import annotations

import importlib

import click

from dicomvault import __version__

#: Command name → (module in ``dicomvault.cli``, attribute). A command's module is
#: imported when that command runs (or ``--help`` lists them all): importing every
#: command up front loaded the web stack, TLS, rendering and de-identification into
#: ``dicomvault import`` and ``stats`` too — 185 MB before any work, more than the
#: 150 MB a 1 GiB import may peak at (docs/benchmarks.md); ``stats`` now starts at ~120.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("serve", "serve_command"),
    "import": ("archive_commands", "import_command"),
    "verify": ("archive_commands", "verify_command"),
    "stats": ("archive_commands", "stats_command"),
    "db": ("archive_commands", "db_group"),
    "config": ("archive_commands", "config_group"),
    "echo": ("net_commands", "echo_command"),
    "store": ("net_commands", "store_command"),
    "find": ("qr_commands", "find_command"),
    "move": ("qr_commands", "move_command"),
    "get": ("qr_commands", "get_command"),
    "commit": ("commit_command", "commit_command"),
    "tls": ("tls_commands", "tls_group"),
    "user": ("user_commands", "user_group"),
    "token": ("user_commands", "token_group"),
    "remote": ("remote_commands", "remote_group"),
    "audit": ("audit_commands", "audit_command"),
    "delete": ("delete_commands", "delete_command"),
    "protect": ("delete_commands", "protect_command"),
    "unprotect": ("delete_commands", "unprotect_command"),
    "retention": ("delete_commands", "retention_group"),
    "worklist": ("worklist_commands", "worklist_group"),
    "anonymize": ("anonymize_command", "anonymize_command"),
}


class LazyGroup(click.Group):
    """A group whose commands are imported on first use (click's documented pattern
    for large CLIs: "Lazily Loading Subcommands")."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands or cmd_name not in COMMANDS:
            return self.commands.get(cmd_name)
        module, attribute = COMMANDS[cmd_name]
        command = getattr(importlib.import_module(f"dicomvault.cli.{module}"), attribute)
        if not isinstance(command, click.Command) or command.name != cmd_name:
            raise TypeError(f"dicomvault.cli.{module}.{attribute} is not the {cmd_name} command")
        self.add_command(command)
        return command


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="dicomvault")
def cli() -> None:
    """dicomvault — a DICOM archive (PACS): store, index, query and retrieve images.

    Every command that touches the archive takes --config FILE and --data-dir DIR.
    """


def main() -> None:
    cli()
