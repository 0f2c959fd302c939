from __future__ import annotations

from pathlib import Path

import pytest

from dicomvault.config import load_settings
from dicomvault.model.errors import ConfigError


def test_defaults_need_no_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DICOMVAULT_CONFIG", raising=False)
    s = load_settings()
    assert s.dicom.port == 11112
    assert s.dicom.ae_title == "DICOMVAULT"
    assert s.http.port == 8080
    assert s.storage.path == Path("./dicomvault-data")
    assert s.index_url.startswith("sqlite:///") and s.index_url.endswith("index.sqlite3")


def test_file_then_env_then_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[dicom]\nport = 104\nae_title = "FROMFILE"\n'
        '[storage]\nduplicates = "reject"\n'
        '[remotes.pacs]\nae_title = "PACS"\nhost = "127.0.0.1"\nport = 4242\n'
    )
    monkeypatch.setenv("DICOMVAULT_DICOM__PORT", "2104")
    s = load_settings(cfg)
    assert s.dicom.port == 2104  # env beats file
    assert s.dicom.ae_title == "FROMFILE"
    assert s.storage.duplicates == "reject"
    assert s.remotes["pacs"].port == 4242
    s = load_settings(cfg, {"dicom": {"port": 5104}})
    assert s.dicom.port == 5104  # explicit options beat env


@pytest.mark.parametrize(
    ("text", "env", "needle"),
    [
        ("[dicom]\nport = 70000\n", {}, "dicom.port (env DICOMVAULT_DICOM__PORT)"),
        ("[storage]\nduplicates = 'sometimes'\n", {}, "storage.duplicates"),
        ("[dicom]\nae_title = 'MUCH_TOO_LONG_AE_TITLE'\n", {}, "dicom.ae_title"),
        ("[dicom]\nprot = 1\n", {}, "dicom.prot (env DICOMVAULT_DICOM__PROT): unknown setting"),
        ("", {"DICOMVAULT_DICOM__PORT": "abc"}, "dicom.port"),
        ("not = [toml", {}, "is not valid TOML"),
    ],
)
def test_invalid_values_name_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, env: dict[str, str], needle: str
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert needle in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_workers_auto_is_one_process_per_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from dicomvault.config import AUTO_WORKERS_MAX

    monkeypatch.chdir(Path(os.sep))
    assert load_settings(None).server.process_count() == 1  # the default
    server = load_settings(None, {"server": {"workers": "auto"}}).server
    assert server.process_count() == min(len(os.sched_getaffinity(0)), AUTO_WORKERS_MAX)
    assert load_settings(None, {"server": {"workers": 3}}).server.process_count() == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(64)))
    assert server.process_count() == AUTO_WORKERS_MAX


@pytest.mark.parametrize("value", [0, 65, "many", -1])
def test_workers_out_of_range_names_the_key(value: object) -> None:
    with pytest.raises(ConfigError, match=r"server\.workers"):
        load_settings(None, {"server": {"workers": value}})
