"""C-FIND matching as SQL text (PS3.4 C.2.2.2), for SQLite and PostgreSQL.

One function per matching type, named after the standard as pynetdicom's ``qrscp`` does
(``search_single_value`` …), each returning an :class:`Sql` fragment — text with ``?``
placeholders and its parameters — and whether the fragment is *exact*. A fragment that is
not exact selects a superset (a wild card over a backslash-joined multi-valued column, a
DT range); the archive then rechecks those rows in Python with
:func:`dicomvault.model.matching.matches`.

Why text and not SQLAlchemy expressions: a C-FIND builds a dozen clauses, and building
and caching them as SQLAlchemy constructs cost ~0.1 ms per comparison — 0.5 ms for a
selective query whose rows SQLite returns in 20 µs, most of the server's time per query.
Text costs a few µs, every value is a parameter (no value is ever part of the text), and
the same query shape gives the same text, so SQLite's own statement cache (per
connection, by text) skips preparing and planning it again.

Literal ``%``, ``_`` and ``!`` in values are escaped (``ESCAPE '!'``) on PostgreSQL, and
SQLite uses ``GLOB`` (case-sensitive, ``[`` escaped as ``[[]``), so no value ever becomes
an SQL wild card. Case-insensitive Person Name matching folds both sides: PostgreSQL's
``lower()`` (UTF-8 locale), and on SQLite a registered ``dicomvault_fold`` function
(SQLite's own ``lower()`` folds ASCII only).

Rows are read in pages of :data:`PAGE` (a server-side cursor on PostgreSQL, SQLite's lazy
stepping), so a query over a million rows holds one page.
"""

from __future__ import annotations

import itertools
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from dicomvault.index.db import Index
from dicomvault.index.query import PAGE, plan_for_every_row, result_rows
from dicomvault.model.matching import Condition, Kind, Term
from dicomvault.model.query import Level

_ESCAPE: Final = "!"
#: The table of each level.
LEVEL_TABLE: Final = {
    Level.PATIENT: "patients",
    Level.STUDY: "studies",
    Level.SERIES: "series",
    Level.IMAGE: "instances",
}
_PARENT: Final = {"studies": "patients", "series": "studies", "instances": "series"}
_FOREIGN: Final = {"studies": "patient_pk", "series": "study_pk", "instances": "series_pk"}
_TM_LOW: Final = "'000000.000000'"
_TM_HIGH: Final = "'235959.999999'"


@dataclass(frozen=True, slots=True)
class Sql:
    """SQL text with ``?`` placeholders and the parameters they take, in order."""

    text: str
    params: tuple[Any, ...] = ()


Clause = tuple[Sql | None, bool]  # (fragment, exact); None: no constraint


def _all(parts: Sequence[Sql], joiner: str = " AND ") -> Sql:
    if len(parts) == 1:
        return parts[0]
    params: tuple[Any, ...] = ()
    for part in parts:
        params += part.params
    return Sql("(" + joiner.join(p.text for p in parts) + ")", params)


def _any(parts: Sequence[Sql]) -> Sql:
    return _all(parts, " OR ")


@dataclass(frozen=True)
class Dialect:
    """What differs between SQLite and PostgreSQL for matching."""

    sqlite: bool

    def fold(self, expr: str) -> str:
        return f"dicomvault_fold({expr})" if self.sqlite else f"lower({expr})"

    def position(self, expr: str, char: str) -> str:
        return f"instr({expr}, '{char}')" if self.sqlite else f"strpos({expr}, '{char}')"

    def pattern(self, expr: str, wildcard: str) -> Sql:
        """``expr`` matches the DICOM wild card pattern (``*``, ``?``) exactly."""
        if self.sqlite:
            return Sql(f"{expr} GLOB ?", (wildcard.replace("[", "[[]"),))
        like = wildcard.replace(_ESCAPE, _ESCAPE * 2).replace("%", _ESCAPE + "%")
        like = like.replace("_", _ESCAPE + "_").replace("*", "%").replace("?", "_")
        return Sql(f"{expr} LIKE ? ESCAPE '{_ESCAPE}'", (like,))


