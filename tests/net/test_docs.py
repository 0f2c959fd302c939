"""docs/net.md names every public name of dicomvault.net (docs that cannot rot)."""

from __future__ import annotations

from pathlib import Path

import dicomvault.net

DOC = Path(__file__).resolve().parents[2] / "docs" / "net.md"


def test_every_public_name_is_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    missing = [name for name in dicomvault.net.__all__ if f"`{name}" not in text]
    assert missing == []


def test_public_names_exist() -> None:
    for name in dicomvault.net.__all__:
        assert hasattr(dicomvault.net, name), name
