"""What every CLI command shares: options, settings, error reporting."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click
from rich.console import Console

from dicomvault.config import Settings, load_settings
from dicomvault.model.errors import DicomVaultError

if TYPE_CHECKING:
    from dicomvault.index import Index

F = TypeVar("F", bound=Callable[..., Any])

console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def load_cli_settings(
    config: Path | None, data_dir: Path | None, **overrides: dict[str, Any]
) -> Settings:
    """Settings from ``--config`` and ``--data-dir`` (which wins over file and env)."""
    merged: dict[str, dict[str, Any]] = dict(overrides)
    if data_dir is not None:
        merged.setdefault("storage", {})["path"] = data_dir
    return load_settings(config, merged or None)


def config_options(func: F) -> F:
    """``--config FILE`` and ``--data-dir DIR``, taken by every command that touches the
    archive."""
    func = click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Data directory (setting storage.path) [default: ./dicomvault-data].",
    )(func)
    func = click.option(
        "--config",
        "config",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        envvar="DICOMVAULT_CONFIG",
        help="TOML configuration file.",
    )(func)
    return func


def fail(message: str, code: int = 1) -> NoReturn:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    sys.exit(code)


def run_guarded(func: Callable[[], int | None]) -> None:
    """Run a command body; a :class:`DicomVaultError` becomes a message and exit 2."""
    try:
        code = func()
    except DicomVaultError as exc:
        fail(str(exc), 2)
    sys.exit(code or 0)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@contextmanager
def open_index(settings: Settings, *, create: bool) -> Iterator[Index]:
    """The index of ``settings``, closed afterwards. ``create``: the archive is made when
    new (``user add``, ``remote add``); otherwise a directory that holds none is an
    error (:func:`dicomvault.archive.ready_data_dir`)."""
    from dicomvault.archive import ready_data_dir  # not every command needs the archive
    from dicomvault.index import Index

    ready_data_dir(settings, create=create)
    index = Index.open(settings.index_url, create=create)
    try:
        yield index
    finally:
        index.close()
