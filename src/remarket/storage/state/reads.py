"""Reads that spare a write: whether there is anything to do before taking the lock."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, Select

__all__ = ["any_row"]


def any_row(engine: Engine, query: Select[Any]) -> bool:
    """Whether ``query`` finds a row (a read, outside any transaction that writes).

    The pollers of the workers (timers, schedules, the deliverer) ask this first, 20 times
    a second each: most rounds find nothing due, and a write transaction taken for nothing
    queues for the state store's write lock behind the sinks (on SQLite, the one lock).

    >>> from sqlalchemy import select
    >>> from remarket.storage.state import connect_state, upgrade_state, sources
    >>> engine = connect_state("sqlite://"); upgrade_state(engine)
    >>> any_row(engine, select(sources.c.id))
    False
    """
    with engine.connect() as conn:
        return conn.execute(query.limit(1)).first() is not None