# -- column expressions ----------------------------------------------------------------


def column(spec: str) -> str:
    """``"table.column"`` → its SQL; ``"sum:studies.column"`` → the patient's sum.

    Names are quoted: ``rows`` and ``columns`` are key words of SQL.
    """
    if spec.startswith("sum:"):
        table, name = spec[4:].split(".")
        # An alias, correlated to the patient only: in a Study Root query the outer
        # statement selects from the studies table too.
        alias = f"{table}_of_patient"
        return (
            f'(SELECT coalesce(sum({alias}."{name}"), 0) FROM {table} AS {alias} '
            f"WHERE {alias}.patient_pk = patients.pk)"
        )
    table, name = spec.split(".")
    return f'{table}."{name}"'


def normalize_tm(expr: str, dialect: Dialect) -> str:
    """SQL twin of :func:`dicomvault.model.matching.normalize_tm`."""
    padded = f"({expr} || '000000')"
    return (
        f"CASE WHEN {dialect.position(expr, '.')} > 0 THEN substr({padded}, 1, 13) "
        f"ELSE substr({padded}, 1, 6) || '.000000' END"
    )


def _head(expr: str, dialect: Dialect) -> str:
    at = dialect.position(expr, "=")
    return f"CASE WHEN {at} > 0 THEN substr({expr}, 1, {at} - 1) ELSE {expr} END"


def _rest(expr: str, dialect: Dialect) -> str:
    at = dialect.position(expr, "=")
    return f"CASE WHEN {at} > 0 THEN substr({expr}, {at} + 1) ELSE '' END"


def pn_group(expr: str, index: int, dialect: Dialect) -> str:
    """Component group *index* (0 Alphabetic, 1 Ideographic, 2 Phonetic), PS3.5 6.2.1."""
    for _ in range(index):
        expr = f"({_rest(expr, dialect)})"
    return f"({_head(expr, dialect)})"


# -- one function per matching type (PS3.4 C.2.2.2) -----------------------------------


def search_empty(expr: str, integer: bool) -> Clause:
    """PS3.4 C.2.2.2.7 Empty Value Matching (``""``): empty or absent values match."""
    if integer:
        return Sql(f"{expr} IS NULL"), True
    return Sql(f"({expr} IS NULL OR {expr} = '')"), True


def search_uid_list(expr: str, terms: Sequence[Term], multi: bool, dialect: Dialect) -> Clause:
    """PS3.4 C.2.2.2.2 List of UID Matching: the value equals one of the UIDs."""
    uids = tuple(t.value for t in terms)
    if multi:
        return _any([_contains_value(expr, uid, dialect) for uid in uids]), True
    if len(uids) == 1:
        return Sql(f"{expr} = ?", uids), True
    return Sql(f"{expr} IN ({', '.join('?' * len(uids))})", uids), True


def _framed(expr: str) -> str:
    return f"('\\' || {expr} || '\\')"


def _contains_value(expr: str, value: str, dialect: Dialect) -> Sql:
    r"""A backslash-joined column holds *value* as one of its values (no wild cards)."""
    if dialect.sqlite:
        glob = value.replace("[", "[[]").replace("*", "[*]").replace("?", "[?]")
        return Sql(f"{_framed(expr)} GLOB ?", ("*\\" + glob + "\\*",))
    like = (
        value.replace(_ESCAPE, _ESCAPE * 2).replace("%", _ESCAPE + "%").replace("_", _ESCAPE + "_")
    )
    return Sql(f"{_framed(expr)} LIKE ? ESCAPE '{_ESCAPE}'", ("%\\" + like + "\\%",))


def search_single_value(
    expr: str, term: Term, vr: str, multi: bool, integer: bool, dialect: Dialect
) -> Clause:
    """PS3.4 C.2.2.2.1 Single Value Matching: the stored value equals the key value."""
    if integer:
        return Sql(f"{expr} = ?", (int(term.value),)), True
    if vr in ("DS", "FL", "FD"):  # stored as text: compare in Python
        return Sql(f"{expr} IS NOT NULL"), False
    if multi:
        return _contains_value(expr, term.value, dialect), True
    return Sql(f"{expr} = ?", (term.value,)), True


