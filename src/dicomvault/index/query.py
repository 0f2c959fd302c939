"""C-FIND matching in SQL (PS3.4 C.2.2.2), streamed from the index.

One function per matching type, named after the standard as pynetdicom's ``qrscp`` does
(``_search_single_value`` …), each returning a SQLAlchemy clause and whether the clause
is *exact*. A clause that is not exact selects a superset (a wild card over a
backslash-joined multi-valued column, a DT range); the archive then rechecks those rows
in Python with :func:`dicomvault.model.matching.matches`.

Literal ``%``, ``_`` and ``!`` in values are escaped (``ESCAPE '!'``) on PostgreSQL, and
SQLite uses ``GLOB`` (case-sensitive, ``[`` escaped as ``[[]``), so no value ever becomes
an SQL wild card. Case-insensitive Person Name matching folds both sides: PostgreSQL's
``lower()`` (UTF-8 locale), and on SQLite a registered ``dicomvault_fold`` function
(SQLite's own ``lower()`` folds ASCII only).

Rows are read with ``stream_results`` (a server-side cursor on PostgreSQL, SQLite's lazy
stepping) in pages of :data:`PAGE`, so a query over a million rows holds one page.
"""

from __future__ import annotations

import itertools
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import (
    ColumnElement,
    FromClause,
    Select,
    String,
    Table,
    and_,
    case,
    exists,
    false,
    func,
    literal,
    or_,
    select,
    true,
)
from sqlalchemy.engine import Dialect as SqlDialect
from sqlalchemy.util import LRUCache

from dicomvault.index.db import Index, stored_instance, stored_instances
from dicomvault.index.schema import instances, patients, series, studies
from dicomvault.model.matching import Condition, Kind, Term, fold
from dicomvault.model.query import Level
from dicomvault.model.records import StoredInstance

#: Rows fetched per round trip when streaming.
PAGE: Final = 500
_ESCAPE: Final = "!"
_TABLES: Final[dict[str, Table]] = {
    "patients": patients,
    "studies": studies,
    "series": series,
    "instances": instances,
}
#: The table of each level, and the level of each table.
LEVEL_TABLE: Final = {
    Level.PATIENT: patients,
    Level.STUDY: studies,
    Level.SERIES: series,
    Level.IMAGE: instances,
}
_TM_LOW: Final = "000000.000000"
_TM_HIGH: Final = "235959.999999"


@dataclass(frozen=True)
class Dialect:
    """What differs between SQLite and PostgreSQL for matching."""

    sqlite: bool

    def fold(self, expr: ColumnElement[Any]) -> ColumnElement[Any]:
        return func.dicomvault_fold(expr) if self.sqlite else func.lower(expr)

    def position(self, expr: ColumnElement[Any], char: str) -> ColumnElement[Any]:
        return func.instr(expr, char) if self.sqlite else func.strpos(expr, char)

    def pattern(self, expr: ColumnElement[Any], wildcard: str) -> ColumnElement[bool]:
        """``expr`` matches the DICOM wild card pattern (``*``, ``?``) exactly."""
        if self.sqlite:
            return expr.op("GLOB")(wildcard.replace("[", "[[]"))
        like = wildcard.replace(_ESCAPE, _ESCAPE * 2).replace("%", _ESCAPE + "%")
        like = like.replace("_", _ESCAPE + "_").replace("*", "%").replace("?", "_")
        return expr.like(like, escape=_ESCAPE)


# -- column expressions ----------------------------------------------------------------


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


def normalize_tm(expr: ColumnElement[Any], dialect: Dialect) -> ColumnElement[Any]:
    """SQL twin of :func:`dicomvault.model.matching.normalize_tm`."""
    padded = expr + literal("000000", String)
    return case(
        (dialect.position(expr, ".") > 0, func.substr(padded, 1, 13)),
        else_=func.substr(padded, 1, 6) + literal(".000000", String),
    )


def _head(expr: ColumnElement[Any], dialect: Dialect) -> ColumnElement[Any]:
    at = dialect.position(expr, "=")
    return case((at > 0, func.substr(expr, 1, at - 1)), else_=expr)


def _rest(expr: ColumnElement[Any], dialect: Dialect) -> ColumnElement[Any]:
    at = dialect.position(expr, "=")
    return case((at > 0, func.substr(expr, at + 1)), else_=literal("", String))


def pn_group(expr: ColumnElement[Any], index: int, dialect: Dialect) -> ColumnElement[Any]:
    """Component group *index* (0 Alphabetic, 1 Ideographic, 2 Phonetic), PS3.5 6.2.1."""
    for _ in range(index):
        expr = _rest(expr, dialect)
    return _head(expr, dialect)


# -- one function per matching type (PS3.4 C.2.2.2) -----------------------------------

