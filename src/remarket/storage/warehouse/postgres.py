"""PostgreSQL warehouse: events bulk-loaded by binary COPY, for deployments that outgrow DuckDB."""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

import msgspec
import psycopg
from psycopg import postgres, sql
from psycopg.adapt import Dumper
from psycopg.pq import Format
from psycopg.types.string import TextLoader

from remarket.errors import OffsetConflict
from remarket.schema.events import Group, Identify, Message, Page, Screen, Track
from remarket.storage.warehouse.base import (
    EventPage,
    IdentityRow,
    decode_cursor,
    encode_cursor,
    identity_columns,
)
from remarket.storage.warehouse.columns import EVENT_COLUMNS

__all__ = ["PostgresWarehouse"]

_COLUMN_TYPES: Final[dict[str, str]] = {
    "offset": "bigint NOT NULL",
    "message_id": "text",
    "source_id": "text",
    "type": "text NOT NULL",
    "event": "text",
    "name": "text",
    "category": "text",
    "anonymous_id": "text",
    "user_id": "text",
    "group_id": "text",
    "previous_id": "text",
    "timestamp": "timestamptz NOT NULL",
    "original_timestamp": "timestamptz",
    "sent_at": "timestamptz",
    "received_at": "timestamptz NOT NULL",
    "properties": "jsonb",
    "traits": "jsonb",
    "context": "jsonb",
}
# Keyed by DuckDB's column list, so a column added there and not here fails at import.
_COLUMNS: Final = ", ".join(f'"{c}"' for c in EVENT_COLUMNS)
_COPY_TYPES: Final = [_COLUMN_TYPES[c].split()[0] for c in EVENT_COLUMNS]

_DDL: Final = (
    "CREATE TABLE IF NOT EXISTS events ("
    + ", ".join(f'"{c}" {_COLUMN_TYPES[c]}' for c in EVENT_COLUMNS)
    + ")",
    """CREATE TABLE IF NOT EXISTS identities (
        kind text NOT NULL, value text NOT NULL, profile_id text NOT NULL,
        PRIMARY KEY (kind, value))""",
    """CREATE TABLE IF NOT EXISTS consumer_offsets (
        consumer text PRIMARY KEY, "offset" bigint NOT NULL)""",
    # profile_events filters on either id and reads newest first; with the sort keys in the
    # index the cursor condition is checked from the index and the top-N sort stays small.
    # Partial, because an id = ANY(...) match implies it is not null, and skipping the null
    # ids (most events have no user id) makes COPY's index upkeep cheaper.
    """CREATE INDEX IF NOT EXISTS events_anonymous_id_recent
        ON events (anonymous_id, timestamp DESC, "offset" DESC) WHERE anonymous_id IS NOT NULL""",
    """CREATE INDEX IF NOT EXISTS events_user_id_recent
        ON events (user_id, timestamp DESC, "offset" DESC) WHERE user_id IS NOT NULL""",
)

# Two processes starting at once would race on CREATE ... IF NOT EXISTS (it is not atomic
# in PostgreSQL), so schema creation takes a transaction-scoped advisory lock.
_SCHEMA_NAME: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_DDL_LOCK: Final = "SELECT pg_advisory_xact_lock(hashtext('remarket.warehouse.ddl'))"


class _RawJsonbDumper(Dumper):
    """``msgspec.Raw`` as binary jsonb: version byte 1, then the JSON text as it arrived.

    The JSON is never decoded in Python; PostgreSQL parses it once, into jsonb.
    """

    format = Format.BINARY
    oid = postgres.types["jsonb"].oid

    def dump(self, obj: msgspec.Raw) -> bytes:
        return b"\x01" + obj


def _utc(value: datetime | None) -> datetime | None:
    # Naive timestamps are UTC (as in Segment and in the DuckDB warehouse); the binary
    # timestamptz dumper cannot place them otherwise.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _id(value: str | int | None) -> str | None:
    return None if value is None else str(value)