def search_wildcard(expr: str, term: Term, multi: bool, dialect: Dialect) -> Clause:
    """PS3.4 C.2.2.2.4 Wild Card Matching: ``*`` any sequence, ``?`` any one character.

    Over a backslash-joined multi-valued column the pattern could span two values, so
    the clause is a superset there (rechecked in Python).
    """
    if multi:
        return dialect.pattern(_framed(expr), "*\\" + term.value + "\\*"), False
    return dialect.pattern(expr, term.value), True


def search_person_name(expr: str, term: Term, case_insensitive: bool, dialect: Dialect) -> Clause:
    """PS3.4 C.2.2.2.1 / C.2.2.2.4 for PN: each component group of the key (single or
    wild card) against the same group of the stored name; case folded when configured."""
    clauses: list[Sql] = []
    for index, wanted in enumerate(term.groups):
        if wanted is None:
            continue
        group = pn_group(expr, index, dialect)
        if case_insensitive:
            group = dialect.fold(group)
        if "*" in wanted or "?" in wanted:
            clauses.append(dialect.pattern(group, wanted))
        else:
            clauses.append(Sql(f"{group} = ?", (wanted,)))
    if not clauses:
        return Sql(f"{expr} IS NOT NULL"), True
    prefix = _alphabetic_prefix(term)
    if prefix:
        # Indexable necessary condition: the whole name starts with the literal prefix
        # of the Alphabetic group (which holds no "=").
        if case_insensitive:
            if dialect.sqlite:
                # SQLite's LIKE folds ASCII letters only, so only the prefix's ASCII head
                # is a necessary condition; its index range (the NOCASE index) stops at
                # the first non-ASCII character anyway. Without it a name like "MÜSO*"
                # scanned every patient through dicomvault_fold (280 ms at 100k studies).
                head = _ascii_head(prefix)
                if head:
                    clauses.insert(0, _like_prefix(expr, head))
            else:
                clauses.insert(0, _like_prefix(f"lower({expr})", prefix))
        elif dialect.sqlite:
            glob = prefix.replace("[", "[[]").replace("*", "[*]").replace("?", "[?]")
            clauses.insert(0, Sql(f"{expr} GLOB ?", (glob + "*",)))
        else:
            clauses.insert(0, _like_prefix(expr, prefix))
    return _all(clauses), True


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


def _ascii_head(text: str) -> str:
    for position, char in enumerate(text):
        if not char.isascii():
            return text[:position]
    return text


def _like_prefix(expr: str, prefix: str) -> Sql:
    like = prefix.replace(_ESCAPE, _ESCAPE * 2).replace("%", _ESCAPE + "%")
    return Sql(f"{expr} LIKE ? ESCAPE '{_ESCAPE}'", (like.replace("_", _ESCAPE + "_") + "%",))


def search_range(expr: str, term: Term, vr: str, dialect: Dialect) -> Clause:
    """PS3.4 C.2.2.2.5 Range Matching: ``low <= value <= high`` on DA (as stored),
    TM (normalized to ``HHMMSS.FFFFFF``); DT in SQL only narrows to non-empty values."""
    present = f"{expr} IS NOT NULL AND {expr} <> ''"
    if vr == "DT":
        return Sql(f"({present})"), False
    value = f"({normalize_tm(expr, dialect)})" if vr == "TM" else expr
    text, params = [present], []
    if term.low is not None:
        text.append(f"{value} >= ?")
        params.append(term.low)
    if term.high is not None:
        text.append(f"{value} <= ?")
        params.append(term.high)
    return Sql("(" + " AND ".join(text) + ")", tuple(params)), True


