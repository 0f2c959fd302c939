"""``user`` and ``token``: HTTP users, roles and API tokens (docs/dicomweb.md, "Users,
roles and tokens")."""

from __future__ import annotations

import json
import sys
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from pathlib import Path

import click
from rich.table import Table

from dicomvault.archive import audit, users
from dicomvault.cli.common import (
    config_options,
    console,
    fail,
    load_cli_settings,
    open_index,
    out,
    run_guarded,
)
from dicomvault.index import Index


def _index(
    config: Path | None, data_dir: Path | None, *, create: bool
) -> AbstractContextManager[Index]:
    """The index; ``create``: make the archive when new (adding a user before the first
    ``serve`` is fine), else a mistyped ``--data-dir`` is an error."""
    return open_index(load_cli_settings(config, data_dir), create=create)


def _audit(
    config: Path | None, data_dir: Path | None, index: Index, subject: str, what: str
) -> None:
    """Security Alert, Software Configuration (PS3.15 A.5.3.11) for a user or token
    change, by the operating-system user running the command."""
    import getpass

    try:
        who = getpass.getuser()
    except (KeyError, OSError):
        who = "unknown"
    settings = load_cli_settings(config, data_dir)
    audit.configuration_changed(settings, index, user=who, subject=subject, description=what)


def _when(value: datetime | None) -> str:
    return "" if value is None else value.isoformat(timespec="seconds")


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    password: str = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    return password


@click.group("user")
def user_group() -> None:
    """HTTP users and their roles (viewer, uploader, admin, researcher)."""


@user_group.command("add")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(users.ROLES),
    required=True,
    help="viewer: search and retrieve; uploader: + store; admin: + delete and administration; "
    "researcher: WADO-RS retrieval of de-identified copies only.",
)
@click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password from the first line of standard input (no prompt).",
)
@config_options
def user_add(
    name: str, role: str, password_stdin: bool, config: Path | None, data_dir: Path | None
) -> None:
    """Add HTTP user NAME; asks for the password twice (at least 8 characters)."""

    def body() -> int:
        problem = users.name_problem(name)
        if problem is not None:
            fail(problem, 2)
        password = _read_password(password_stdin)
        problem = users.password_problem(password)
        if problem is not None:
            fail(problem, 2)
        with _index(config, data_dir, create=True) as index:
            users.add_user(index, name, password, role)
            _audit(config, data_dir, index, name, f"user {name!r} added with role {role}")
        console.print(f"added user {name!r} with role {role}", highlight=False)
        return 0

    run_guarded(body)


@user_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="JSON for programs.")
@config_options
def user_list(as_json: bool, config: Path | None, data_dir: Path | None) -> None:
    """List the HTTP users and their roles."""

    def body() -> int:
        with _index(config, data_dir, create=False) as index:
            found = users.list_users(index)
        if as_json:
            out.print_json(
                json.dumps(
                    [
                        {
                            "name": u.name,
                            "role": u.role,
                            "created_at": _when(u.created_at),
                            "disabled": u.disabled,
                        }
                        for u in found
                    ]
                )
            )
            return 0
        if not found:
            console.print(
                "no HTTP users: HTTP is open on loopback only "
                "(add one: dicomvault user add admin --role admin)"
            )
            return 0
        table = Table(title="HTTP users", title_justify="left")
        for col in ("name", "role", "created"):
            table.add_column(col)
        for u in found:
            table.add_row(
                u.name, u.role + (" (disabled)" if u.disabled else ""), _when(u.created_at)
            )
        out.print(table)
        return 0

    run_guarded(body)


@user_group.command("remove")
@click.argument("name")
@click.option("--force", is_flag=True, help="Remove even the last admin while others remain.")
@config_options
def user_remove(name: str, force: bool, config: Path | None, data_dir: Path | None) -> None:
    """Remove HTTP user NAME and every token of it."""

    def body() -> int:
        with _index(config, data_dir, create=False) as index:
            users.remove_user(index, name, force=force)
            _audit(config, data_dir, index, name, f"user {name!r} removed")
            left = len(users.list_users(index))
        console.print(f"removed user {name!r}", highlight=False)
        if not left:
            console.print(
                "[yellow]no HTTP users left:[/] HTTP now answers only on loopback "
                "(a server on another address refuses every request)"
            )
        return 0

    run_guarded(body)


@click.group("token")
def token_group() -> None:
    """API tokens (sent as 'Authorization: Bearer TOKEN')."""


@token_group.command("create")
@click.argument("user")
@click.option("--label", default="", help="What the token is for (shown by 'token list').")
@click.option(
    "--expires-days",
    type=click.IntRange(min=1),
    default=None,
    help="Days until the token expires [default: never].",
)
@config_options
def token_create(
    user: str, label: str, expires_days: int | None, config: Path | None, data_dir: Path | None
) -> None:
    """Create an API token for USER and print it (once: only its hash is kept)."""

    def body() -> int:
        expires = None if expires_days is None else timedelta(days=expires_days)
        with _index(config, data_dir, create=False) as index:
            new = users.create_token(index, user, label, expires)
            _audit(config, data_dir, index, user, f"API token {new.id} created for {user!r}")
        out.print(new.token, highlight=False, soft_wrap=True)
        until = f"expires {_when(new.expires_at)}" if new.expires_at else "does not expire"
        console.print(
            f"token {new.id} for {user!r} ({until}); store it now, it is not shown again",
            highlight=False,
        )
        return 0

    run_guarded(body)


@token_group.command("list")
@click.option("--user", "user", default=None, help="Only this user's tokens.")
@click.option("--json", "as_json", is_flag=True, help="JSON for programs.")
@config_options
def token_list(user: str | None, as_json: bool, config: Path | None, data_dir: Path | None) -> None:
    """List API tokens (never the tokens themselves): id, user, label, state, dates."""

    def body() -> int:
        with _index(config, data_dir, create=False) as index:
            found = users.list_tokens(index, user)
        if as_json:
            out.print_json(
                json.dumps(
                    [
                        {
                            "id": t.id,
                            "user": t.user,
                            "label": t.label,
                            "state": t.state(),
                            "created_at": _when(t.created_at),
                            "expires_at": _when(t.expires_at) or None,
                            "revoked_at": _when(t.revoked_at) or None,
                            "last_used_at": _when(t.last_used_at) or None,
                        }
                        for t in found
                    ]
                )
            )
            return 0
        table = Table(title="API tokens", title_justify="left")
        for col in ("id", "user", "label", "state", "created", "expires", "last used"):
            table.add_column(col, justify="right" if col == "id" else "left")
        for t in found:
            table.add_row(
                str(t.id),
                t.user,
                t.label,
                t.state(),
                _when(t.created_at),
                _when(t.expires_at),
                _when(t.last_used_at),
            )
        out.print(table)
        return 0

    run_guarded(body)


@token_group.command("revoke")
@click.argument("token_id", metavar="ID", type=int)
@config_options
def token_revoke(token_id: int, config: Path | None, data_dir: Path | None) -> None:
    """Revoke API token ID at once (see 'token list')."""

    def body() -> int:
        with _index(config, data_dir, create=False) as index:
            users.revoke_token(index, token_id)
            _audit(config, data_dir, index, str(token_id), f"API token {token_id} revoked")
        console.print(f"revoked token {token_id}")
        return 0

    run_guarded(body)
