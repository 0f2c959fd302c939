from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from peers import FileStoreHandler, ServerThread, start_server

from dicomvault.net import AcceptorPolicy, ServiceRegistry


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "received"
    folder.mkdir()
    return folder


@pytest.fixture
def handler(store_dir: Path) -> FileStoreHandler:
    return FileStoreHandler(store_dir)


@pytest.fixture
def policy() -> AcceptorPolicy:
    return AcceptorPolicy(ae_title="DICOMVAULT", idle_timeout=10, artim_timeout=2)


@pytest.fixture
def server(handler: FileStoreHandler, policy: AcceptorPolicy) -> Iterator[ServerThread]:
    registry = ServiceRegistry()
    registry.add_verification()
    registry.add_store(handler)
    srv = start_server(registry, policy)
    try:
        yield srv
    finally:
        srv.close()