def search_combined(
    date: str, time: str, low: str | None, high: str | None, dialect: Dialect
) -> Sql:
    """PS3.4 C.2.2.2.5 combined Date Time range matching: ``date + time`` in the range;
    an empty time spans the whole day."""
    stored_time = (
        f"(CASE WHEN ({time} IS NULL OR {time} = '') THEN NULL "
        f"ELSE {normalize_tm(time, dialect)} END)"
    )
    text, params = [f"{date} IS NOT NULL AND {date} <> ''"], []
    if low is not None:
        text.append(f"{date} || coalesce({stored_time}, {_TM_HIGH}) >= ?")
        params.append(low)
    if high is not None:
        text.append(f"{date} || coalesce({stored_time}, {_TM_LOW}) <= ?")
        params.append(high)
    return Sql("(" + " AND ".join(text) + ")", tuple(params))


def condition_clause(
    expr: str,
    condition: Condition,
    *,
    multi: bool,
    integer: bool,
    case_insensitive: bool,
    dialect: Dialect,
) -> Clause:
    """The SQL for one parsed key over one column; ``(fragment, exact)``, the fragment
    ``None`` for Universal Matching (PS3.4 C.2.2.2.3: every entity matches)."""
    kind = condition.kind
    vr = condition.key.vr
    if kind is Kind.UNIVERSAL:
        return None, True
    if kind is Kind.EMPTY:
        return search_empty(expr, integer)
    if kind is Kind.UID_LIST:
        return search_uid_list(expr, condition.terms, multi, dialect)
    if kind is Kind.SEQUENCE:
        return Sql("1 = 0"), False  # sequences are never columns
    clauses = []
    exact = True
    for term in condition.terms:
        if vr == "PN":
            clause, ok = search_person_name(expr, term, case_insensitive, dialect)
        elif term.kind is Kind.RANGE:
            clause, ok = search_range(expr, term, vr, dialect)
        elif term.kind is Kind.WILDCARD:
            clause, ok = search_wildcard(expr, term, multi, dialect)
        else:
            clause, ok = search_single_value(expr, term, vr, multi, integer, dialect)
        assert clause is not None
        clauses.append(clause)
        exact = exact and ok
    return _any(clauses), exact


# -- statements -------------------------------------------------------------------------


def _link(upper: str, lower: str) -> str:
    return f"{lower}.{_FOREIGN[lower]} = {upper}.pk"


def hierarchy(level: Level) -> str:
    """The level's table joined up to the patient (one row per entity of the level)."""
    table = LEVEL_TABLE[level]
    frm = table
    while table != "patients":
        parent = _PARENT[table]
        frm += f" JOIN {parent} ON {_link(parent, table)}"
        table = parent
    return frm


def below(level: Level, deepest: Level, clauses: Sequence[Sql]) -> Sql:
    """PS3.4 C.4.1.2.2 relational queries: an entity below *level* (down to *deepest*)
    meets every clause: ``EXISTS (…)`` correlated to the level's row."""
    chain = [LEVEL_TABLE[lv] for lv in Level if level.depth < lv.depth <= deepest.depth]
    frm = chain[0]
    for upper, lower in itertools.pairwise(chain):
        frm += f" JOIN {lower} ON {_link(upper, lower)}"
    where = _all([Sql(_link(LEVEL_TABLE[level], chain[0])), *clauses])
    return Sql(f"EXISTS (SELECT 1 FROM {frm} WHERE {where.text})", where.params)


def one_metadata(level: Level) -> str:
    """The stored DICOM JSON of one instance of the level's entity (the first stored)."""
    if level is Level.IMAGE:
        return "instances.metadata_json"
    if level is Level.SERIES:
        frm, where = "instances", "instances.series_pk = series.pk"
    elif level is Level.STUDY:
        frm = "instances JOIN series ON instances.series_pk = series.pk"
        where = "series.study_pk = studies.pk"
    else:
        frm = (
            "instances JOIN series ON instances.series_pk = series.pk "
            "JOIN studies ON series.study_pk = studies.pk"
        )
        where = "studies.patient_pk = patients.pk"
    first = "ORDER BY instances.pk LIMIT 1"
    return f"(SELECT instances.metadata_json FROM {frm} WHERE {where} {first})"


