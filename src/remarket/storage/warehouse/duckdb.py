"""DuckDB warehouse: the embedded default, one file under the data folder."""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import duckdb
import msgspec
import pyarrow as pa

from remarket.errors import OffsetConflict, StorageError
from remarket.schema.events import Message
from remarket.storage.warehouse.base import (
    EventPage,
    IdentityRow,
    decode_cursor,
    encode_cursor,
    identity_columns,
)
from remarket.storage.warehouse.columns import EVENT_COLUMNS

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
    """CREATE TABLE IF NOT EXISTS maintenance (name VARCHAR PRIMARY KEY, value BIGINT NOT NULL)""",
)
_COMPACTED: Final = "compacted_through"
_LOCK_POLL_S: Final = 0.1
_HOLDER: Final = re.compile(r"PID \d+")
_log = logging.getLogger(__name__)
_SELECT_COLUMNS: Final = ", ".join(f'"{c}"' for c in EVENT_COLUMNS)
# Column ← (key in the canonical message JSON, DuckDB type). DuckDB parses each message
# once, in C++, which is several times faster than building the columns in Python.
_FROM_MESSAGE: Final = {
    "message_id": ("messageId", "VARCHAR"),
    "source_id": ("sourceId", "VARCHAR"),
    "type": ("type", "VARCHAR"),
    "event": ("event", "VARCHAR"),
    "name": ("name", "VARCHAR"),
    "category": ("category", "VARCHAR"),
    "anonymous_id": ("anonymousId", "VARCHAR"),
    "user_id": ("userId", "VARCHAR"),
    "group_id": ("groupId", "VARCHAR"),
    "previous_id": ("previousId", "VARCHAR"),
    "timestamp": ("timestamp", "TIMESTAMPTZ"),
    "original_timestamp": ("originalTimestamp", "TIMESTAMPTZ"),
    "sent_at": ("sentAt", "TIMESTAMPTZ"),
    "received_at": ("receivedAt", "TIMESTAMPTZ"),
    "properties": ("properties", "JSON"),
    "traits": ("traits", "JSON"),
    "context": ("context", "JSON"),
}
assert tuple(_FROM_MESSAGE) == EVENT_COLUMNS[1:], "every warehouse column, in order"
_STRUCTURE: Final = json.dumps({key: kind for key, kind in _FROM_MESSAGE.values()})
_INSERT: Final = (
    f"INSERT INTO events SELECT o, {', '.join(f'm.{key}' for key, _ in _FROM_MESSAGE.values())} "
    f"FROM (SELECT \"offset\" AS o, from_json(decode(payload), '{_STRUCTURE}') AS m FROM _batch)"
)
_ENCODER: Final = msgspec.json.Encoder()
_APPEND_IDENTITIES: Final = "INSERT INTO identities SELECT kind, value, profile_id FROM _identities"
_REPLACE_IDENTITIES: Final = _APPEND_IDENTITIES.replace("INSERT", "INSERT OR REPLACE", 1)


def _subject(ids: Sequence[str], profile_ids: Sequence[str]) -> list[tuple[str, list[Any]]]:
    """The rows of a person: ``table WHERE ...`` and its parameters."""
    ids, pids = list(ids), list(profile_ids)
    return [
        (
            "events WHERE list_contains(?, anonymous_id) OR list_contains(?, user_id) "
            "OR list_contains(?, previous_id)",
            [ids, ids, ids],
        ),
        ("identities WHERE list_contains(?, profile_id) OR list_contains(?, value)", [pids, ids]),
    ]


def _literal(path: Path) -> str:
    """A path inside a SQL string literal (COPY and ATTACH take no parameter for it)."""
    return str(path).replace("'", "''")


def _remove(database: Path) -> None:
    """Delete a database file and its write-ahead log, if there."""
    for path in (database, database.with_name(f"{database.name}.wal")):
        path.unlink(missing_ok=True)


def _count(cur: duckdb.DuckDBPyConnection) -> int:
    row = cur.fetchone()
    return int(row[0]) if row else 0


