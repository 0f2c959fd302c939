"""``dicomvault remote add|list|remove`` (issue 7, part 2) and the service functions of
``archive/remotes.py`` on both index backends (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "net"))

from peers import ServerThread

from dicomvault.archive import Archive, remotes
from dicomvault.config import Settings, load_settings
from dicomvault.dimse.server import serve_dicom
from dicomvault.index import Index
from dicomvault.model.errors import NotFound
from tests.security.test_users import dv_here

_TOML = """
[remotes.filed]
ae_title = "PACS2"
host = "10.1.1.1"
port = 104
"""


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "dicomvault.toml"
    config.write_text(_TOML)
    return config


def test_cli_add_list_remove(tmp_path: Path) -> None:
    where = ("--config", _config(tmp_path), "--data-dir", tmp_path / "data")
    added = dv_here("remote", "add", "ct1", "--ae-title", "CT1", "--host", "10.0.0.5",
                    "--port", "104", "--permission", "store", "--permission", "echo",
                    "--check-host", "--host-alias", "10.0.0.6", "--tls", *where)  # fmt: skip
    assert added.returncode == 0, added.stdout + added.stderr
    listed = dv_here("remote", "list", "--json", *where)
    assert listed.returncode == 0
    entries = {e["name"]: e for e in json.loads(listed.stdout)}
    assert entries["filed"]["source"] == "config"
    ct1 = entries["ct1"]
    assert (ct1["source"], ct1["ae_title"], ct1["port"], ct1["tls"]) == ("api", "CT1", 104, True)
    assert ct1["permissions"] == ["echo", "store"]
    assert (ct1["check_host"], ct1["hosts"]) == (True, ["10.0.0.6"])
    table = dv_here("remote", "list", *where)
    assert "CT1" in table.stdout and "PACS2" in table.stdout
    again = dv_here("remote", "add", "ct1", "--ae-title", "X", "--host", "h", "--port", "1", *where)
    assert again.returncode == 2 and "already exists" in again.stdout + again.stderr
    assert dv_here("remote", "remove", "ct1", *where).returncode == 0
    missing = dv_here("remote", "remove", "ct1", *where)
    assert missing.returncode == 2 and "no remote AE 'ct1'" in missing.stdout + missing.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--ae-title", "A\\B", "--host", "h", "--port", "104"), "backslash"),
        (("--ae-title", "A" * 17, "--host", "h", "--port", "104"), "longer than 16"),
        (("--ae-title", "A", "--host", "h", "--port", "70000"), "port"),
    ],
)
def test_cli_refuses_bad_entries(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    ran = dv_here("remote", "add", "x", *args, "--data-dir", tmp_path / "data")
    assert ran.returncode == 2 and message in ran.stdout + ran.stderr


def test_cli_refuses_file_entries(tmp_path: Path) -> None:
    where = ("--config", _config(tmp_path), "--data-dir", tmp_path / "data")
    add = dv_here("remote", "add", "filed", "--ae-title", "A", "--host", "h", "--port", "1", *where)
    assert add.returncode == 2 and "configured in the file" in add.stdout + add.stderr
    remove = dv_here("remote", "remove", "filed", *where)
    assert remove.returncode == 2 and "configured in the file" in remove.stdout + remove.stderr


def _settings(tmp_path: Path, backend: str) -> Settings:
    return load_settings(
        _config(tmp_path),
        {"storage": {"path": tmp_path / "data", "fsync": False}, "index": {"url": backend}},
    )


def test_service_functions(tmp_path: Path, backend: str) -> None:
    settings = _settings(tmp_path, backend)
    settings.storage.path.mkdir(parents=True)
    index = Index.open(settings.index_url)
    try:
        place = (settings, index)
        body = {"ae_title": " CT1 ", "host": "h", "port": 104, "permissions": ["find"]}
        entry, created = remotes.put_remote(place, "ct1", body, actor="t")
        assert created and entry.remote.ae_title == "CT1" and entry.source == "api"
        entry, created = remotes.put_remote(place, "ct1", {**body, "port": 105}, actor="t")
        assert not created and entry.remote.port == 105
        updated = remotes.update_remote(place, "ct1", {**body, "hosts": ["a", "b"]}, actor="t")
        assert updated.remote.hosts == ["a", "b"] and updated.remote.port == 104
        with pytest.raises(NotFound):
            remotes.update_remote(place, "nope", body, actor="t")
        with pytest.raises(remotes.RemoteError):
            remotes.add_remote(place, "ct1", body, actor="t")
        with pytest.raises(remotes.RemoteConflict):
            remotes.add_remote(place, "filed", body, actor="t")
        assert [(r.name, r.source) for r in remotes.list_remotes(place)] == [
            ("filed", "config"),
            ("ct1", "api"),
        ]
        assert remotes.get_remote(place, "filed").remote.ae_title == "PACS2"
        remotes.remove_remote(place, "ct1", actor="t")
        with pytest.raises(NotFound):
            remotes.get_remote(place, "ct1")
    finally:
        index.close()


def test_scu_commands_know_the_remotes_of_the_index(tmp_path: Path) -> None:
    """``echo NAME`` (and store/find/move/get/commit) find a remote added with
    ``dicomvault remote add`` in the index of ``storage.path``, not only the file's."""
    served = load_settings(
        None,
        {"storage": {"path": tmp_path / "served", "fsync": False},
         "dicom": {"host": "127.0.0.1", "port": 0}},
    )  # fmt: skip
    archive = Archive.open(served)

    async def make(sock: socket.socket, ready: asyncio.Event, stop: asyncio.Event) -> None:
        await serve_dicom(archive, served, ready=ready, stop=stop, sock=sock)

    thread = ServerThread(make).start()
    try:
        config = tmp_path / "client.toml"
        config.write_text(f'[storage]\npath = "{tmp_path / "client"}"\n')
        unknown = dv_here("echo", "pacs", "--config", config)
        assert unknown.returncode == 2 and "neither AET@HOST:PORT nor a known remote" in (
            unknown.stdout + unknown.stderr
        )
        added = dv_here(
            "remote", "add", "pacs", "--ae-title", "DICOMVAULT", "--host", "127.0.0.1",
            "--port", str(thread.port), "--config", config,
        )  # fmt: skip
        assert added.returncode == 0, added.stdout + added.stderr
        echoed = dv_here("echo", "pacs", "--config", config)
        assert echoed.returncode == 0, echoed.stdout + echoed.stderr
        assert "success" in echoed.stdout
    finally:
        thread.close()
        archive.close()
