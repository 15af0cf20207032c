"""Many rows into one table through the driver's ``executemany``.

SQLAlchemy's ``conn.execute(table.insert(), rows)`` spends ~10-20 µs of Python per row
binding and converting parameters: more than SQLite takes to insert the row. The hot
writers (segment transitions and states, sealing keys) hand their rows to the driver
instead, with times stored as SQLAlchemy's ``DateTime`` stores them, so every other
reader is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table

from remarket.schema.events import as_utc

__all__ = ["insert_rows", "stored_time"]


def stored_time(dialect: str, at: datetime) -> datetime | str:
    """A time as the driver takes it: SQLite has no time type, so the text SQLAlchemy's
    ``DateTime`` would write (UTC, naive, microseconds); PostgreSQL takes the datetime."""
    if dialect == "sqlite":
        return as_utc(at).replace(tzinfo=None).isoformat(" ", "microseconds")
    return at


def insert_rows(
    conn: Connection,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    replace_on: Sequence[str] = (),
) -> None:
    """INSERT ``rows`` (values in the order of ``columns``) in the caller's transaction;
    with ``replace_on`` (a unique key's columns), a row whose key exists updates the other
    columns instead (``ON CONFLICT … DO UPDATE``, the same on SQLite and PostgreSQL).
    Datetimes are stored with :func:`stored_time`; other values go to the driver as they
    are (str, int, bytes, bool, None)."""
    if not rows:
        return
    dialect = conn.dialect.name
    quote = conn.dialect.identifier_preparer.quote
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    sql = (
        f"INSERT INTO {quote(table.name)} ({', '.join(quote(c) for c in columns)}) "
        f"VALUES ({', '.join([mark] * len(columns))})"
    )
    if replace_on:
        updated = [quote(c) for c in columns if c not in replace_on]
        sql += (
            f" ON CONFLICT ({', '.join(quote(c) for c in replace_on)}) DO UPDATE SET "
            + ", ".join(f"{c} = excluded.{c}" for c in updated)
        )
    if dialect == "sqlite":
        rows = [
            tuple(stored_time(dialect, v) if isinstance(v, datetime) else v for v in row)
            for row in rows
        ]
    conn.exec_driver_sql(sql, list(rows))