def charsets(level: Level) -> tuple[str, str]:
    """The lowest and highest Specific Character Set of the entity's studies."""
    if level is Level.PATIENT:
        of_patient = "FROM studies WHERE studies.patient_pk = patients.pk"
        return (
            f"(SELECT min(studies.specific_character_set) {of_patient})",
            f"(SELECT max(studies.specific_character_set) {of_patient})",
        )
    return "studies.specific_character_set", "studies.specific_character_set"


def select(
    level: Level,
    columns: Sequence[tuple[str, str]],
    where: Sequence[Sql],
    *,
    limit: int | None = None,
    offset: int = 0,
) -> Sql:
    """``SELECT`` the *columns* (``(expression, key)``) of the level's entities meeting
    every clause of *where*, in storage order, *offset* skipped, at most *limit*."""
    table = LEVEL_TABLE[level]
    selected = ", ".join(f"{expr} AS {key}" for expr, key in columns)
    statement = _where(f"SELECT {table}.pk AS pk, {selected} FROM {hierarchy(level)}", where)
    text, params = statement.text + f" ORDER BY {table}.pk", statement.params
    if limit is not None:
        text += " LIMIT ?"
        params += (limit,)
    if offset:
        # SQLite needs a LIMIT before an OFFSET; -1 is "no limit" there.
        text += (" LIMIT -1" if limit is None else "") + " OFFSET ?"
        params += (offset,)
    return Sql(text, params)


#: What :class:`~dicomvault.model.records.StoredInstance` holds, in its order.
_STORED: Final = (
    "instances.sop_instance_uid",
    "instances.sop_class_uid",
    "studies.study_instance_uid",
    "series.series_instance_uid",
    "instances.transfer_syntax_uid",
    "instances.blob_name",
    "instances.size",
    "instances.sha256",
    "instances.dataset_sha256",
)


def retrieve(unique: Sequence[tuple[str, Sequence[str]]]) -> Sql:
    """``SELECT`` of what a C-MOVE / C-GET sends (PS3.4 C.4.2.2.1): the instances whose
    unique keys (``(column spec, values)``) each hold one of the values, by study,
    series, then storage order. Columns in :class:`StoredInstance`'s order."""
    where = []
    for spec, values in unique:
        marks = ", ".join("?" * len(values))
        test = f"= {marks}" if len(values) == 1 else f"IN ({marks})"
        where.append(Sql(f"{column(spec)} {test}", tuple(values)))
    selected = ", ".join(column(spec) for spec in _STORED)
    statement = _where(f"SELECT {selected} FROM {hierarchy(Level.IMAGE)}", where)
    return Sql(statement.text + " ORDER BY studies.pk, series.pk, instances.pk", statement.params)


def _where(text: str, clauses: Sequence[Sql]) -> Sql:
    """*text* with a ``WHERE`` of every clause (none: as it is)."""
    if not clauses:
        return Sql(text)
    clause = _all(clauses)
    return Sql(f"{text} WHERE {clause.text}", clause.params)


def stream(index: Index, statement: Sql) -> Generator[dict[str, Any], None, None]:
    """Run *statement* and yield its rows as dicts keyed by the column labels, a page at
    a time, holding the connection (and the server-side cursor) only while the caller
    iterates."""
    with index._read.connect() as conn:
        if index.is_sqlite:
            raw: Any = conn.connection.dbapi_connection
            cursor = raw.cursor()
            try:
                cursor.execute(statement.text, statement.params)
                keys = [d[0] for d in cursor.description]
                while rows := cursor.fetchmany(PAGE):
                    for row in rows:
                        yield dict(zip(keys, row, strict=True))
            finally:
                cursor.close()
            return
        plan_for_every_row(conn)
        # psycopg's placeholder; the text holds no other "?" or "%" (values are
        # parameters, and the fixed text has neither).
        text = statement.text.replace("?", "%s")
        result = conn.execution_options(stream_results=True, yield_per=PAGE).exec_driver_sql(
            text, statement.params
        )
        yield from result_rows(result)
