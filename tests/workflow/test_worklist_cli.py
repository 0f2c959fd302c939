"""``dicomvault worklist add|list|show|cancel`` through click's runner on a data directory,
including the bad inputs (exit 2 with a message naming the problem)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner, Result

from dicomvault.cli.main import cli


def run(data: Path, *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(cli, ["worklist", *args, "--data-dir", str(data)], input=stdin)


def test_add_from_options_list_show_cancel(tmp_path: Path) -> None:
    data = tmp_path / "data"
    added = run(
        data, "add", "--json",
        "--patient-id", "P1", "--patient-name", "DOE^JOHN", "--accession", "A1",
        "--modality", "CT", "--date", "20250310", "--time", "0930", "--station-ae", "CT1",
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    item = json.loads(added.stdout)
    assert item["status"] == "SCHEDULED" and item["accession_number"] == "A1"
    assert item["steps"][0]["station_ae_titles"] == ["CT1"]

    listed = run(data, "list", "--json", "--modality", "CT")
    assert [i["id"] for i in json.loads(listed.stdout)] == [item["id"]]
    table = run(data, "list")
    assert table.exit_code == 0 and item["id"] in table.stdout

    shown = run(data, "show", item["id"], "--json")
    assert json.loads(shown.stdout)["dataset"] == item["dataset"]

    cancelled = run(data, "cancel", item["id"])
    assert cancelled.exit_code == 0 and "CANCELLED" in cancelled.output
    assert json.loads(run(data, "list", "--json", "--status", "SCHEDULED").stdout) == []


def test_add_from_file_and_stdin(tmp_path: Path) -> None:
    data = tmp_path / "data"
    model = {
        "00100020": {"vr": "LO", "Value": ["P7"]},
        "00400100": {
            "vr": "SQ",
            "Value": [
                {
                    "00080060": {"vr": "CS", "Value": ["US"]},
                    "00400002": {"vr": "DA", "Value": ["20250312"]},
                    "00400003": {"vr": "TM", "Value": ["1100"]},
                }
            ],
        },
    }
    path = tmp_path / "item.json"
    path.write_text(json.dumps([model]))
    from_file = run(data, "add", str(path))
    assert from_file.exit_code == 0, from_file.output
    assert "patient P7" in from_file.output
    keyword = {
        "PatientID": "P8",
        "ScheduledProcedureStepSequence": {
            "Modality": "US",
            "ScheduledProcedureStepStartDate": "20250312",
            "ScheduledProcedureStepStartTime": "1130",
        },
    }
    from_stdin = run(data, "add", "-", stdin=json.dumps(keyword))
    assert from_stdin.exit_code == 0, from_stdin.output
    assert len(json.loads(run(data, "list", "--json").stdout)) == 2


def test_bad_input(tmp_path: Path) -> None:
    data = tmp_path / "data"
    missing = run(data, "add", "--patient-id", "P1")
    assert missing.exit_code == 2
    assert "--modality, --date, --time" in missing.output

    bad_date = run(
        data, "add", "--patient-id", "P1", "--modality", "CT", "--date", "2025-03-10",
        "--time", "0930",
    )  # fmt: skip
    assert bad_date.exit_code == 2
    assert "Invalid value for VR DA: '2025-03-10'" in bad_date.output

    (tmp_path / "bad.json").write_text("{nope")
    not_json = run(data, "add", str(tmp_path / "bad.json"))
    assert not_json.exit_code == 2 and "is not JSON" in not_json.output

    no_sps = run(data, "add", "-", stdin='{"PatientID": "P1"}')
    assert no_sps.exit_code == 2 and "ScheduledProcedureStepSequence" in no_sps.output

    both = run(data, "add", str(tmp_path / "bad.json"), "--patient-id", "P1")
    assert both.exit_code == 2 and "not both" in both.output

    unknown = run(data, "cancel", "0" * 32)
    assert unknown.exit_code == 2 and "no worklist item" in unknown.output
    bad_list = run(data, "list", "--date", "March")
    assert bad_list.exit_code == 2 and "date:" in bad_list.output
