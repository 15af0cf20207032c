"""The warehouse interface: where events live as columns for analytics and SQL."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol

from remarket.schema.events import Message

__all__ = ["EventPage", "IdentityRow", "Warehouse"]

IdentityRow = tuple[str, str, str]
"""``(kind, value, profile_id)``: the identity table that SQL joins events to profiles by."""


@dataclass(frozen=True, slots=True)
class EventPage:
    """Events of one profile, newest first, and the cursor for the next page (or None)."""

    events: list[dict[str, Any]]
    next_cursor: str | None


class Warehouse(Protocol):
    """Event store for analytics. Implementations: DuckDB (default), PostgreSQL.

    Writes are transactional with the consumer offset they advance, so a worker that
    crashes mid-batch re-applies the batch exactly once.
    """

    dialect: str
    """The sqlglot dialect name of this warehouse's SQL."""

    def committed(self, consumer: str) -> int:
        """The last log offset whose events ``consumer`` has written (0 if none)."""
        ...

    def write_events(
        self, consumer: str, rows: Sequence[tuple[int, Message]], through: int, *, expected: int
    ) -> None:
        """Insert ``(offset, message)`` rows and advance ``consumer`` to ``through``.

        ``through`` may pass the last row's offset (records that were not events). The
        write happens only if the stored offset is still ``expected``, else nothing is
        written and :class:`~remarket.errors.OffsetConflict` is raised: so two workers on
        one consumer can never apply a batch twice.
        """
        ...

    def upsert_identities(self, rows: Sequence[IdentityRow]) -> None:
        """Insert or repoint identity mappings (after profile merges)."""
        ...

    def profile_events(
        self,
        anonymous_ids: Sequence[str],
        user_ids: Sequence[str],
        *,
        limit: int,
        cursor: str | None = None,
    ) -> EventPage:
        """Events carrying any of these ids, newest first (by timestamp, then offset)."""
        ...

    def count_events(self) -> int: ...

    def erase(self, ids: Sequence[str], profile_ids: Sequence[str]) -> int:
        """Delete (in one transaction) the events carrying any of ``ids`` as anonymous,
        user or previous id, and the identity rows of ``profile_ids`` or with a value
        in ``ids``; how many rows went (erasure)."""
        ...

    def residue(self, ids: Sequence[str], profile_ids: Sequence[str]) -> int:
        """How many rows :meth:`erase` would delete (0 after it)."""
        ...

    def delete_events(self, source_id: str | None, event_type: str, before: datetime) -> int:
        """Delete the events of one source and type older than ``before`` (by timestamp);
        return how many went (retention)."""
        ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run read-only SQL in this warehouse's dialect."""
        ...

    def close(self) -> None: ...


def identity_columns(rows: Sequence[IdentityRow]) -> tuple[list[str], list[str], list[str]]:
    """Kinds, values and profile ids of ``rows`` as columns, one row per identity: the
    last mapping of an identity wins, as it would row by row (and a set-based upsert may
    not touch one row twice).

    >>> identity_columns([("user_id", "u", "p1"), ("user_id", "u", "p2")])
    (['user_id'], ['u'], ['p2'])
    """
    latest = {(kind, value): profile for kind, value, profile in rows}
    return [kind for kind, _ in latest], [value for _, value in latest], list(latest.values())


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)
_CURSOR: Final = re.compile(r"(-?[0-9]{1,18})\.([0-9]{1,19})")


def encode_cursor(timestamp: datetime, offset: int) -> str:
    # Integer microseconds: float seconds put many instants a microsecond off, and a
    # cursor off by one repeats or skips the rows that tie on the timestamp.
    return f"{(timestamp - _EPOCH) // _MICROSECOND}.{offset}"


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    match = _CURSOR.fullmatch(cursor)
    try:
        if match is not None and int(match[2]) < 2**63:
            return _EPOCH + timedelta(microseconds=int(match[1])), int(match[2])
    except OverflowError:
        pass
    raise ValueError(f"cursor {cursor!r} is not one this API issued")
