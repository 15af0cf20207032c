"""Turns at the embedded state store's write lock, for writers that must not starve.

SQLite hands its write lock to whichever connection asks while it is free; one that finds
it taken sleeps and asks again, in steps that grow to 100 ms (the busy timeout). A writer
that holds the lock almost all the time, with a few µs between its transactions (the
segments sink under load), leaves no gap that a sleeping waiter ever sees: collect's new
keys (and so the requests that made them), the segment publisher and an erasure then wait
for seconds. Writers that take a *turn* queue on a lock file beside the database instead
(``flock``: the kernel wakes a waiter as soon as the lock is let go, in any process), and
the long writer steps aside for a moment between its turns so that a waiting one gets the
next. PostgreSQL locks rows, not the whole database: there, and for an in-memory SQLite
database, a turn is nothing.

A thread must not take a turn while it holds one (each turn opens the file anew, and the
second would wait for the first for ever), nor while its own transaction holds SQLite's
write lock.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from sqlalchemy import Engine

__all__ = ["step_aside", "write_turn"]

_SUFFIX: Final = "-turns"
_PAUSE_S: Final = 0.002
"""Long enough for a woken waiter to be scheduled and take the lock on a busy machine;
0.2-1 % of a segments sink transaction."""


def _turns_file(engine: Engine) -> Path | None:
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return None
    return Path(f"{database}{_SUFFIX}")


@contextmanager
def write_turn(engine: Engine) -> Iterator[None]:
    """Wait for this writer's turn at the state store's write lock; hold it in the block.

    >>> from remarket.storage.state import connect_state
    >>> with write_turn(connect_state("sqlite://")):  # in memory: no other process
    ...     pass
    """
    path = _turns_file(engine)
    if path is None:
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocks in the kernel, without the GIL
        yield
    finally:
        os.close(fd)  # lets the lock go


def step_aside() -> None:
    """Between two turns of a long writer: a waiting writer takes the next one."""
    time.sleep(_PAUSE_S)
