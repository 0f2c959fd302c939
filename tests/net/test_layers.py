"""Layering (DESIGN.md): net/ is a library; dimse/ never reaches index/ or storage/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "dicomvault"


def _imports(package: str) -> set[str]:
    found: set[str] = set()
    for path in (SRC / package).glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("dicomvault")}


def test_net_imports_only_itself() -> None:
    assert {m for m in _imports("net") if not m.startswith("dicomvault.net")} <= {"dicomvault"}


@pytest.mark.parametrize("forbidden", ["dicomvault.index", "dicomvault.storage", "dicomvault.web"])
def test_dimse_stays_an_adapter(forbidden: str) -> None:
    assert not any(m.startswith(forbidden) for m in _imports("dimse"))


@pytest.mark.parametrize(
    "forbidden", ["dicomvault.index", "dicomvault.storage", "dicomvault.dimse", "dicomvault.net"]
)
def test_web_stays_an_adapter(forbidden: str) -> None:
    assert not any(m.startswith(forbidden) for m in _imports("web"))


@pytest.mark.parametrize(
    "forbidden",
    [
        "dicomvault.index",
        "dicomvault.storage",
        "dicomvault.dicom",
        "dicomvault.dimse",
        "dicomvault.web",
        "dicomvault.net",
    ],
)
def test_hl7_stays_an_adapter(forbidden: str) -> None:
    assert not any(m.startswith(forbidden) for m in _imports("hl7"))


def test_hl7_does_not_import_pydicom() -> None:
    text = "\n".join(p.read_text(encoding="utf-8") for p in (SRC / "hl7").glob("*.py"))
    assert "import pydicom" not in text
    assert "from pydicom" not in text
