"""DuckDB warehouse: the embedded default, one file under the data folder."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import duckdb

from remarket.errors import OffsetConflict
from remarket.schema.events import Message
from remarket.storage.warehouse.base import (
    EventPage,
    IdentityRow,
    decode_cursor,
    encode_cursor,
)
from remarket.storage.warehouse.columns import EVENT_COLUMNS, event_table

__all__ = ["DuckDBWarehouse"]

DDL: Final = (
    """CREATE TABLE IF NOT EXISTS events (
        "offset" BIGINT NOT NULL, message_id VARCHAR, source_id VARCHAR, type VARCHAR NOT NULL,
        event VARCHAR, name VARCHAR, category VARCHAR, anonymous_id VARCHAR, user_id VARCHAR,
        group_id VARCHAR, previous_id VARCHAR, timestamp TIMESTAMPTZ NOT NULL,
        original_timestamp TIMESTAMPTZ, sent_at TIMESTAMPTZ, received_at TIMESTAMPTZ NOT NULL,
        properties JSON, traits JSON, context JSON)""",
    """CREATE TABLE IF NOT EXISTS identities (
        kind VARCHAR NOT NULL, value VARCHAR NOT NULL, profile_id VARCHAR NOT NULL,
        PRIMARY KEY (kind, value))""",
    """CREATE TABLE IF NOT EXISTS consumer_offsets (
        consumer VARCHAR PRIMARY KEY, "offset" BIGINT NOT NULL)""",
)
_SELECT_COLUMNS: Final = ", ".join(f'"{c}"' for c in EVENT_COLUMNS)


class DuckDBWarehouse:
    """Events in a DuckDB file. Thread-safe: each call uses its own cursor.

    >>> wh = DuckDBWarehouse(None)
    >>> wh.count_events()
    0
    """

    dialect = "duckdb"

    def __init__(self, path: Path | None) -> None:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._db = duckdb.connect(str(path) if path is not None else ":memory:")
        self._db.execute("SET TimeZone = 'UTC'")
        self._write_lock = threading.Lock()
        for statement in DDL:
            self._db.execute(statement)

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        return self._db.cursor()

    def committed(self, consumer: str) -> int:
        row = (
            self._cursor()
            .execute('SELECT "offset" FROM consumer_offsets WHERE consumer = ?', [consumer])
            .fetchone()
        )
        return int(row[0]) if row else 0

    def write_events(
        self, consumer: str, rows: Sequence[tuple[int, Message]], through: int, *, expected: int
    ) -> None:
        with self._write_lock:
            cur = self._cursor()
            cur.execute("BEGIN")
            try:
                stored = cur.execute(
                    'SELECT "offset" FROM consumer_offsets WHERE consumer = ?', [consumer]
                ).fetchall()
                current = int(stored[0][0]) if stored else 0
                if current != expected:
                    raise OffsetConflict(
                        f"consumer {consumer!r} is at {current}, not {expected}", field="expected"
                    )
                if rows:
                    cur.register("_batch", event_table(rows))
                    cur.execute(f"INSERT INTO events SELECT {_SELECT_COLUMNS} FROM _batch")
                    cur.unregister("_batch")
                cur.execute(
                    "INSERT OR REPLACE INTO consumer_offsets VALUES (?, ?)", [consumer, through]
                )
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise

    def upsert_identities(self, rows: Sequence[IdentityRow]) -> None:
        if not rows:
            return
        with self._write_lock:
            self._cursor().executemany(
                "INSERT OR REPLACE INTO identities VALUES (?, ?, ?)", list(rows)
            )

    def profile_events(
        self,
        anonymous_ids: Sequence[str],
        user_ids: Sequence[str],
        *,
        limit: int,
        cursor: str | None = None,
    ) -> EventPage:
        where = "(list_contains(?, anonymous_id) OR list_contains(?, user_id))"
        params: list[Any] = [list(anonymous_ids), list(user_ids)]
        if cursor is not None:
            ts, off = decode_cursor(cursor)
            where += ' AND (timestamp < ? OR (timestamp = ? AND "offset" < ?))'
            params += [ts, ts, off]
        cur = self._cursor()
        result = cur.execute(
            f"SELECT {_SELECT_COLUMNS} FROM events WHERE {where} "
            'ORDER BY timestamp DESC, "offset" DESC LIMIT ?',
            [*params, limit + 1],
        )
        names = [d[0] for d in result.description]
        rows = [dict(zip(names, r, strict=True)) for r in result.fetchall()]
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1]["timestamp"], rows[-1]["offset"]) if more else None
        return EventPage(rows, next_cursor)

    def count_events(self) -> int:
        row = self._cursor().execute("SELECT count(*) FROM events").fetchone()
        return int(row[0]) if row else 0

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._cursor().execute(sql, list(params)).fetchall()

    def close(self) -> None:
        self._db.close()
