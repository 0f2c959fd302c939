"""Docs that cannot rot: every setting is documented, every command is in the README."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from dicomvault.cli.main import cli
from dicomvault.config import Settings

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
    missing = [name for name in cli.commands if f"dicomvault {name}" not in text]
    assert missing == []
