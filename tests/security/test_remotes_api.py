"""Remote AEs managed over HTTP (issue 7, part 2): ``/api/remotes`` with httpx against
the real server, and their effect on DIMSE with pynetdicom peers on 127.0.0.1 (access
control, C-MOVE destinations). Loopback is not trusted here (``security.trust_loopback
= false``) so that a peer on 127.0.0.1 is treated as a remote one.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.web.conftest import WebServer, start_web, web_settings

_TESTS = Path(__file__).resolve().parent.parent
if str(_TESTS / "net") not in sys.path:
    sys.path.insert(0, str(_TESTS / "net"))

from peers import PYDICOM_TEST_FILES  # noqa: E402
from pydicom import Dataset, dcmread  # noqa: E402
from pynetdicom import AE, evt  # noqa: E402
from pynetdicom.association import Association as PynetAssociation  # noqa: E402

from dicomvault.archive import remotes, users  # noqa: E402
from dicomvault.archive.audit import AuditFilter, search  # noqa: E402

CT = PYDICOM_TEST_FILES / "CT_small.dcm"
VERIFICATION = "1.2.840.10008.1.1"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
PASSWORD = "correct horse battery"

_CONFIG_REMOTE = {"ae_title": "PACS2", "host": "10.1.1.1", "port": 104}


def _server(tmp_path: Path, **extra: dict[str, Any]) -> Iterator[WebServer]:
    settings = web_settings(
        tmp_path,
        security={"trust_loopback": False, "unknown_ae_permissions": []},
        remotes={"filed": _CONFIG_REMOTE},
        audit={"enabled": True},
        **extra,
    )
    yield from start_web(settings)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[WebServer]:
    yield from _server(tmp_path)


def _ae(title: str) -> AE:
    ae = AE(ae_title=title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    return ae


def _associate(port: int, title: str, contexts: tuple[str, ...]) -> PynetAssociation:
    ae = _ae(title)
    for uid in contexts:
        ae.add_requested_context(uid, [EXPLICIT_LE, IMPLICIT_LE])
    return ae.associate("127.0.0.1", port, ae_title="DICOMVAULT")


def _wait_for(check: Any, what: str, seconds: float = remotes.CACHE_SECONDS + 5) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds:.0f} s: {what}")
        time.sleep(0.2)


# -- HTTP: CRUD and validation -----------------------------------------------------------


def test_crud(server: WebServer) -> None:
    c = server.client
    listed = c.get("/api/remotes").json()
    assert [(r["name"], r["source"]) for r in listed] == [("filed", "config")]
    body = {"ae_title": "CT1", "host": "10.0.0.5", "port": 104, "permissions": ["store", "echo"]}
    created = c.put("/api/remotes/ct1", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["permissions"] == ["echo", "store"]
    assert created.json()["source"] == "api"
    replaced = c.put("/api/remotes/ct1", json={**body, "port": 11112, "tls": True})
    assert replaced.status_code == 200
    one = c.get("/api/remotes/ct1").json()
    assert (one["port"], one["tls"], one["check_host"], one["hosts"]) == (11112, True, False, [])
    assert one["created_at"] and one["updated_at"]
    names = [(r["name"], r["source"]) for r in c.get("/api/remotes").json()]
    assert names == [("filed", "config"), ("ct1", "api")]
    assert c.get("/api/remotes/filed").json()["source"] == "config"
    assert c.delete("/api/remotes/ct1").status_code == 204
    gone = c.get("/api/remotes/ct1")
    assert gone.status_code == 404 and "ct1" in gone.json()["message"]
    assert c.delete("/api/remotes/ct1").status_code == 404


def test_change_is_audited(server: WebServer) -> None:
    body = {"ae_title": "CT1", "host": "10.0.0.5", "port": 104}
    assert server.client.put("/api/remotes/ct1", json=body).status_code == 201
    assert server.client.delete("/api/remotes/ct1").status_code == 204
    rows = search(server.archive, AuditFilter(event_id="110113", limit=1000))
    texts = [r.xml for r in rows]
    assert any("remote AE &apos;ct1&apos; added" in t or "remote AE 'ct1' added" in t
               for t in texts), texts  # fmt: skip
    assert any("110131" in t for t in texts)  # Software Configuration (CID 403)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"ae_title": "", "host": "h", "port": 104}, "ae_title"),
        ({"ae_title": "    ", "host": "h", "port": 104}, "ae_title"),
        ({"ae_title": "A" * 17, "host": "h", "port": 104}, "ae_title"),
        ({"ae_title": "A\\B", "host": "h", "port": 104}, "ae_title"),
        ({"ae_title": "A\tB", "host": "h", "port": 104}, "ae_title"),
        ({"ae_title": "ÄE", "host": "h", "port": 104}, "ae_title"),
        ({"ae_title": "A", "host": "h", "port": 0}, "port"),
        ({"ae_title": "A", "host": "h", "port": 65536}, "port"),
        ({"ae_title": "A", "host": "h", "port": "104"}, "port"),
        ({"ae_title": "A", "host": "", "port": 104}, "host"),
        ({"ae_title": "A", "host": "a b", "port": 104}, "host"),
        ({"ae_title": "A", "host": "h", "port": 104, "hosts": ["ok", "x y"]}, "hosts"),
        ({"ae_title": "A", "host": "h", "port": 104, "permissions": ["delete"]}, "permissions"),
        ({"ae_title": "A", "host": "h", "port": 104, "tls": "yes"}, "tls"),
        ({"ae_title": "A", "host": "h", "port": 104, "colour": "red"}, "colour"),
        ({"host": "h", "port": 104}, "ae_title"),
    ],
)
def test_invalid_bodies(server: WebServer, body: dict[str, Any], field: str) -> None:
    answer = server.client.put("/api/remotes/x", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["field"] == field
    assert server.client.get("/api/remotes/x").status_code == 404


def test_invalid_name_and_non_json(server: WebServer) -> None:
    body = {"ae_title": "A", "host": "h", "port": 104}
    bad = server.client.put("/api/remotes/-x", json=body)
    assert bad.status_code == 400 and bad.json()["field"] == "name"
    raw = server.client.put("/api/remotes/x", content=b"{not json")
    assert raw.status_code == 400 and "not JSON" in raw.json()["message"]
    array = server.client.put("/api/remotes/x", json=[1])
    assert array.status_code == 400 and "JSON object" in array.json()["message"]


def test_path_like_ae_title_is_data(server: WebServer) -> None:
    """``../x`` is a valid AE value (PS3.5 Table 6.2-1): stored and listed as such."""
    body = {"ae_title": "../x", "host": "h", "port": 104}
    assert server.client.put("/api/remotes/odd", json=body).status_code == 201
    assert server.client.get("/api/remotes/odd").json()["ae_title"] == "../x"
    assert not (server.settings.storage.path / "x").exists()


def test_config_entries_are_read_only(server: WebServer) -> None:
    body = {"ae_title": "X", "host": "h", "port": 104}
    put = server.client.put("/api/remotes/filed", json=body)
    assert put.status_code == 409 and "configured in the file" in put.json()["message"]
    delete = server.client.delete("/api/remotes/filed")
    assert delete.status_code == 409 and "configured in the file" in delete.json()["message"]
    assert server.client.get("/api/remotes/filed").json()["ae_title"] == "PACS2"


def test_admin_only(server: WebServer) -> None:
    users.add_user(server.archive, "admin", PASSWORD, "admin")
    users.add_user(server.archive, "uploader", PASSWORD, "uploader")
    body = {"ae_title": "A", "host": "h", "port": 104}
    with httpx.Client(base_url=server.url, auth=("uploader", PASSWORD), timeout=30) as c:
        assert c.get("/api/remotes").status_code == 403
        assert c.get("/api/remotes/filed").status_code == 403
        assert c.put("/api/remotes/a", json=body).status_code == 403
        assert c.delete("/api/remotes/filed").status_code == 403
    assert server.client.get("/api/remotes").status_code == 401
    with httpx.Client(base_url=server.url, auth=("admin", PASSWORD), timeout=30) as c:
        assert c.put("/api/remotes/a", json=body).status_code == 201
        assert c.get("/api/remotes").status_code == 200


# -- DIMSE: the entries take effect -----------------------------------------------------


def _try(port: int, title: str) -> tuple[bool, set[str]]:
    assoc = _associate(port, title, (VERIFICATION, CT_STORAGE, STUDY_FIND))
    try:
        if not assoc.is_established:
            return False, set()
        return True, {cx.abstract_syntax for cx in assoc.accepted_contexts}
    finally:
        if assoc.is_established:
            assoc.release()


def test_added_ae_gets_exactly_its_permissions_until_removed(server: WebServer) -> None:
    port = server.dimse_port
    assert _try(port, "WS7") == (False, set())  # unknown AEs are rejected here
    body = {"ae_title": "WS7", "host": "127.0.0.1", "port": 104, "permissions": ["echo", "find"]}
    assert server.client.put("/api/remotes/ws7", json=body).status_code == 201
    # This process forgot its cache at once; other workers within CACHE_SECONDS.
    assert _try(port, "WS7") == (True, {VERIFICATION, STUDY_FIND})
    body["permissions"] = ["store"]
    assert server.client.put("/api/remotes/ws7", json=body).status_code == 200
    assert _try(port, "WS7") == (True, {CT_STORAGE})
    body.update(check_host=True, host="10.9.9.9")
    assert server.client.put("/api/remotes/ws7", json=body).status_code == 200
    assert _try(port, "WS7") == (False, set())  # host check: 127.0.0.1 is not 10.9.9.9
    body.update(hosts=["127.0.0.1"])
    assert server.client.put("/api/remotes/ws7", json=body).status_code == 200
    assert _try(port, "WS7") == (True, {CT_STORAGE})
    assert server.client.delete("/api/remotes/ws7").status_code == 204
    assert _try(port, "WS7") == (False, set())


def test_change_by_another_process_applies_within_cache_time(server: WebServer) -> None:
    """A change that this process's cache did not see (another worker, the CLI) applies
    within :data:`CACHE_SECONDS`."""
    place = (server.settings, server.archive.index)  # not the archive: no cache reset
    assert _try(server.dimse_port, "WS8") == (False, set())
    body = {"ae_title": "WS8", "host": "127.0.0.1", "port": 104, "permissions": ["echo"]}
    remotes.add_remote(place, "ws8", body, actor="test")
    _wait_for(lambda: _try(server.dimse_port, "WS8")[0], "WS8 accepted")
    assert _try(server.dimse_port, "WS8") == (True, {VERIFICATION})
    remotes.remove_remote(place, "ws8", actor="test")
    _wait_for(lambda: not _try(server.dimse_port, "WS8")[0], "WS8 refused again")


def test_move_to_destination_added_over_http(server: WebServer) -> None:
    server.archive.store_file(CT)
    received: list[Dataset] = []
    done = threading.Event()

    def on_store(event: Any) -> int:
        received.append(event.dataset)
        done.set()
        return 0

    dest = _ae("DEST9")
    dest.add_supported_context(CT_STORAGE, [EXPLICIT_LE, IMPLICIT_LE])
    scp = dest.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        dest_port = int(scp.server_address[1])
        mover = {"ae_title": "MOVER", "host": "127.0.0.1", "port": 104, "permissions": ["move"]}
        assert server.client.put("/api/remotes/mover", json=mover).status_code == 201
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = dcmread(CT).StudyInstanceUID

        def move() -> list[int]:
            assoc = _associate(server.dimse_port, "MOVER", (STUDY_MOVE,))
            assert assoc.is_established
            try:
                return [int(s.Status) for s, _ in assoc.send_c_move(query, "DEST9", STUDY_MOVE)]
            finally:
                assoc.release()

        assert move()[-1] == 0xA801  # not a destination yet
        target = {"ae_title": "DEST9", "host": "127.0.0.1", "port": dest_port,
                  "permissions": []}  # fmt: skip
        assert server.client.put("/api/remotes/dest9", json=target).status_code == 201
        assert move()[-1] == 0
        assert done.wait(10) and len(received) == 1
        assert received[0].SOPInstanceUID == dcmread(CT).SOPInstanceUID
    finally:
        scp.shutdown()
