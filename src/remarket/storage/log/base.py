"""The event log interface: an append-only, ordered, durable sequence of events."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol

import msgspec

__all__ = ["EventLog", "LogEntry", "LogRecord"]


class LogEntry(msgspec.Struct, frozen=True, gc=False):
    """An event to append: its canonical JSON, its partition and its de-duplication key.

    A msgspec struct, not a dataclass or named tuple: one is built per event on the
    ingest hot path, and a struct is built in C and not tracked by the garbage collector
    (it holds only bytes and an int).
    """

    payload: bytes
    partition: int
    dedupe_key: bytes


class LogRecord(msgspec.Struct, frozen=True, gc=False):
    """An event read back, with the offset the log gave it (offsets only grow).

    A msgspec struct for the same reason as :class:`LogEntry`: workers build one per event.
    """

    offset: int
    partition: int
    payload: bytes


class EventLog(Protocol):
    """What collect appends to and workers read from, whatever the backend.

    ``append`` returns only once every entry is durable (the caller acknowledges the
    request after it). Offsets are positive, strictly increasing in append order, and
    never reused. Backends: :class:`SQLiteLog` (embedded) and :class:`NatsLog`
    (NATS JetStream).
    """

    dedupes_itself: bool
    """Whether the backend drops a replayed dedupe key itself (across processes and
    restarts, within its window), so the collector need not warm its memory from it."""

    async def append(self, entries: Sequence[LogEntry]) -> list[int]:
        """Durably append entries in order; return their offsets.

        An entry whose dedupe key the backend already holds within its window may be
        dropped; its offset is then reported as 0.
        """
        ...

    async def read(
        self,
        after: int,
        limit: int,
        *,
        wait: float = 0.0,
        partitions: Collection[int] | None = None,
    ) -> list[LogRecord]:
        """Up to ``limit`` records with offset > ``after``, oldest first.

        With ``wait`` > 0, block up to that many seconds for at least one record.
        ``partitions`` restricts the read to those partitions.
        """
        ...

    async def end_offset(self) -> int:
        """The offset of the newest record (0 for an empty log)."""
        ...

    async def recent_dedupe_keys(self, limit: int) -> list[bytes]:
        """Dedupe keys of up to ``limit`` newest records, to warm the collector's memory."""
        ...

    async def commit(self, consumer: str, offset: int) -> None:
        """Record how far ``consumer`` has processed (for lag metrics and restarts)."""
        ...

    async def committed(self) -> dict[str, int]:
        """Every consumer's last committed offset."""
        ...

    async def close(self) -> None: ...
