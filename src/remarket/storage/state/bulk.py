"""Many-row inserts and updates straight through the driver's ``executemany``.

The hot writers (journey instances and steps, segment transitions, states and timers,
sealing keys) write thousands of rows per round; SQLAlchemy's per-row parameter handling
cost more than the database did. Here each column's bind
processor (the dialect's conversion of datetimes, JSON, ...) is applied once per value
and the statement goes to the driver as is, so the stored form is exactly what
SQLAlchemy itself would have written.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table

__all__ = ["bulk_insert", "bulk_update"]


def _marker(conn: Connection) -> str:
    return "?" if conn.dialect.paramstyle == "qmark" else "%s"


def _processors(
    conn: Connection, table: Table, columns: Sequence[str]
) -> list[Callable[[Any], Any] | None]:
    dialect = conn.dialect
    return [table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in columns]


def _memo(process: Callable[[Any], Any] | None) -> Callable[[Any], Any] | None:
    """``process`` remembering its answers for datetimes: a batch's rows share a few
    instants (its ``now``), and formatting them is the bulk of the per-row cost."""
    if process is None:
        return None
    seen: dict[datetime, Any] = {}

    def memoised(value: Any) -> Any:
        if not isinstance(value, datetime):
            return process(value)
        found = seen.get(value)
        if found is None:
            found = seen[value] = process(value)
        return found

    return memoised


def _tuples(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    processors: Sequence[Callable[[Any], Any] | None],
) -> list[tuple[Any, ...]]:
    pairs = [(c, _memo(p)) for c, p in zip(columns, processors, strict=True)]
    return [
        tuple(p(row[c]) if p is not None and row[c] is not None else row[c] for c, p in pairs)
        for row in rows
    ]


def bulk_insert(
    conn: Connection,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    skip_existing: bool = False,
    replace_on: Sequence[str] = (),
) -> None:
    """Insert ``rows`` (dicts with the same keys) into ``table`` in the caller's transaction;
    with ``skip_existing``, rows that would break a unique key are left out; with
    ``replace_on`` (a unique key's columns), a row whose key exists updates the others.

    >>> from sqlalchemy import create_engine, MetaData, Column, Integer, String
    >>> t = Table("t", MetaData(), Column("a", Integer), Column("b", String))
    >>> engine = create_engine("sqlite://"); t.metadata.create_all(engine)
    >>> with engine.begin() as conn:
    ...     bulk_insert(conn, t, [{"a": 1, "b": "x"}, {"a": 2, "b": None}])
    ...     conn.execute(t.select().order_by(t.c.a)).all()
    [(1, 'x'), (2, None)]
    """
    if not rows:
        return
    columns = list(rows[0])
    names = ", ".join(f'"{c}"' for c in columns)
    marks = ", ".join(_marker(conn) for _ in columns)
    sql = f'INSERT INTO "{table.name}" ({names}) VALUES ({marks})'
    # SQLite 3.24+ and PostgreSQL spell both alike.
    if skip_existing:
        sql += " ON CONFLICT DO NOTHING"
    elif replace_on:
        keys = ", ".join(f'"{c}"' for c in replace_on)
        updates = ", ".join(f'"{c}" = excluded."{c}"' for c in columns if c not in replace_on)
        sql += f" ON CONFLICT ({keys}) DO UPDATE SET {updates}"
    conn.exec_driver_sql(sql, _tuples(rows, columns, _processors(conn, table, columns)))


def bulk_update(
    conn: Connection,
    table: Table,
    key: str,
    columns: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
) -> None:
    """Set ``columns`` of the row whose ``key`` column matches, for each of ``rows``."""
    if not rows:
        return
    settable = [c for c in columns if c != key]
    mark = _marker(conn)
    assignments = ", ".join(f'"{c}" = {mark}' for c in settable)
    sql = f'UPDATE "{table.name}" SET {assignments} WHERE "{key}" = {mark}'
    order = [*settable, key]
    conn.exec_driver_sql(sql, _tuples(rows, order, _processors(conn, table, order)))
