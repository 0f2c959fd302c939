"""``remote``: remote AEs kept in the index, next to the ``[remotes.NAME]`` of the
configuration file (docs/configuration.md, "Remote AEs managed at run time").

The same entries as ``/api/remotes``; a running server sees a change within
:data:`~dicomvault.archive.remotes.CACHE_SECONDS`. Each change is audited as a Security
Alert, Software Configuration (PS3.15 A.5.3.11), by the operating-system user.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from dicomvault.archive import remotes
from dicomvault.cli.common import (
    config_options,
    console,
    load_cli_settings,
    open_index,
    out,
    run_guarded,
)
from dicomvault.config import ALL_PERMISSIONS, Settings
from dicomvault.index import Index


@contextmanager
def _place(
    config: Path | None, data_dir: Path | None, *, create: bool
) -> Iterator[tuple[Settings, Index]]:
    """Settings and index; ``create``: make the archive when new (``remote add``), else
    a mistyped ``--data-dir`` is an error."""
    settings = load_cli_settings(config, data_dir)
    with open_index(settings, create=create) as index:
        yield settings, index


def _who() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@click.group("remote")
def remote_group() -> None:
    """Remote AEs (title, host, port, TLS, permissions) kept in the archive's index."""


@remote_group.command("add")
@click.argument("name")
@click.option("--ae-title", required=True, help="The remote's AE title (1-16 characters).")
@click.option("--host", required=True, help="Its host name or address.")
@click.option("--port", type=int, required=True, help="Its DICOM port (1-65535).")
@click.option("--tls", is_flag=True, help="Associate with it over TLS (PS3.15 B.12).")
@click.option(
    "--permission",
    "permissions",
    multiple=True,
    type=click.Choice(ALL_PERMISSIONS),
    help="A service it may use when it calls us (repeat) [default: all].",
)
@click.option(
    "--check-host", is_flag=True, help="Accept its associations only from --host/--host-alias."
)
@click.option(
    "--host-alias", "hosts", multiple=True, help="Another address it may call from (repeat)."
)
@click.option(
    "--deidentify",
    is_flag=True,
    help="Send it de-identified copies only (C-MOVE destination, C-GET; PS3.15 Annex E).",
)
@config_options
def remote_add(
    name: str,
    ae_title: str,
    host: str,
    port: int,
    tls: bool,
    permissions: tuple[str, ...],
    check_host: bool,
    hosts: tuple[str, ...],
    deidentify: bool,
    config: Path | None,
    data_dir: Path | None,
) -> None:
    """Add remote AE NAME (a name of the configuration file cannot be used)."""
    data: dict[str, Any] = {
        "ae_title": ae_title,
        "host": host,
        "port": port,
        "tls": tls,
        "check_host": check_host,
        "hosts": list(hosts),
        "deidentify": deidentify,
    }
    if permissions:
        data["permissions"] = list(permissions)

    def body() -> int:
        with _place(config, data_dir, create=True) as place:
            entry = remotes.add_remote(place, name, data, actor=_who())
        r = entry.remote
        console.print(
            f"added remote {name!r}: {r.ae_title}@{r.host}:{r.port}"
            f"{' (TLS)' if r.tls else ''}{' (de-identified copies)' if r.deidentify else ''}, "
            f"permissions {', '.join(r.permissions) or 'none'}",
            highlight=False,
        )
        return 0

    run_guarded(body)


@remote_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="JSON for programs.")
@config_options
def remote_list(as_json: bool, config: Path | None, data_dir: Path | None) -> None:
    """List the remote AEs, from the configuration file and from the index."""

    def body() -> int:
        with _place(config, data_dir, create=False) as place:
            found = remotes.list_remotes(place)
        if as_json:
            out.print_json(json.dumps([r.as_dict() for r in found]))
            return 0
        if not found:
            console.print("no remote AEs (add one: dicomvault remote add NAME --ae-title …)")
            return 0
        table = Table(title="remote AEs", title_justify="left")
        for col in ("name", "AE title", "address", "TLS", "permissions", "source"):
            table.add_column(col)
        for entry in found:
            r = entry.remote
            table.add_row(
                entry.name,
                r.ae_title,
                f"{r.host}:{r.port}" + (" (checked)" if r.check_host else ""),
                "yes" if r.tls else "",
                ", ".join(r.permissions),
                entry.source,
            )
        out.print(table)
        return 0

    run_guarded(body)


@remote_group.command("remove")
@click.argument("name")
@config_options
def remote_remove(name: str, config: Path | None, data_dir: Path | None) -> None:
    """Remove remote AE NAME from the index (entries of the file stay)."""

    def body() -> int:
        with _place(config, data_dir, create=False) as place:
            remotes.remove_remote(place, name, actor=_who())
        console.print(f"removed remote {name!r}", highlight=False)
        return 0

    run_guarded(body)