def _copy_row(offset: int, m: Message) -> tuple[object, ...]:
    """One events row in the order of :data:`~.columns.EVENT_COLUMNS`."""
    event = name = category = group_id = previous_id = properties = traits = None
    if isinstance(m, Track):
        kind, event, properties = "track", m.event, m.properties
    elif isinstance(m, Identify):
        kind, traits = "identify", m.traits
    elif isinstance(m, Page | Screen):
        kind = "page" if isinstance(m, Page) else "screen"
        name, category, properties = m.name, m.category, m.properties
    elif isinstance(m, Group):
        kind, group_id, traits = "group", str(m.group_id), m.traits
    else:
        kind, previous_id = "alias", str(m.previous_id)
    return (
        offset,
        m.message_id,
        m.source_id,
        kind,
        event,
        name,
        category,
        _id(m.anonymous_id),
        _id(m.user_id),
        group_id,
        previous_id,
        _utc(m.timestamp),
        _utc(m.original_timestamp),
        _utc(m.sent_at),
        _utc(m.received_at),
        properties,
        traits,
        m.context,
    )


def _subject(ids: Sequence[str], profile_ids: Sequence[str]) -> list[tuple[str, list[Any]]]:
    """The rows of a person: ``table WHERE ...`` and its parameters."""
    ids, pids = list(ids), list(profile_ids)
    return [
        (
            "events WHERE anonymous_id = ANY(%s::text[]) OR user_id = ANY(%s::text[]) "
            "OR previous_id = ANY(%s::text[])",
            [ids, ids, ids],
        ),
        ("identities WHERE profile_id = ANY(%s::text[]) OR value = ANY(%s::text[])", [pids, ids]),
    ]


def _connect(url: str, schema: str) -> psycopg.Connection[tuple[Any, ...]]:
    conn = psycopg.connect(url, autocommit=True)
    # Aware UTC datetimes come back, as from DuckDB with TimeZone = 'UTC'.
    conn.execute("SET TIME ZONE 'UTC'")
    # Its own schema, so the warehouse can share a database with the state store (both
    # have an `identities` table) and generated SQL can name tables unqualified.
    conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
    conn.adapters.register_dumper(msgspec.Raw, _RawJsonbDumper)
    # JSON columns read as text, the form DuckDB returns them in.
    for type_name in ("json", "jsonb"):
        conn.adapters.register_loader(type_name, TextLoader)
    return conn


