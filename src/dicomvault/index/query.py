"""Statements run through SQLAlchemy and streamed: worklist items and retrieve selections.

C-FIND matching itself is SQL text (:mod:`dicomvault.index.find_sql`); what stays here
are the statements built as SQLAlchemy constructs by their callers: rows are read with
``stream_results`` (a server-side cursor on PostgreSQL, SQLite's lazy stepping) in pages
of :data:`PAGE`, so a query over a million rows holds one page.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any, Final

from sqlalchemy import ColumnElement, Connection, CursorResult, Select, Table, func, select

from dicomvault.index.db import Index, stored_instance, stored_instances
from dicomvault.index.schema import instances, patients, series, studies
from dicomvault.model.records import StoredInstance

#: Rows fetched per round trip when streaming.
PAGE: Final = 500
_TABLES: Final[dict[str, Table]] = {
    "patients": patients,
    "studies": studies,
    "series": series,
    "instances": instances,
}


def column(spec: str) -> ColumnElement[Any]:
    """``"table.column"`` → the column; ``"sum:studies.column"`` → the patient's sum."""
    if spec.startswith("sum:"):
        table_name, name = spec[4:].split(".")
        # An alias, correlated to the patient only: in a Study Root query the outer
        # statement selects from the studies table too, and auto-correlation would then
        # leave the subquery without a FROM.
        table = _TABLES[table_name].alias(f"{table_name}_of_patient")
        return (
            select(func.coalesce(func.sum(table.c[name]), 0))
            .where(table.c.patient_pk == patients.c.pk)
            .correlate(patients)
            .scalar_subquery()
        )
    table_name, name = spec.split(".")
    return _TABLES[table_name].c[name]


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


def retrieve(index: Index, clauses: Sequence[ColumnElement[bool]]) -> list[StoredInstance]:
    """The instances meeting *clauses* (over the four tables joined), in a stable order:
    by study, series, then storage order."""
    statement = (
        stored_instances()
        .join(patients, studies.c.patient_pk == patients.c.pk)
        .where(*clauses)
        .order_by(studies.c.pk, series.c.pk, instances.c.pk)
    )
    return [stored_instance(row) for row in stream(index, statement)]
