"""Docs that cannot rot: every setting is documented, every command is in the README."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
from pydantic import BaseModel

from dicomvault.cli.main import cli
from dicomvault.config import Settings
from dicomvault.index import Index

ROOT = Path(__file__).resolve().parents[2]


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += _keys(annotation, f"{prefix}{name}.")
        elif name != "remotes":
            keys.append(prefix + name)
    return keys


def test_every_setting_is_documented() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    missing = [key for key in _keys(Settings) if f"`{key}`" not in text]
    assert missing == []


def test_every_command_is_in_the_readme() -> None:
    text = (ROOT / "README.md").read_text()
    names = cli.list_commands(click.Context(cli))
    missing = [name for name in names if f"dicomvault {name}" not in text]
    assert names and missing == []


def test_every_command_loads_under_its_name() -> None:
    """The CLI imports a command's module only when it runs (cli/main.py COMMANDS)."""
    ctx = click.Context(cli)
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        assert command is not None and command.name == name
    assert cli.get_command(ctx, "no-such-command") is None


def test_a_command_imports_only_what_it_needs(tmp_path: Path) -> None:
    """``dicomvault stats`` (like ``import``) does not load the web stack: every
    command's module imported up front held 185 MB before any work."""
    (tmp_path / "data").mkdir()
    Index.open(f"sqlite:///{tmp_path / 'data' / 'index.sqlite3'}").close()  # stats needs one
    script = (
        "import atexit, sys\n"
        "from dicomvault.cli.main import cli\n"
        "atexit.register(lambda: print('LOADED', [m for m in ('starlette', 'uvicorn',"
        " 'httpx', 'dicomvault.web') if m in sys.modules], file=sys.stderr))\n"
        f"cli(['stats', '--data-dir', {str(tmp_path / 'data')!r}])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "LOADED []" in done.stderr, done.stderr