class PostgresWarehouse:
    """Events in PostgreSQL tables (created if missing). Thread-safe.

    It holds two connections, both in autocommit: writes take a lock and run in an explicit
    transaction on one, so a batch and its offset commit together; reads share the other,
    which psycopg serialises per statement, so they never wait behind a long COPY. A
    connection the server dropped (restart, failover) fails the call in flight and is
    replaced on the next one, so a worker's retry goes through.

    Example (needs a server)::

        wh = PostgresWarehouse("postgresql://postgres@127.0.0.1:5432/postgres")
        wh.committed("warehouse")  # 0 on a new database
    """

    dialect = "postgres"

    def __init__(self, url: str, schema: str = "remarket_warehouse") -> None:
        if not _SCHEMA_NAME.fullmatch(schema):
            raise ValueError(f"warehouse schema must match {_SCHEMA_NAME.pattern}, got {schema!r}")
        self._url = url
        self._schema = schema
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        write = _connect(url, schema)
        try:
            with write.transaction():
                write.execute(_DDL_LOCK)
                write.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
                )
                for statement in _DDL:
                    write.execute(statement)
            read = _connect(url, schema)
        except BaseException:
            write.close()
            raise
        self._write, self._read = write, read

    def _writer(self) -> psycopg.Connection[tuple[Any, ...]]:
        """The write connection; the caller holds the write lock."""
        if self._write.broken:
            self._write = _connect(self._url, self._schema)
        return self._write

    def _reader(self) -> psycopg.Connection[tuple[Any, ...]]:
        with self._read_lock:
            if self._read.broken:
                self._read = _connect(self._url, self._schema)
            return self._read

    def committed(self, consumer: str) -> int:
        row = (
            self._reader()
            .execute('SELECT "offset" FROM consumer_offsets WHERE consumer = %s', [consumer])
            .fetchone()
        )
        return int(row[0]) if row else 0

    def write_events(
        self, consumer: str, rows: Sequence[tuple[int, Message]], through: int, *, expected: int
    ) -> None:
        with self._write_lock:
            conn = self._writer()
            with conn.transaction():
                cur = conn.cursor()
                # First, so the row lock orders concurrent writers of one consumer: the
                # second sees the first's offset once it commits, and stops.
                cur.execute(
                    'UPDATE consumer_offsets SET "offset" = %s '
                    'WHERE consumer = %s AND "offset" = %s',
                    [through, consumer, expected],
                )
                if cur.rowcount == 0:
                    self._first_offset(cur, consumer, through, expected)
                if rows:
                    copy_sql = f"COPY events ({_COLUMNS}) FROM STDIN (FORMAT binary)"
                    with cur.copy(copy_sql) as copy:
                        copy.set_types(_COPY_TYPES)
                        for offset, message in rows:
                            copy.write_row(_copy_row(offset, message))

    @staticmethod
    def _first_offset(
        cur: psycopg.Cursor[tuple[Any, ...]], consumer: str, through: int, expected: int
    ) -> None:
        conflict = OffsetConflict(
            f"consumer {consumer!r} is no longer at offset {expected}", field="expected"
        )
        if expected != 0:
            raise conflict
        try:
            with cur.connection.transaction():
                cur.execute(
                    'INSERT INTO consumer_offsets (consumer, "offset") VALUES (%s, %s)',
                    [consumer, through],
                )
        except psycopg.errors.UniqueViolation as exc:
            raise conflict from exc

    def upsert_identities(self, rows: Sequence[IdentityRow]) -> None:
        if not rows:
            return
        with self._write_lock:
            conn = self._writer()
            with conn.transaction():
                # One statement for the set (arrays unnested server-side), not one per row.
                conn.execute(
                    "INSERT INTO identities (kind, value, profile_id) "
                    "SELECT * FROM unnest(%s::text[], %s::text[], %s::text[]) "
                    "ON CONFLICT (kind, value) DO UPDATE SET profile_id = excluded.profile_id",
                    identity_columns(rows),
                )

    def profile_events(
        self,
        anonymous_ids: Sequence[str],
        user_ids: Sequence[str],
        *,
        limit: int,
        cursor: str | None = None,
    ) -> EventPage:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        where = "(anonymous_id = ANY(%s::text[]) OR user_id = ANY(%s::text[]))"
        params: list[Any] = [list(anonymous_ids), list(user_ids)]
        if cursor is not None:
            ts, off = decode_cursor(cursor)
            where += ' AND (timestamp, "offset") < (%s, %s)'
            params += [ts, off]
        cur = self._reader().cursor()
        cur.execute(
            f"SELECT {_COLUMNS} FROM events WHERE {where} "
            'ORDER BY timestamp DESC, "offset" DESC LIMIT %s',
            [*params, limit + 1],
        )
        names = [d.name for d in cur.description or ()]
        events = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        more = len(events) > limit
        events = events[:limit]
        next_cursor = encode_cursor(events[-1]["timestamp"], events[-1]["offset"]) if more else None
        return EventPage(events, next_cursor)

    def count_events(self) -> int:
        row = self._reader().execute("SELECT count(*) FROM events").fetchone()
        return int(row[0]) if row else 0

    def erase(self, ids: Sequence[str], profile_ids: Sequence[str]) -> int:
        deleted = 0
        with self._write_lock:
            conn = self._writer()
            with conn.transaction():
                cur = conn.cursor()
                for where, params in _subject(ids, profile_ids):
                    cur.execute(f"DELETE FROM {where}", params)
                    deleted += cur.rowcount
        return deleted

    def residue(self, ids: Sequence[str], profile_ids: Sequence[str]) -> int:
        total = 0
        for where, params in _subject(ids, profile_ids):
            row = self._reader().execute(f"SELECT count(*) FROM {where}", params).fetchone()
            total += int(row[0]) if row else 0
        return total

    def delete_events(self, source_id: str | None, event_type: str, before: datetime) -> int:
        with self._write_lock:
            cur = self._writer().execute(
                "DELETE FROM events WHERE source_id IS NOT DISTINCT FROM %s AND type = %s"
                " AND timestamp < %s",
                [source_id, event_type, before],
            )
            return max(cur.rowcount, 0)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run SQL with psycopg ``%s`` placeholders (what sqlglot writes for ``postgres``).

        Without params the text is sent as is, so a literal ``%`` needs no escaping.
        """
        cur = self._reader().execute(sql, list(params) if params else None)
        return cur.fetchall() if cur.description is not None else []

    def close(self) -> None:
        self._read.close()
        self._write.close()