class DuckDBWarehouse:
    """Events in a DuckDB file. Thread-safe: each call uses its own cursor.

    Writers of ``events`` (and offsets) and writers of ``identities`` hold separate locks:
    their transactions touch different tables, so DuckDB runs them side by side (the
    profile worker's identity mirror no longer waits for the warehouse worker's load).
    Whatever changes both tables (erasure) holds both locks, events first.

    >>> wh = DuckDBWarehouse(None)
    >>> wh.count_events()
    0
    """

    dialect = "duckdb"

    def __init__(self, path: Path | None, *, lock_wait_s: float = 0.0) -> None:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._db = self._open_when_free(lock_wait_s)
        self._events_lock = threading.Lock()
        self._identities_lock = threading.Lock()

    def _open_when_free(self, wait_s: float) -> duckdb.DuckDBPyConnection:
        """Open the file, waiting up to ``wait_s`` for another process's lock on it to go
        (a worker process that went down with its server may still be closing it)."""
        deadline = time.monotonic() + wait_s
        waiting = False
        while True:
            try:
                return self._open()
            except duckdb.IOException as exc:
                if "lock" not in str(exc):
                    raise
                if time.monotonic() >= deadline:
                    holder = _HOLDER.search(str(exc))
                    raise StorageError(
                        f"the warehouse {self._path} is in use by another process"
                        f"{f' ({holder[0]})' if holder else ''}, a running server or worker: "
                        "an embedded DuckDB warehouse has one opener at a time",
                        field="warehouse_url",
                    ) from exc
                if not waiting:
                    _log.warning("%s is locked by another process; waiting for it", self._path)
                    waiting = True
                time.sleep(_LOCK_POLL_S)

    def _open(self) -> duckdb.DuckDBPyConnection:
        db = duckdb.connect(str(self._path) if self._path is not None else ":memory:")
        db.execute("SET TimeZone = 'UTC'")
        for statement in DDL:
            db.execute(statement)
        return db

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
        with self._events_lock:
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
                    batch = pa.table(
                        {
                            "offset": pa.array([offset for offset, _ in rows], pa.int64()),
                            "payload": pa.array([_ENCODER.encode(m) for _, m in rows], pa.binary()),
                        }
                    )
                    cur.register("_batch", batch)
                    cur.execute(_INSERT)
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
        kinds, values, profiles = identity_columns(rows)
        # One set-based statement from Arrow: executemany runs a statement per row.
        batch = pa.table({"kind": kinds, "value": values, "profile_id": profiles})
        with self._identities_lock:
            cur = self._cursor()
            cur.register("_identities", batch)
            try:
                # New identities (the profile worker's usual case) only need appending,
                # several times cheaper than a replace, which probes the key index for
                # each row; a row that exists already (a repointed identity, a batch
                # applied again) makes DuckDB refuse the lot, and then it is replaced.
                try:
                    cur.execute(_APPEND_IDENTITIES)
                except duckdb.ConstraintException:
                    cur.execute(_REPLACE_IDENTITIES)
            finally:
                cur.unregister("_identities")

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

    def erase(self, ids: Sequence[str], profile_ids: Sequence[str]) -> int:
        with self._events_lock, self._identities_lock:
            cur = self._cursor()
            cur.execute("BEGIN")
            try:
                deleted = sum(
                    _count(cur.execute(f"DELETE FROM {where}", params))
                    for where, params in _subject(ids, profile_ids)
                )
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return deleted

    def residue(self, ids: Sequence[str], profile_ids: Sequence[str]) -> int:
        cur = self._cursor()
        return sum(
            _count(cur.execute(f"SELECT count(*) FROM {where}", params))
            for where, params in _subject(ids, profile_ids)
        )

    def delete_events(self, source_id: str | None, event_type: str, before: datetime) -> int:
        with self._events_lock:
            row = (
                self._cursor()
                .execute(
                    "DELETE FROM events WHERE source_id IS NOT DISTINCT FROM ? AND type = ?"
                    " AND timestamp < ?",
                    [source_id, event_type, before],
                )
                .fetchone()
            )
        return int(row[0]) if row else 0

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._cursor().execute(sql, list(params)).fetchall()

    def export_parquet(self, folder: Path) -> None:
        """Write ``events`` and ``identities`` to ``folder/<table>.parquet`` (for Spark SQL).

        Timestamps stay UTC instants and the JSON columns JSON text, so SQL compiled for
        Spark reads the same values the DuckDB query does.
        """
        folder.mkdir(parents=True, exist_ok=True)
        cur = self._cursor()
        for table in ("events", "identities"):
            cur.execute(
                f"COPY {table} TO '{_literal(folder / f'{table}.parquet')}' (FORMAT parquet)"
            )

    def compacted_through(self) -> int:
        """The mark the last :meth:`compact` recorded (0: never compacted)."""
        row = (
            self._cursor()
            .execute("SELECT value FROM maintenance WHERE name = ?", [_COMPACTED])
            .fetchone()
        )
        return int(row[0]) if row else 0

    def compact(self, through: int) -> None:
        """Rewrite the file as a fresh copy of the database and record ``through``.

        DuckDB keeps deleted rows in its file's blocks (a checkpoint does not rewrite a
        row group for a few deletions, and freed blocks keep their bytes until reused):
        only a copy leaves them behind. The copy is made beside the file and renamed over
        it, so a crash leaves either file whole. Reopens the connection: call it while no
        other thread uses the warehouse (at start-up).
        """
        with self._events_lock, self._identities_lock:
            if self._path is None:
                self._mark(self._db, through)
                return
            copy = self._path.with_name(f"{self._path.name}.compacting")
            _remove(copy)  # what a crash left
            db = self._db
            db.execute("CHECKPOINT")
            (source,) = db.execute("SELECT current_database()").fetchone() or ("",)
            db.execute(f"ATTACH '{_literal(copy)}' AS compacting")
            try:
                db.execute(f'COPY FROM DATABASE "{source}" TO compacting')
                self._mark(db, through, schema="compacting")
            except BaseException:
                db.execute("DETACH compacting")
                _remove(copy)
                raise
            db.execute("DETACH compacting")
            db.close()
            os.replace(copy, self._path)
            self._db = self._open()

    @staticmethod
    def _mark(db: duckdb.DuckDBPyConnection, through: int, *, schema: str = "main") -> None:
        db.execute(
            f"INSERT OR REPLACE INTO {schema}.maintenance VALUES (?, ?)", [_COMPACTED, through]
        )

    def close(self) -> None:
        self._db.close()