Clause = tuple[ColumnElement[bool], bool]  # (clause, exact)


def _search_universal() -> Clause:
    """PS3.4 C.2.2.2.3 Universal Matching: every entity matches."""
    return true(), True


def _search_empty(expr: ColumnElement[Any], integer: bool) -> Clause:
    """PS3.4 C.2.2.2.7 Empty Value Matching (``""``): empty or absent values match."""
    if integer:
        return expr.is_(None), True
    return or_(expr.is_(None), expr == ""), True


def _search_uid_list(
    expr: ColumnElement[Any], terms: Sequence[Term], multi: bool, dialect: Dialect
) -> Clause:
    """PS3.4 C.2.2.2.2 List of UID Matching: the value equals one of the UIDs."""
    uids = [t.value for t in terms]
    if multi:
        return or_(*(_contains_value(expr, uid, dialect) for uid in uids)), True
    if len(uids) == 1:
        return expr == uids[0], True
    return expr.in_(uids), True


def _contains_value(expr: ColumnElement[Any], value: str, dialect: Dialect) -> ColumnElement[bool]:
    r"""A backslash-joined column holds *value* as one of its values (no wild cards)."""
    return _framed_literal(literal("\\", String) + expr + literal("\\", String), value, dialect)


def _framed_literal(
    framed: ColumnElement[Any], value: str, dialect: Dialect
) -> ColumnElement[bool]:
    if dialect.sqlite:
        glob = value.replace("[", "[[]").replace("*", "[*]").replace("?", "[?]")
        return framed.op("GLOB")("*\\" + glob + "\\*")
    like = (
        value.replace(_ESCAPE, _ESCAPE * 2).replace("%", _ESCAPE + "%").replace("_", _ESCAPE + "_")
    )
    return framed.like("%\\" + like + "\\%", escape=_ESCAPE)


def _search_single_value(
    expr: ColumnElement[Any], term: Term, vr: str, multi: bool, integer: bool, dialect: Dialect
) -> Clause:
    """PS3.4 C.2.2.2.1 Single Value Matching: the stored value equals the key value."""
    if integer:
        return expr == int(term.value), True
    if vr in ("DS", "FL", "FD"):  # stored as text: compare in Python
        return expr.is_not(None), False
    if multi:
        return _contains_value(expr, term.value, dialect), True
    return expr == term.value, True


def _search_wildcard(expr: ColumnElement[Any], term: Term, multi: bool, dialect: Dialect) -> Clause:
    """PS3.4 C.2.2.2.4 Wild Card Matching: ``*`` any sequence, ``?`` any one character.

    Over a backslash-joined multi-valued column the pattern could span two values, so
    the clause is a superset there (rechecked in Python).
    """
    if multi:
        framed = literal("\\", String) + expr + literal("\\", String)
        return dialect.pattern(framed, "*\\" + term.value + "\\*"), False
    return dialect.pattern(expr, term.value), True


def _search_person_name(
    expr: ColumnElement[Any], term: Term, case_insensitive: bool, dialect: Dialect
) -> Clause:
    """PS3.4 C.2.2.2.1 / C.2.2.2.4 for PN: each component group of the key (single or
    wild card) against the same group of the stored name; case folded when configured."""
    clauses: list[ColumnElement[bool]] = []
    for index, wanted in enumerate(term.groups):
        if wanted is None:
            continue
        group = pn_group(expr, index, dialect)
        if case_insensitive:
            group = dialect.fold(group)
        if "*" in wanted or "?" in wanted:
            clauses.append(dialect.pattern(group, wanted))
        else:
            clauses.append(group == wanted)
    if not clauses:
        return expr.is_not(None), True
    prefix = _alphabetic_prefix(term)
    if prefix:
        # Indexable necessary condition: the whole name starts with the literal prefix
        # of the Alphabetic group (which holds no "=").
        if case_insensitive:
            if dialect.sqlite:
                if prefix.isascii():  # SQLite LIKE folds ASCII only: exact for ASCII
                    clauses.insert(0, _like_prefix(expr, prefix))
            else:
                clauses.insert(0, _like_prefix(func.lower(expr), prefix))
        else:
            clauses.insert(0, _glob_or_like_prefix(expr, prefix, dialect))
    return and_(*clauses), True


def _alphabetic_prefix(term: Term) -> str:
    first = term.groups[0] if term.groups else None
    if not first:
        return ""
    out = []
    for char in first:
        if char in "*?":
            break
        out.append(char)
    return "".join(out)


def _like_prefix(expr: ColumnElement[Any], prefix: str) -> ColumnElement[bool]:
    like = prefix.replace(_ESCAPE, _ESCAPE * 2).replace("%", _ESCAPE + "%")
    return expr.like(like.replace("_", _ESCAPE + "_") + "%", escape=_ESCAPE)


