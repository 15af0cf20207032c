"""Where the per-identity encryption keys live: a SQLite file of their own beside an
embedded state store; the state store itself on PostgreSQL.

Collect acknowledges events only once the keys they are sealed under are committed. In
the state store's SQLite file, every such commit queued for the one write lock behind the
workers' transactions (profiles, segments: tens of milliseconds each): with a tenth of
the events from new devices, `remarket serve` accepted 23,626 events/s at p99 350 ms,
against 56,857 at 32 ms without workers; with the keys in their own file, 41,631-42,757
at 52 ms (``benchmarks/ingest.py --new-device-every 10``, session 9). A file of its
own has its own write lock, which only the key writer, the handle index and erasure
take. PostgreSQL locks rows, not the database; an in-memory SQLite store has no other
process: both keep the keys in the state store.

The file holds ``pii_keys`` and ``pii_key_handles`` as the state schema defines them
(:mod:`remarket.storage.state.tables`), created from those definitions; ``PRAGMA
user_version`` names the layout. Keys that an earlier version kept in the state store are
moved here when the file is opened (copied and committed with a disk flush, then deleted
there, a chunk at a time), so an upgrade loses none and an erasure finds every one.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from sqlalchemy import Connection, Engine, Table, select, tuple_
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.schema import CreateIndex, CreateTable

from remarket.errors import StorageError
from remarket.storage.state.engine import SQLITE_SYNCHRONOUS, connect_state
from remarket.storage.state.published import chunks
from remarket.storage.state.reads import any_row
from remarket.storage.state.tables import pii_key_handles, pii_keys
from remarket.storage.state.turns import write_turn

__all__ = ["key_store", "key_store_path", "key_write"]

_LAYOUT: Final = 1
_TABLES: Final = (pii_keys, pii_key_handles)
_MOVE_CHUNK: Final = 20_000
_opened: weakref.WeakKeyDictionary[Engine, Engine] = weakref.WeakKeyDictionary()
_opening = threading.Lock()


def key_store_path(state: Engine) -> Path | None:
    """The key file of an embedded state store (``state.db`` → ``state.keys.db``); None
    when the keys stay in the state store."""
    database = state.url.database
    if state.dialect.name != "sqlite" or not database or database == ":memory:":
        return None
    path = Path(database)
    return path.with_name(f"{path.stem}.keys{path.suffix}")


def key_store(state: Engine) -> Engine:
    """The engine that holds the keys of this state store (one per state engine)."""
    path = key_store_path(state)
    if path is None:
        return state
    with _opening:
        found = _opened.get(state)
        if found is None:
            found = connect_state(f"sqlite:///{path}")
            _create_or_check(found, path)
            _move_keys(state, found)
            _opened[state] = found
    return found


@contextmanager
def key_write(keys: Engine, *, fsync: bool) -> Iterator[Connection]:
    """A transaction on the key store, at a turn of its write lock; with ``fsync`` (SQLite
    only), its commit is flushed to disk (``synchronous=FULL`` for that commit; the
    pooled connection then goes back to the state store's usual mode)."""
    with write_turn(keys), keys.connect() as conn:
        if fsync:
            _synchronous(conn, "FULL")
        try:
            with conn.begin():
                yield conn
        finally:
            if fsync:
                _synchronous(conn, SQLITE_SYNCHRONOUS)


def _synchronous(conn: Connection, mode: str) -> None:
    """Set SQLite's ``synchronous`` on this connection (outside any transaction)."""
    conn.exec_driver_sql(f"PRAGMA synchronous={mode}")
    conn.commit()


def _create_or_check(keys: Engine, path: Path) -> None:
    with keys.begin() as conn:
        # Writes first: the transaction holds the write lock before it reads the layout,
        # so two processes opening a new file at once take turns.
        for table in _TABLES:
            conn.execute(CreateTable(table, if_not_exists=True))
            for index in table.indexes:
                conn.execute(CreateIndex(index, if_not_exists=True))
        layout = conn.exec_driver_sql("PRAGMA user_version").scalar_one()
        if layout not in (0, _LAYOUT):
            raise StorageError(
                f"{path} holds keys in layout {layout}; this version reads layout {_LAYOUT} "
                "only: keep the file, and run the version that wrote it"
            )
        conn.exec_driver_sql(f"PRAGMA user_version = {_LAYOUT}")


def _move_keys(state: Engine, keys: Engine) -> None:
    """Move keys an earlier version kept in the state store into the key file."""
    for table in _TABLES:
        order = list(table.primary_key.columns)
        while True:
            if not any_row(state, select(order[0])):  # a read first: mostly nothing
                break
            with write_turn(state), state.begin() as source:
                rows = source.execute(select(table).order_by(*order).limit(_MOVE_CHUNK)).all()
                _copy(keys, table, [row._asdict() for row in rows])
                # Only once the copy is on disk: a crash between the two commits leaves
                # both, and the next start copies again (ignoring what is there).
                moved = [tuple(getattr(row, column.name) for column in order) for row in rows]
                for chunk in chunks(moved):
                    source.execute(table.delete().where(tuple_(*order).in_(chunk)))


def _copy(keys: Engine, table: Table, rows: list[dict[str, object]]) -> None:
    with key_write(keys, fsync=True) as conn:
        conn.execute(insert(table).on_conflict_do_nothing(), rows)
