"""Write transactions that hold the state store's write lock from their first statement."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine

__all__ = ["immediate"]


@contextmanager
def immediate(engine: Engine) -> Iterator[Connection]:
    """A transaction that reads what it will write without another writer in between.

    SQLite: ``BEGIN IMMEDIATE`` takes the write lock up front (waiting out the busy
    timeout), so a read-then-write transaction cannot fail half-way on a stale snapshot.
    PostgreSQL: a plain transaction; callers lock the rows they read (``FOR UPDATE``).

    >>> from remarket.storage.state import connect_state
    >>> with immediate(connect_state("sqlite://")) as conn:
    ...     conn.exec_driver_sql("SELECT 1").scalar()
    1
    """
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            # The driver starts no transaction for this statement, and none of its own
            # after it: the next statements run inside it until commit or rollback.
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.rollback()
            raise
        conn.commit()