def _glob_or_like_prefix(
    expr: ColumnElement[Any], prefix: str, dialect: Dialect
) -> ColumnElement[bool]:
    if dialect.sqlite:
        return expr.op("GLOB")(
            prefix.replace("[", "[[]").replace("*", "[*]").replace("?", "[?]") + "*"
        )
    return _like_prefix(expr, prefix)


def _search_range(expr: ColumnElement[Any], term: Term, vr: str, dialect: Dialect) -> Clause:
    """PS3.4 C.2.2.2.5 Range Matching: ``low <= value <= high`` on DA (as stored),
    TM (normalized to ``HHMMSS.FFFFFF``); DT in SQL only narrows to non-empty values."""
    if vr == "DT":
        return and_(expr.is_not(None), expr != ""), False
    value = normalize_tm(expr, dialect) if vr == "TM" else expr
    clauses: list[ColumnElement[bool]] = [expr.is_not(None), expr != ""]
    if term.low is not None:
        clauses.append(value >= term.low)
    if term.high is not None:
        clauses.append(value <= term.high)
    return and_(*clauses), True


def search_combined(
    date: ColumnElement[Any],
    time: ColumnElement[Any],
    low: str | None,
    high: str | None,
    dialect: Dialect,
) -> ColumnElement[bool]:
    """PS3.4 C.2.2.2.5 combined Date Time range matching: ``date + time`` in the range;
    an empty time spans the whole day."""
    stored_time = case(
        (or_(time.is_(None), time == ""), literal(None, String)),
        else_=normalize_tm(time, dialect),
    )
    clauses: list[ColumnElement[bool]] = [date.is_not(None), date != ""]
    if low is not None:
        clauses.append(date + func.coalesce(stored_time, _TM_HIGH) >= low)
    if high is not None:
        clauses.append(date + func.coalesce(stored_time, _TM_LOW) <= high)
    return and_(*clauses)


def condition_clause(
    expr: ColumnElement[Any],
    condition: Condition,
    *,
    multi: bool,
    integer: bool,
    case_insensitive: bool,
    dialect: Dialect,
) -> Clause:
    """The SQL for one parsed key over one column; ``(clause, exact)``."""
    kind = condition.kind
    vr = condition.key.vr
    if kind is Kind.UNIVERSAL:
        return _search_universal()
    if kind is Kind.EMPTY:
        return _search_empty(expr, integer)
    if kind is Kind.UID_LIST:
        return _search_uid_list(expr, condition.terms, multi, dialect)
    if kind is Kind.SEQUENCE:
        return false(), False  # sequences are never columns
    clauses = []
    exact = True
    for term in condition.terms:
        if vr == "PN":
            clause, ok = _search_person_name(expr, term, case_insensitive, dialect)
        elif term.kind is Kind.RANGE:
            clause, ok = _search_range(expr, term, vr, dialect)
        elif term.kind is Kind.WILDCARD:
            clause, ok = _search_wildcard(expr, term, multi, dialect)
        else:
            clause, ok = _search_single_value(expr, term, vr, multi, integer, dialect)
        clauses.append(clause)
        exact = exact and ok
    return (clauses[0] if len(clauses) == 1 else or_(*clauses)), exact


# -- statements -------------------------------------------------------------------------


def hierarchy(level: Level) -> FromClause:
    """The level's table joined up to the patient (one row per entity of the level)."""
    table = LEVEL_TABLE[level]
    frm: FromClause = table
    while table is not patients:
        parent = _parent(table)
        frm = frm.join(parent, _link(parent, table))
        table = parent
    return frm


def _parent(table: Table) -> Table:
    return {"studies": patients, "series": studies, "instances": series}[table.name]


def level_select(level: Level) -> Select[Any]:
    """``SELECT pk FROM`` :func:`hierarchy` — callers add columns and the WHERE."""
    return select(LEVEL_TABLE[level].c.pk).select_from(hierarchy(level))


def below(
    level: Level, deepest: Level, clauses: Sequence[ColumnElement[bool]]
) -> ColumnElement[bool]:
    """PS3.4 C.4.1.2.2 relational queries: an entity below *level* (down to *deepest*)
    meets every clause: ``EXISTS (…)`` correlated to the level's row."""
    chain = [LEVEL_TABLE[lv] for lv in Level if level.depth < lv.depth <= deepest.depth]
    parent = LEVEL_TABLE[level]
    frm: Any = chain[0]
    for upper, lower in itertools.pairwise(chain):
        frm = frm.join(lower, _link(upper, lower))
    return exists(select(literal(1)).select_from(frm).where(_link(parent, chain[0]), *clauses))


