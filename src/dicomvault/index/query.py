"""Statements run through SQLAlchemy and streamed: worklist items.

C-FIND matching and retrieve selections are SQL text (:mod:`dicomvault.index.find_sql`);
what stays here are the statements built as SQLAlchemy constructs by their callers: rows
are read with ``stream_results`` (a server-side cursor on PostgreSQL, SQLite's lazy
stepping) in pages of :data:`PAGE`, so a query over a million rows holds one page.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, Final

from sqlalchemy import Connection, CursorResult, Select

from dicomvault.index.db import Index

#: Rows fetched per round trip when streaming.
PAGE: Final = 500


def plan_for_every_row(conn: Connection) -> None:
    """On PostgreSQL, plan the transaction's server-side cursors for all their rows.

    A server-side cursor is planned for its first 10 % of rows by default
    (cursor_tuple_fraction): PostgreSQL then walks the level's primary key in ORDER BY
    order and filters, measured 100x slower for a selective name key. Every match is
    read, so plan for all of them; the setting ends with the transaction.
    """
    conn.exec_driver_sql("SET LOCAL cursor_tuple_fraction = 1.0")


def stream(index: Index, statement: Select[Any]) -> Generator[dict[str, Any], None, None]:
    """Run *statement* and yield its rows as dicts, a page at a time, holding the
    connection (and the server-side cursor) only while the caller iterates."""
    with index._read.connect() as conn:
        if not index.is_sqlite:
            plan_for_every_row(conn)
        result = conn.execution_options(stream_results=True, yield_per=PAGE).execute(statement)
        yield from result_rows(result)


def result_rows(result: CursorResult[Any]) -> Generator[dict[str, Any], None, None]:
    """The rows of *result* as dicts keyed by column label; the result closed after."""
    try:
        keys = list(result.keys())
        for row in result:
            yield dict(zip(keys, row, strict=True))
    finally:
        result.close()
