"""Embedded event log: one SQLite file in WAL mode, written with group commit.

One writer thread owns the write connection. Appends from any coroutine queue up;
the writer takes everything queued, writes it in one transaction, commits (fsync as
configured) and only then resolves each caller's future. Many concurrent requests
thus share one fsync, which is what makes durable ingest fast.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from remarket.errors import StorageError
from remarket.storage.log.base import LogEntry, LogRecord

__all__ = ["SQLiteLog"]

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS log ("
    " offset INTEGER PRIMARY KEY, partition INTEGER NOT NULL,"
    " dedupe BLOB NOT NULL, payload BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS consumers (name TEXT PRIMARY KEY, offset INTEGER NOT NULL)",
)
_SYNC: Final = {"full": "FULL", "normal": "NORMAL", "off": "OFF"}


@dataclass(slots=True)
class _Pending:
    entries: Sequence[LogEntry]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[int]] = field(repr=False)


def _connect(path: Path, fsync: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={_SYNC[fsync]}")
    return conn


def _resolve(pending: _Pending, offsets: list[int] | BaseException) -> None:
    def settle() -> None:
        if pending.future.done():
            return
        if isinstance(offsets, BaseException):
            pending.future.set_exception(offsets)
        else:
            pending.future.set_result(offsets)

    pending.loop.call_soon_threadsafe(settle)


class SQLiteLog:
    """The embedded log. Safe to share between coroutines of many event loops.

    >>> import asyncio, tempfile, pathlib
    >>> async def demo(path):
    ...     log = SQLiteLog(path)
    ...     offsets = await log.append([LogEntry(b"{}", 0, b"k")])
    ...     records = await log.read(0, 10)
    ...     await log.close()
    ...     return offsets, [r.offset for r in records]
    >>> asyncio.run(demo(pathlib.Path(tempfile.mkdtemp()) / "log.db"))
    ([1], [1])
    """

    dedupes_itself = False

    def __init__(
        self,
        path: Path,
        *,
        fsync: Literal["full", "normal", "off"] = "full",
        group_commit_max: int = 20_000,
        poll_interval: float = 0.02,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._fsync = fsync
        self._group_max = group_commit_max
        self._poll = poll_interval
        self._reader = _connect(path, fsync)
        for statement in _SCHEMA:
            self._reader.execute(statement)
        self._read_lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()
        self._closed = False

    # -- writing ---------------------------------------------------------------

    async def append(self, entries: Sequence[LogEntry]) -> list[int]:
        if not entries:
            return []
        if self._closed:
            raise StorageError("the event log is closed")
        self._ensure_writer()
        loop = asyncio.get_running_loop()
        pending = _Pending(entries, loop, loop.create_future())
        self._queue.put(pending)
        return await pending.future

    def _ensure_writer(self) -> None:
        with self._writer_lock:
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_loop, name="remarket-log-writer", daemon=True
                )
                self._writer.start()

    def _write_loop(self) -> None:
        conn = _connect(self._path, self._fsync)
        row = conn.execute("SELECT coalesce(max(offset), 0) FROM log").fetchone()
        next_offset = int(row[0]) + 1
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            group = [first]
            size = len(first.entries)
            while size < self._group_max:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                group.append(item)
                size += len(item.entries)
            next_offset = self._commit_group(conn, group, next_offset)
        conn.close()

    def _commit_group(self, conn: sqlite3.Connection, group: list[_Pending], start: int) -> int:
        rows: list[tuple[int, int, bytes, bytes]] = []
        offsets_per_call: list[list[int]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            # Another SQLiteLog on the same file (the workers publish segment transitions
            # through their own) may have appended since: continue after its last offset.
            (last,) = conn.execute("SELECT coalesce(max(offset), 0) FROM log").fetchone()
            offset = max(start, int(last) + 1)
            for pending in group:
                offsets = list(range(offset, offset + len(pending.entries)))
                offsets_per_call.append(offsets)
                rows.extend(
                    (o, e.partition, e.dedupe_key, e.payload)
                    for o, e in zip(offsets, pending.entries, strict=True)
                )
                offset += len(pending.entries)
            conn.executemany("INSERT INTO log VALUES (?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            error = StorageError(f"event log append failed: {exc}")
            for pending in group:
                _resolve(pending, error)
            return start
        for pending, offsets in zip(group, offsets_per_call, strict=True):
            _resolve(pending, offsets)
        return offset

    # -- reading ---------------------------------------------------------------

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        with self._read_lock:
            return self._reader.execute(sql, params).fetchall()

    def read_sync(
        self, after: int, limit: int, partitions: Collection[int] | None = None
    ) -> list[LogRecord]:
        """Blocking :meth:`read` without waiting, for worker threads."""
        if partitions is None:
            rows = self._query(
                "SELECT offset, partition, payload FROM log WHERE offset > ? "
                "ORDER BY offset LIMIT ?",
                (after, limit),
            )
        else:
            marks = ",".join("?" * len(partitions))
            rows = self._query(
                "SELECT offset, partition, payload FROM log WHERE offset > ? "
                f"AND partition IN ({marks}) ORDER BY offset LIMIT ?",
                (after, *partitions, limit),
            )
        return [LogRecord(int(o), int(p), bytes(b)) for o, p, b in rows]

    async def read(
        self,
        after: int,
        limit: int,
        *,
        wait: float = 0.0,
        partitions: Collection[int] | None = None,
    ) -> list[LogRecord]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            records = self.read_sync(after, limit, partitions)
            remaining = deadline - loop.time()
            if records or remaining <= 0:
                return records
            await asyncio.sleep(min(self._poll, remaining))

    async def end_offset(self) -> int:
        (last,) = self._query("SELECT coalesce(max(offset), 0) FROM log")[0]
        return int(last)

    async def recent_dedupe_keys(self, limit: int) -> list[bytes]:
        rows = self._query("SELECT dedupe FROM log ORDER BY offset DESC LIMIT ?", (limit,))
        return [bytes(r[0]) for r in rows]

    async def commit(self, consumer: str, offset: int) -> None:
        with self._read_lock:
            self._reader.execute(
                "INSERT INTO consumers VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET offset = excluded.offset",
                (consumer, offset),
            )

    async def committed(self) -> dict[str, int]:
        rows = self._query("SELECT name, offset FROM consumers")
        return {str(name): int(off) for name, off in rows}

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._writer_lock:
            writer = self._writer
        if writer is not None:
            self._queue.put(None)
            await asyncio.to_thread(writer.join)
        with self._read_lock:
            self._reader.close()
