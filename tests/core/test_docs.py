"""Docs that cannot rot: every setting is documented, every command is in the README."""

from __future__ import annotations

import os
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


def test_a_server_without_jwt_does_not_load_pyjwt_and_cryptography() -> None:
    """PyJWT pulls in ``cryptography`` (10 MiB of a server's memory at rest): it is
    imported where a token is first checked, not when the server and its web app load."""
    script = (
        "import sys\n"
        "import dicomvault.cli.serve, dicomvault.web.app, dicomvault.dimse.access\n"
        "print('LOADED', [m for m in ('jwt', 'cryptography') if m in sys.modules])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "LOADED []" in done.stdout, done.stdout


def _venv_command(tmp_path: Path, *args: str) -> str:
    """The command `make` would run to create .venv in a fresh clone (dry run)."""
    for name in ("Makefile", "pyproject.toml"):
        (tmp_path / name).write_bytes((ROOT / name).read_bytes())
    # Not what an enclosing `make test PYTHON=...` passes down to sub-makes.
    dropped = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "PYTHON")
    clean = {key: value for key, value in os.environ.items() if key not in dropped}
    done = subprocess.run(
        ["make", "-n", "--no-print-directory", "-C", str(tmp_path), ".venv/bin/python", *args],
        capture_output=True,
        text=True,
        check=True,
        env=clean,
    )
    return done.stdout.splitlines()[0]


def test_the_venv_is_made_with_the_distributions_python_when_it_can(tmp_path: Path) -> None:
    """README, "The two commands": /usr/bin/python3 (optimised by the distribution) when
    it is 3.11 or newer and can make a venv, else python3; PYTHON=... overrides."""
    probe = "import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))"
    system = Path("/usr/bin/python3")
    usable = system.exists() and subprocess.run([str(system), "-c", probe]).returncode == 0
    expected = "/usr/bin/python3" if usable else "python3"
    assert _venv_command(tmp_path) == f"{expected} -m venv .venv"
    assert _venv_command(tmp_path, f"PYTHON={sys.executable}") == (
        f"{sys.executable} -m venv .venv"
    )