def _link(upper: Table, lower: Table) -> ColumnElement[bool]:
    foreign = {"studies": "patient_pk", "series": "study_pk", "instances": "series_pk"}
    return lower.c[foreign[lower.name]] == upper.c.pk


def one_metadata(level: Level) -> ColumnElement[Any]:
    """The stored DICOM JSON of one instance of the level's entity (the first stored)."""
    if level is Level.IMAGE:
        return instances.c.metadata_json
    query = select(instances.c.metadata_json)
    if level is Level.SERIES:
        query = query.where(instances.c.series_pk == series.c.pk).correlate(series)
    elif level is Level.STUDY:
        query = (
            query.select_from(instances.join(series, instances.c.series_pk == series.c.pk))
            .where(series.c.study_pk == studies.c.pk)
            .correlate(studies)
        )
    else:
        frm = instances.join(series, instances.c.series_pk == series.c.pk).join(
            studies, series.c.study_pk == studies.c.pk
        )
        query = query.select_from(frm).where(studies.c.patient_pk == patients.c.pk)
        query = query.correlate(patients)
    return query.order_by(instances.c.pk).limit(1).scalar_subquery()


def stream(index: Index, statement: Select[Any]) -> Generator[dict[str, Any], None, None]:
    """Run *statement* and yield its rows as dicts, a page at a time, holding the
    connection (and the server-side cursor) only while the caller iterates."""
    with index._read.connect() as conn:
        if index.is_sqlite:
            raw = conn.connection.dbapi_connection
            assert raw is not None
            raw.create_function("dicomvault_fold", 1, _fold_or_none, deterministic=True)
            prepared = _prepared(conn.dialect, statement)
            if prepared is not None:
                yield from _raw_rows(raw, prepared)
                return
        else:
            # A server-side cursor is planned for its first 10 % of rows by default
            # (cursor_tuple_fraction): PostgreSQL then walks the level's primary key in
            # ORDER BY order and filters, measured 100x slower for a selective name key.
            # Every match is read, so plan for all of them; the setting ends with the
            # transaction.
            conn.exec_driver_sql("SET LOCAL cursor_tuple_fraction = 1.0")
        result = conn.execution_options(stream_results=True, yield_per=PAGE).execute(statement)
        try:
            keys = list(result.keys())
            for row in result:
                yield dict(zip(keys, row, strict=True))
        finally:
            result.close()


@dataclass(frozen=True, slots=True)
class _Prepared:
    sql: str
    parameters: list[Any]
    keys: list[str]


#: Compiled statements by their SQLAlchemy cache key (the query's shape, not its values).
_COMPILED: Final = LRUCache[Any, Any](1000)


def _prepared(dialect: SqlDialect, statement: Select[Any]) -> _Prepared | None:
    """The SQL text, positional parameters and column keys of ``statement`` for plain
    ``sqlite3``, compiled once per shape through SQLAlchemy's own statement cache.

    A selective C-FIND's rows come from SQLite in ~15 µs; running the statement through
    ``Connection.execute`` (cache key, compiled lookup, result wrapping) took ~0.17 ms
    more, as long as the rest of the query's work. This uses SQLAlchemy's cache the way
    ``Connection.execute`` does (private methods, checked by a test); ``None`` — use
    ``execute`` — when the statement is not cacheable or a column needs a result
    processor.
    """
    try:
        out = statement._compile_w_cache(dialect, compiled_cache=_COMPILED, column_keys=[])
        compiled: Any = out[0]
        extracted = out[1]
        if extracted is None:
            return None
        values = compiled.construct_params(extracted_parameters=extracted)
        expanded = compiled._process_parameters_for_postcompile(values)  # IN lists
        if any(
            entry[3]._cached_result_processor(dialect, None) is not None
            for entry in compiled._result_columns
        ):
            return None
    except (AttributeError, TypeError, ValueError, IndexError):  # SQLAlchemy changed
        return None
    parameters = dict(expanded.parameters)
    for name, processor in expanded.processors.items():
        if name in parameters and processor is not None:
            parameters[name] = processor(parameters[name])
    order = expanded.positiontup or ()
    return _Prepared(
        expanded.statement,
        [parameters[name] for name in order],
        [entry[0] for entry in compiled._result_columns],
    )


def _raw_rows(connection: Any, prepared: _Prepared) -> Generator[dict[str, Any], None, None]:
    cursor = connection.cursor()
    try:
        cursor.execute(prepared.sql, prepared.parameters)
        keys = prepared.keys
        while rows := cursor.fetchmany(PAGE):
            for row in rows:
                yield dict(zip(keys, row, strict=True))
    finally:
        cursor.close()


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


def _fold_or_none(value: object) -> object:
    return fold(value) if isinstance(value, str) else value
