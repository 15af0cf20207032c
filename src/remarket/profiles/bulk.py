"""Set-based reads and writes of the profile tables: one statement per batch and table.

A batch of 10,000 events touches about a thousand identities, profiles and traits.
Through SQLAlchemy's per-row parameter handling (and an expanding ``IN`` per 500 ids)
that cost several times what the database did. Here PostgreSQL gets each set as arrays
in one ``unnest`` statement (one round trip), SQLite one driver ``executemany`` (no round
trips to save; its cost is per row in C). Datetimes go through the column's own bind
processor, so the stored form is exactly what SQLAlchemy writes elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Final, Protocol

from sqlalchemy import Connection, Dialect

from remarket.profiles.identity import Identifier
from remarket.storage.state import profiles

__all__ = ["Bulk", "IdentityRow", "ProfileRow", "TraitRow", "bulk_for"]

IdentityRow = tuple[str, str, str]
"""``(kind, value, profile_id)``."""
ProfileRow = tuple[str, datetime, datetime, int]
"""``(profile_id, first_seen, last_seen, event_count)``: added to what is stored."""
TraitRow = tuple[str, str, str, datetime, str]
"""``(profile_id, key, value as JSON text, ts, message_id)``: kept if newer."""

# Counts add up, first/last seen widen; merged_into is untouched (a live profile's is NULL).
_PROFILES_SET: Final = """
    event_count = profiles.event_count + excluded.event_count,
    first_seen = coalesce({least}(profiles.first_seen, excluded.first_seen), excluded.first_seen),
    last_seen = coalesce({greatest}(profiles.last_seen, excluded.last_seen), excluded.last_seen)"""
# Last write wins by event timestamp, then messageId: any order gives the same value.
_TRAITS_SET: Final = """
    value = excluded.value, ts = excluded.ts, message_id = excluded.message_id
    WHERE excluded.ts > profile_traits.ts
       OR (excluded.ts = profile_traits.ts AND excluded.message_id > profile_traits.message_id)"""
_PROFILE_COLUMNS: Final = "profile_id, merged_into, first_seen, last_seen, event_count"
_TRAIT_COLUMNS: Final = "profile_id, key, value, ts, message_id"


class Bulk(Protocol):
    """The profile store's many-row statements, run in the caller's transaction."""

    def lookup(self, conn: Connection, wanted: Sequence[Identifier]) -> list[IdentityRow]:
        """The stored identity rows among ``wanted``."""
        ...

    def insert_identities(self, conn: Connection, rows: Sequence[IdentityRow]) -> None: ...

    def upsert_profiles(self, conn: Connection, rows: Sequence[ProfileRow]) -> None: ...

    def upsert_traits(self, conn: Connection, rows: Sequence[TraitRow]) -> None: ...


class _SQLite:
    """Driver ``executemany``; lookups joining chunks of ``VALUES`` to the key."""

    # Two variables per identifier, under SQLite's historical 999-variable limit.
    _CHUNK: Final = 450

    def __init__(self, dialect: Dialect) -> None:
        process = profiles.c.first_seen.type.dialect_impl(dialect).bind_processor(dialect)
        self._time: Callable[[Any], Any] = process or (lambda value: value)

    def lookup(self, conn: Connection, wanted: Sequence[Identifier]) -> list[IdentityRow]:
        found: list[IdentityRow] = []
        for start in range(0, len(wanted), self._CHUNK):
            chunk = wanted[start : start + self._CHUNK]
            marks = ", ".join(["(?, ?)"] * len(chunk))
            # A join, not "(kind, value) IN (VALUES ...)": SQLite scans the table for that.
            result = conn.exec_driver_sql(
                f"SELECT i.kind, i.value, i.profile_id FROM (VALUES {marks}) AS w "
                "JOIN identities AS i ON i.kind = w.column1 AND i.value = w.column2",
                tuple(part for identifier in chunk for part in identifier),
            )
            found.extend((kind, value, pid) for kind, value, pid in result)
        return found

    def insert_identities(self, conn: Connection, rows: Sequence[IdentityRow]) -> None:
        if rows:
            conn.exec_driver_sql(
                "INSERT INTO identities (kind, value, profile_id) VALUES (?, ?, ?)", list(rows)
            )

    def upsert_profiles(self, conn: Connection, rows: Sequence[ProfileRow]) -> None:
        if not rows:
            return
        time = self._time
        conn.exec_driver_sql(
            f"INSERT INTO profiles ({_PROFILE_COLUMNS}) VALUES (?, NULL, ?, ?, ?) "
            "ON CONFLICT (profile_id) DO UPDATE SET"
            + _PROFILES_SET.format(least="min", greatest="max"),
            [(pid, time(first), time(last), count) for pid, first, last, count in rows],
        )

    def upsert_traits(self, conn: Connection, rows: Sequence[TraitRow]) -> None:
        if not rows:
            return
        time = self._time
        conn.exec_driver_sql(
            f"INSERT INTO profile_traits ({_TRAIT_COLUMNS}) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (profile_id, key) DO UPDATE SET" + _TRAITS_SET,
            [(pid, key, value, time(ts), mid) for pid, key, value, ts, mid in rows],
        )


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> tuple[list[Any], ...]:
    """Rows as one list per column: the arrays that ``unnest`` turns back into rows."""
    if not rows:
        return tuple([] for _ in range(width))
    return tuple(list(column) for column in zip(*rows, strict=True))


class _PostgreSQL:
    """Each set as arrays in one statement: ``unnest`` makes rows of them server-side."""

    def lookup(self, conn: Connection, wanted: Sequence[Identifier]) -> list[IdentityRow]:
        if not wanted:
            return []
        result = conn.exec_driver_sql(
            "SELECT i.kind, i.value, i.profile_id "
            "FROM unnest(%s::text[], %s::text[]) AS w(kind, value) "
            "JOIN identities AS i ON i.kind = w.kind AND i.value = w.value",
            _columns(wanted, 2),
        )
        return [(kind, value, pid) for kind, value, pid in result]

    def insert_identities(self, conn: Connection, rows: Sequence[IdentityRow]) -> None:
        if rows:
            conn.exec_driver_sql(
                "INSERT INTO identities (kind, value, profile_id) "
                "SELECT * FROM unnest(%s::text[], %s::text[], %s::text[])",
                _columns(rows, 3),
            )

    def upsert_profiles(self, conn: Connection, rows: Sequence[ProfileRow]) -> None:
        if rows:
            conn.exec_driver_sql(
                f"INSERT INTO profiles ({_PROFILE_COLUMNS}) SELECT p, NULL, f, l, c "
                "FROM unnest(%s::text[], %s::timestamptz[], %s::timestamptz[], %s::bigint[])"
                " AS t(p, f, l, c) ON CONFLICT (profile_id) DO UPDATE SET"
                + _PROFILES_SET.format(least="least", greatest="greatest"),
                _columns(rows, 4),
            )

    def upsert_traits(self, conn: Connection, rows: Sequence[TraitRow]) -> None:
        if rows:
            conn.exec_driver_sql(
                f"INSERT INTO profile_traits ({_TRAIT_COLUMNS}) SELECT p, k, v::json, ts, m "
                "FROM unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::text[])"
                " AS t(p, k, v, ts, m) ON CONFLICT (profile_id, key) DO UPDATE SET" + _TRAITS_SET,
                _columns(rows, 5),
            )


def bulk_for(dialect: Dialect) -> Bulk:
    """The statements for the state store's dialect (SQLite or PostgreSQL)."""
    if dialect.name == "postgresql":
        return _PostgreSQL()
    if dialect.name == "sqlite":
        return _SQLite(dialect)
    raise ValueError(f"the profile store runs on SQLite or PostgreSQL, not {dialect.name}")
