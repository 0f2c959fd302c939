"""Generate ``src/dicomvault/dicom/deid_table.py`` from the standard's de-identification tables.

Usage::

    python tools/gen_deid_table.py E1_1_JSON E3_10_1_JSON [--output PATH]

``E1_1_JSON`` is PS3.15 Table E.1-1 "Application Level Confidentiality Profile
Attributes" as extracted by innolitics/dicom-standard
(``standard/confidentiality_profile_attributes.json``): a list of rows with ``name``,
``tag`` (``"(0008,0050)"``, ``"(50XX,XXXX)"``, ``"(GGGG,EEEE) WHERE GGGG IS ODD"``),
``basicProfile`` and one column per option (``rtnUIDsOpt`` …).

``E3_10_1_JSON`` is PS3.15 Table E.3.10-1 "Safe Private Attributes": an object with
``edition`` and ``rows``, each with ``tag`` (``"(0019,xx23)"``), ``private_creator`` and
``vr`` (other keys are ignored).

The output is data only, formatted the way ``ruff format`` leaves it, so that the
committed module is exactly what this script writes (``tests/security/
test_deidentify_table.py`` regenerates it and compares). Any row this script does not
understand — an unknown action code, option column or tag form — stops it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "src" / "dicomvault" / "dicom" / "deid_table.py"
LINE = 100

#: Where the inputs came from (they are not in this repository: PS3.15 is © NEMA, used
#: here as the standard's own data; the JSON files are reference extractions).
E1_1_SOURCE = (
    "innolitics/dicom-standard, standard/confidentiality_profile_attributes.json, "
    "commit 7f4749d09ed3 (2025-01-28; the file last regenerated 2024-04-18 for 2024b, "
    "unchanged through 2024e)"
)
E1_1_EDITION = "2024b-2024e"
E3_10_1_SOURCE = (
    "pymedphys/pymedphys, lib/pymedphys/_dicom/deidentify/_standard/e3_10_1.json, "
    "commit 985a1bd904a7 (each row's tag, Private Creator and VR, transcribed)"
)

#: Table E.1-1 option columns → our option names (``dicom/deidentify.py`` ``Options``).
OPTION_COLUMNS = {
    "rtnSafePrivOpt": "retain_safe_private",
    "rtnUIDsOpt": "retain_uids",
    "rtnDevIdOpt": "retain_device_identity",
    "rtnInstIdOpt": "retain_institution_identity",
    "rtnPatCharsOpt": "retain_patient_characteristics",
    "rtnLongFullDatesOpt": "retain_full_dates",
    "rtnLongModifDatesOpt": "retain_modified_dates",
    "cleanDescOpt": "clean_descriptors",
    "cleanStructContOpt": "clean_structured_content",
    "cleanGraphOpt": "clean_graphics",
}
#: Columns that describe the row, not an action.
INFO_COLUMNS = {"name", "tag", "id", "basicProfile", "stdCompIOD"}
#: PS3.15 Table E.1-1a action codes.
BASIC_ACTIONS = {"X", "Z", "D", "U", "K", "C", "X/Z", "X/D", "Z/D", "X/Z/D", "X/Z/U*"}
OPTION_ACTIONS = {"K", "C"}

_TAG = re.compile(r"^\(([0-9A-F]{4}),([0-9A-F]{4})\)$")
_REPEATING = re.compile(r"^\(([0-9A-F]{2})XX,([0-9A-F]{4}|XXXX)\)$")
_PRIVATE = "(GGGG,EEEE) WHERE GGGG IS ODD"
_SAFE_TAG = re.compile(r"^\(([0-9A-Fa-f]{4}),xx([0-9A-Fa-f]{2})\)$")


def _q(text: str) -> str:
    """A double-quoted Python string literal (as ruff format writes it)."""
    if not text.isascii() or any(c in text for c in '"\\\n'):
        raise SystemExit(f"unexpected character in {text!r}")
    return f'"{text}"'


def _row(row: dict[str, Any]) -> tuple[str, str, list[tuple[str, str]]]:
    unknown = set(row) - INFO_COLUMNS - set(OPTION_COLUMNS)
    if unknown:
        raise SystemExit(f"{row['tag']}: unknown column(s) {sorted(unknown)}")
    basic = row["basicProfile"]
    if basic not in BASIC_ACTIONS:
        raise SystemExit(f"{row['tag']}: unknown action {basic!r}")
    options = []
    for column, option in OPTION_COLUMNS.items():
        if column in row:
            if row[column] not in OPTION_ACTIONS:
                raise SystemExit(f"{row['tag']}: unknown {column} action {row[column]!r}")
            options.append((option, row[column]))
    # One cell holds "Icon Image Sequence\n\n(see Note 11)": whitespace is normalised.
    return " ".join(row["name"].split()), basic, options


def _options(options: Sequence[tuple[str, str]]) -> str:
    return "{" + ", ".join(f"{_q(k)}: {_q(v)}" for k, v in options) + "}"


def _entry(key: str, name: str, basic: str, options: Sequence[tuple[str, str]]) -> list[str]:
    """One ``key: (name, action, {options}),`` entry, wrapped as ruff format would."""
    parts = [_q(name), _q(basic), _options(options)]
    flat = f"    {key}: ({', '.join(parts)}),"
    if len(flat) <= LINE:
        return [flat]
    lines = [f"    {key}: ("]
    for part in parts:
        if len(f"        {part},") <= LINE:
            lines.append(f"        {part},")
        else:  # the options dict alone is too long: one option per line
            lines.append("        {")
            lines.extend(f"            {_q(k)}: {_q(v)}," for k, v in options)
            lines.append("        },")
    lines.append("    ),")
    return lines


def render(e1_1: Sequence[dict[str, Any]], e3_10_1: dict[str, Any], digests: Iterable[str]) -> str:
    """The module text for the two tables."""
    attributes: dict[int, list[str]] = {}
    repeating: dict[tuple[int, int | None], list[str]] = {}
    private: list[str] | None = None
    for raw in e1_1:
        name, basic, options = _row(raw)
        tag = raw["tag"]
        if match := _TAG.match(tag):
            value = int(match[1] + match[2], 16)
            if value in attributes:
                raise SystemExit(f"duplicate row {tag}")
            attributes[value] = _entry(f"0x{value:08X}", name, basic, options)
        elif match := _REPEATING.match(tag):
            group = int(match[1], 16) << 8
            element = None if match[2] == "XXXX" else int(match[2], 16)
            key = f"(0x{group:04X}, {'None' if element is None else f'0x{element:04X}'})"
            repeating[(group, element)] = _entry(key, name, basic, options)
        elif tag == _PRIVATE:
            private = [f"{_q(name)}, {_q(basic)}, {_options(options)}"]
        else:
            raise SystemExit(f"unknown tag form {tag!r}")
    if private is None:
        raise SystemExit("Table E.1-1 has no Private Attributes row")

    safe: list[tuple[int, int, str, str]] = []
    for raw in e3_10_1["rows"]:
        match = _SAFE_TAG.match(raw["tag"])
        if match is None:
            raise SystemExit(f"unknown safe private tag form {raw['tag']!r}")
        safe.append((int(match[1], 16), int(match[2], 16), raw["private_creator"], raw["vr"]))

    out = [
        '"""PS3.15 Annex E de-identification tables, as data (no logic: see deidentify.py).',
        "",
        *_wrap(
            '- Table E.1-1 "Application Level Confidentiality Profile Attributes", PS3.15 '
            f"{E1_1_EDITION} web edition, {len(e1_1)} rows, as extracted into JSON by "
            + E1_1_SOURCE
            + "."
        ),
        *_wrap(
            f'- Table E.3.10-1 "Safe Private Attributes", PS3.15 {e3_10_1["edition"]}, '
            f"{len(safe)} rows, as extracted by " + E3_10_1_SOURCE + "."
        ),
        "",
        "Input SHA-256: " + ", ".join(digests) + ".",
        "",
        "Generated by tools/gen_deid_table.py — do not edit.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from typing import Final",
        "",
        "#: (attribute name, Basic Profile action, {option: action}) — PS3.15 Table E.1-1a",
        "#: codes: X remove, Z zero length or dummy, D dummy, U new UID, K keep, C clean, and",
        "#: the combined X/Z, X/D, Z/D, X/Z/D, X/Z/U* that depend on the IOD's type.",
        "Row = tuple[str, str, dict[str, str]]",
        "",
        "#: Tag (group << 16 | element) → row, for every attribute Table E.1-1 names by tag.",
        "ATTRIBUTES: Final[dict[int, Row]] = {",
    ]
    for value in sorted(attributes):
        out.extend(attributes[value])
    out += [
        "}",
        "",
        "#: Repeating groups (PS3.5 7.6): (group with its low byte zero, element or None for",
        "#: every element of the group) → row.",
        "REPEATING_GROUPS: Final[dict[tuple[int, int | None], Row]] = {",
    ]
    for key in sorted(repeating, key=lambda k: (k[0], -1 if k[1] is None else k[1])):
        out.extend(repeating[key])
    out += [
        "}",
        "",
        "#: The row of every private attribute (odd group).",
        f"PRIVATE_ATTRIBUTES: Final[Row] = ({private[0]})",
        "",
        "#: Table E.3.10-1: (group, element byte within the Private Creator's block, Private",
        "#: Creator, VR) of each private attribute that is safe to retain.",
        "SAFE_PRIVATE: Final[tuple[tuple[int, int, str, str], ...]] = (",
    ]
    out.extend(f"    (0x{g:04X}, 0x{e:02X}, {_q(c)}, {_q(v)})," for g, e, c, v in safe)
    out += [")", ""]
    return "\n".join(out)


def _wrap(text: str) -> list[str]:
    """A bullet of the docstring, wrapped with a hanging indent."""
    lines: list[str] = []
    current = ""
    for word in text.split(" "):
        if current and len(current) + 1 + len(word) > LINE - 8:
            lines.append(current)
            current = "  " + word
        else:
            current = f"{current} {word}" if current else word
    lines.append(current)
    return lines


def generate(e1_1_path: Path, e3_10_1_path: Path) -> str:
    """The module text from the two JSON files."""
    raw_e1 = e1_1_path.read_bytes()
    raw_e3 = e3_10_1_path.read_bytes()
    digests = [
        f"{e1_1_path.name} {hashlib.sha256(raw_e1).hexdigest()[:16]}…",
        f"{e3_10_1_path.name} {hashlib.sha256(raw_e3).hexdigest()[:16]}…",
    ]
    return render(json.loads(raw_e1), json.loads(raw_e3), digests)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("e1_1", type=Path, help="Table E.1-1 JSON (innolitics/dicom-standard)")
    parser.add_argument("e3_10_1", type=Path, help="Table E.3.10-1 JSON (rows: tag, creator, vr)")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    args.output.write_text(generate(args.e1_1, args.e3_10_1), encoding="utf-8")
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
