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
from dicomvault.index import find_sql
from dicomvault.model.matching import fold
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
    real_stream = find_sql.stream

    def counting(index: Any, statement: Any) -> Iterator[dict[str, Any]]:
        for row in real_stream(index, statement):
            pulled.append(1)
            yield row

    monkeypatch.setattr(find_sql, "stream", counting)
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


def record_statements(monkeypatch: pytest.MonkeyPatch) -> list[find_sql.Sql]:
    """The statements C-FIND matching runs from now on, in order."""
    seen: list[find_sql.Sql] = []
    real = find_sql.stream

    def recording(index: Any, statement: find_sql.Sql) -> Iterator[dict[str, Any]]:
        seen.append(statement)
        return real(index, statement)

    monkeypatch.setattr(find_sql, "stream", recording)
    return seen


def test_one_text_per_query_shape_and_no_value_in_it(
    big: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same query shape with other values gives the same SQL text (SQLite reuses its
    prepared statement; PostgreSQL its plan cache), every value is a parameter, and
    the text holds no "%" (psycopg's placeholder is "%s") nor any "?" but placeholders."""
    some = [m.values[0x0020000D] for m in big.find(study_query(max_results=5))]

    def with_uids(uids: list[str]) -> Any:
        query = study_query()
        key = QueryKey(0x0020000D, "StudyInstanceUID", "UI", "\\".join(uids))
        return dataclasses.replace(query, keys=(*query.keys, key))

    pairs = [
        (with_uids(some[:2]), with_uids(some[2:4])),
        (study_query(PatientName="A*"), study_query(PatientName="Zq%_!*")),
        (study_query(StudyDate="20150101-20191231"), study_query(StudyDate="20160101-20161231")),
        (study_query(max_results=50), study_query(max_results=7)),
    ]
    seen = record_statements(monkeypatch)
    for first, second in pairs:
        seen.clear()
        counts = [len(list(big.find(first))), len(list(big.find(second)))]
        one, other = seen
        assert one.text == other.text
        assert one.params != other.params
        assert one.text.count("?") == len(one.params)
        assert "%" not in one.text
        for value in (*one.params, *other.params):
            assert not isinstance(value, str) or value not in one.text
        assert counts[0] > 0


def test_non_ascii_name_prefix_narrows_by_the_name_index(
    big: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A case-insensitive PN prefix holding a non-ASCII letter ("müSO*") matches as the
    fold says, and on SQLite still narrows by the NOCASE name index on its ASCII head
    instead of folding every patient's name (280 ms at 100,000 studies)."""
    names = {str(m.values[0x00100010]) for m in big.find(study_query())}
    wanted = sorted(n for n in names if fold(n).startswith("müso"))
    assert wanted, "the synthetic names hold the syllable 'mü'"
    seen = record_statements(monkeypatch)
    found = {str(m.values[0x00100010]) for m in big.find(study_query(PatientName="müSO*"))}
    assert sorted(found) == wanted
    if big.index.is_sqlite:
        (statement,) = seen
        with big.index._read.connect() as conn:
            plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement.text, statement.params)
            details = " ".join(str(row[-1]) for row in plan)
        assert "ix_patients_name_nocase" in details, details
