"""The instances a WADO-RS retrieve names (PS3.18 10.4.1: a study, a series or one
instance), in one query, with their stored DICOM JSON when the metadata is asked for.

Order: series by Series Number, instances by Instance Number, then storage order (rows
without a number last on both backends), so a viewer gets a series in slice order
without sorting.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Dialect, Select, bindparam, select

from dicomvault.index.db import Index, stored_instances
from dicomvault.index.schema import instances, series, studies
from dicomvault.model.records import StoredInstance

#: (instance, its DICOM JSON text or ``None`` when not asked for)
Selected = tuple[StoredInstance, str | None]


def _statement(series_given: bool, instance_given: bool, with_metadata: bool) -> Select[Any]:
    """The SELECT of one shape, with bind parameters ``study``, ``series``, ``instance``."""
    statement = stored_instances()
    if with_metadata:
        statement = statement.add_columns(instances.c.metadata_json)
    where: list[ColumnElement[bool]] = [studies.c.study_instance_uid == bindparam("study")]
    if series_given:
        where.append(series.c.series_instance_uid == bindparam("series"))
    if instance_given:
        where.append(instances.c.sop_instance_uid == bindparam("instance"))
    return statement.where(*where).order_by(
        series.c.series_number.asc().nulls_last(),
        series.c.pk,
        instances.c.instance_number.asc().nulls_last(),
        instances.c.pk,
    )


def select_instances(
    index: Index,
    study_instance_uid: str,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    *,
    with_metadata: bool = False,
) -> list[Selected]:
    """The stored instances of a study, of a series of it, or one instance of that series.

    Parameters
    ----------
    index : Index
    study_instance_uid : str
    series_instance_uid, sop_instance_uid : str, optional
        Narrow to one series of the study, and to one instance of that series.
    with_metadata : bool
        Also read each instance's ``metadata_json`` (PS3.18 F.2 text, relative
        BulkDataURIs).

    Returns
    -------
    list of (StoredInstance, str or None)
        Empty when nothing matches (unknown UIDs, or a series/instance under another
        parent); the caller finds out which with :func:`hierarchy_of`.
    """
    sql, order = _compiled(
        index._read.dialect,
        series_instance_uid is not None,
        sop_instance_uid is not None,
        with_metadata,
    )
    values = {
        "study": study_instance_uid,
        "series": series_instance_uid,
        "instance": sop_instance_uid,
    }
    params: Any = values if order is None else [values[name] for name in order]
    # Plain DBAPI on the pooled connection: SQLAlchemy's statement and row handling cost
    # ~0.6 ms for a 50-instance study, most of a WADO-RS answer's time to first byte.
    with index._read.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        cursor = raw.cursor()
        try:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
        finally:
            cursor.close()
    out: list[Selected] = []
    for row in rows:  # pk, the fields of StoredInstance, then metadata_json if asked
        text = row[10] if with_metadata else None
        out.append((StoredInstance(*row[1:10]), None if text is None else str(text)))
    return out


_COMPILED: dict[tuple[str, bool, bool, bool], tuple[str, tuple[str, ...] | None]] = {}


def _compiled(
    dialect: Dialect, series: bool, instance: bool, with_metadata: bool
) -> tuple[str, tuple[str, ...] | None]:
    """The SQL text of :func:`_statement` for ``dialect``, and the order of its bind
    names (``None`` for a named paramstyle); built once per shape."""
    key = (dialect.name, series, instance, with_metadata)
    found = _COMPILED.get(key)
    if found is None:
        compiled = _statement(series, instance, with_metadata).compile(dialect=dialect)
        order = compiled.positiontup
        found = _COMPILED[key] = (str(compiled), None if order is None else tuple(order))
    return found


def series_study(index: Index, series_instance_uid: str) -> str | None:
    """The Study Instance UID of the study a series belongs to, ``None`` when unknown."""
    with index._read.connect() as conn:
        found = conn.execute(
            select(studies.c.study_instance_uid)
            .join(series, series.c.study_pk == studies.c.pk)
            .where(series.c.series_instance_uid == series_instance_uid)
        ).scalar()
    return None if found is None else str(found)


def study_exists(index: Index, study_instance_uid: str) -> bool:
    with index._read.connect() as conn:
        found = conn.execute(
            select(studies.c.pk).where(studies.c.study_instance_uid == study_instance_uid)
        ).first()
    return found is not None
