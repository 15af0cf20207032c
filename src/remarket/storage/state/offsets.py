"""Consumer offsets in the state store, moved only by the worker that read them (fencing)."""

from __future__ import annotations

from sqlalchemy import Connection, select, update
from sqlalchemy.exc import IntegrityError

from remarket.errors import OffsetConflict
from remarket.storage.state.tables import consumer_offsets

__all__ = ["claim_offset", "committed_offset"]


def claim_offset(conn: Connection, consumer: str, through: int, expected: int) -> None:
    """Move ``consumer`` from ``expected`` to ``through``, or raise OffsetConflict.

    Run it first in the transaction that applies the batch: the row lock it takes makes
    a concurrent worker wait, then fail, so no batch is applied twice.
    """
    updated = conn.execute(
        update(consumer_offsets)
        .where(consumer_offsets.c.consumer == consumer, consumer_offsets.c.offset == expected)
        .values(offset=through)
    )
    if updated.rowcount == 1:
        return
    conflict = OffsetConflict(
        f"consumer {consumer!r} is no longer at offset {expected}", field="expected"
    )
    if expected != 0:
        raise conflict
    try:
        with conn.begin_nested():
            conn.execute(consumer_offsets.insert().values(consumer=consumer, offset=through))
    except IntegrityError as exc:
        raise conflict from exc


def committed_offset(conn: Connection, consumer: str) -> int:
    """How far ``consumer`` has applied the log (0 if it never has)."""
    value = conn.scalar(
        select(consumer_offsets.c.offset).where(consumer_offsets.c.consumer == consumer)
    )
    return int(value) if value is not None else 0
