"""Results stream from the index: a server-side cursor / lazy stepping, pages of rows."""

from __future__ import annotations

import dataclasses
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event

from bench.bench_find import fill, study_query
from dicomvault.archive import Archive
from dicomvault.config import Settings
from dicomvault.index import query as index_query
from dicomvault.model.query import QueryKey

ROWS = 3000


@pytest.fixture
def big(settings: Settings) -> Iterator[Archive]:
    with Archive.open(settings) as archive:
        pass  # create the data directory and schema
    fill(settings.index_url, ROWS, instances_per_study=1)
    with Archive.open(settings, recover_on_start=False) as archive:
        yield archive


def test_first_match_before_last_row(big: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
    """The archive pulls rows one by one from the index generator (nothing is listed)."""
    pulled = []
    real_stream = index_query.stream

    def counting(index: Any, statement: Any) -> Iterator[dict[str, Any]]:
        for row in real_stream(index, statement):
            pulled.append(1)
            yield row

    monkeypatch.setattr(index_query, "stream", counting)
    result = big.find(study_query(max_results=None))
    first = next(result)
    assert first.values[0x0020000D]
    assert len(pulled) == 1
    rest = sum(1 for _ in result)
    assert rest + 1 == ROWS
    assert not result.truncated


def test_server_side_cursor_and_flat_memory(big: Archive) -> None:
    cursors: list[str] = []

    def record(conn: Any, cursor: Any, *args: Any) -> None:
        cursors.append(type(cursor).__name__)

    event.listen(big.index._read, "before_cursor_execute", record)
    try:
        tracemalloc.start()
        result = big.find(study_query(max_results=None))
        next(result)
        first_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        result.close()
    finally:
        event.remove(big.index._read, "before_cursor_execute", record)
    if not big.index.is_sqlite:
        assert "ServerCursor" in cursors  # psycopg named cursor: rows stay on the server
    # One page (500 rows) in memory, not 3000 rows: well under what the whole would take.
    assert first_peak < 2_000_000


def test_close_releases_the_connection(big: Archive) -> None:
    pool = big.index._read.pool
    result = big.find(study_query(max_results=None))
    next(result)
    assert pool.checkedout() == 1  # type: ignore[attr-defined]
    result.close()
    assert pool.checkedout() == 0  # type: ignore[attr-defined]
    assert list(result) == []


def test_sqlite_rows_come_through_the_plain_cursor_alike(
    big: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On SQLite, C-FIND rows are read with the DBAPI cursor from SQLAlchemy's compiled
    statement (index.query._prepared): it must be in use -- a SQLAlchemy upgrade that
    breaks it fails here rather than silently slowing every query -- and give exactly
    the rows the SQLAlchemy path gives, for a list of UIDs (an expanding IN), a wildcard,
    a range and a universal query alike."""
    if not big.index.is_sqlite:
        pytest.skip("the plain cursor path is SQLite's")
    some = [m.values[0x0020000D] for m in big.find(study_query(max_results=5))]
    by_uids = study_query()
    uid_key = QueryKey(0x0020000D, "StudyInstanceUID", "UI", "\\".join(some))
    by_uids = dataclasses.replace(by_uids, keys=(*by_uids.keys, uid_key))
    queries = [
        by_uids,
        study_query(PatientName="A*"),
        study_query(StudyDate="20150101-20191231"),
        study_query(max_results=50),
    ]
    prepared = []
    real = index_query._prepared

    def watching(*args: Any) -> Any:
        prepared.append(out := real(*args))
        return out

    monkeypatch.setattr(index_query, "_prepared", watching)
    fast = [[m.values for m in big.find(q)] for q in queries]
    assert prepared and all(p is not None for p in prepared)
    monkeypatch.setattr(index_query, "_prepared", lambda *args: None)
    slow = [[m.values for m in big.find(q)] for q in queries]
    assert fast == slow
    assert len(fast[0]) == len(some) and all(fast)
