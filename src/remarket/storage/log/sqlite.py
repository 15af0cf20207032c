"""Embedded event log: one SQLite file in WAL mode, written with group commit.

One writer thread owns the write connection. Appends from any coroutine queue up;
the writer takes everything queued, writes it as one row in one statement (its own
transaction: fsync as configured) and only then resolves each caller's future. Many
concurrent requests thus share one fsync, which is what makes durable ingest fast.

A row holds a whole commit group: the events' payloads and dedupe keys concatenated,
and an index (JSON, one ``[partition, key start, key end, payload start, payload end]``
per event) to cut them apart. One row per event cost a bound statement step each, and
the GIL is released and taken back around every step: under load the writer then waits
on the request loop for each row. The view ``log`` shows one row per event again, for
ad-hoc queries.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, chain
from pathlib import Path
from typing import Final, Literal

import msgspec

from remarket.errors import StorageError
from remarket.storage.log.base import LogEntry, LogRecord

__all__ = ["SQLiteLog"]

_LAYOUT: Final = 2
"""``PRAGMA user_version`` of a log file in this layout (1 was one row per event)."""

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS log_rows ("
    " last INTEGER PRIMARY KEY, first INTEGER NOT NULL,"
    " events TEXT NOT NULL, dedupe BLOB NOT NULL, payload BLOB NOT NULL)",
    "CREATE VIEW IF NOT EXISTS log (offset, partition, dedupe, payload) AS"
    " SELECT r.first + e.key, e.value ->> 0,"
    " substr(r.dedupe, (e.value ->> 1) + 1, (e.value ->> 2) - (e.value ->> 1)),"
    " substr(r.payload, (e.value ->> 3) + 1, (e.value ->> 4) - (e.value ->> 3))"
    " FROM log_rows AS r, json_each(r.events) AS e",
    "CREATE TABLE IF NOT EXISTS consumers (name TEXT PRIMARY KEY, offset INTEGER NOT NULL)",
    f"PRAGMA user_version = {_LAYOUT}",
)
# One statement, so one transaction and one GIL round trip per group. It reads the last
# offset inside its own write transaction because another SQLiteLog on the same file (the
# workers publish segment transitions through their own) may have appended since.
_INSERT: Final = (
    "INSERT INTO log_rows (last, first, events, dedupe, payload)"
    " SELECT base + ?1, base + 1, ?2, ?3, ?4"
    " FROM (SELECT coalesce(max(last), 0) AS base FROM log_rows)"
)
_SYNC: Final = {"full": "FULL", "normal": "NORMAL", "off": "OFF"}
_INDEX: Final = msgspec.json.Decoder(list[tuple[int, int, int, int, int]])
_ENCODER: Final = msgspec.json.Encoder()


@dataclass(slots=True)
class _Pending:
    """One append, already cut into what its row needs, waiting for the writer."""

    partitions: list[int]
    key_sizes: list[int]
    payload_sizes: list[int]
    keys: bytes
    payloads: bytes
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[int]] = field(repr=False)


def _pending(entries: Sequence[LogEntry], loop: asyncio.AbstractEventLoop) -> _Pending:
    """Done by the caller, so that a bad entry fails its own append, not the group's."""
    keys = [e.dedupe_key for e in entries]
    payloads = [e.payload for e in entries]
    try:
        # Checked because the index is JSON: a str or bool partition would corrupt it.
        partitions = msgspec.convert([e.partition for e in entries], list[int])
    except msgspec.ValidationError as exc:
        raise ValueError(f"a log entry's partition must be an int: {exc}") from exc
    return _Pending(
        partitions,
        list(map(len, keys)),
        list(map(len, payloads)),
        b"".join(keys),
        b"".join(payloads),
        loop,
        loop.create_future(),
    )


def _connect(path: Path, fsync: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={_SYNC[fsync]}")
    return conn


def _create_or_check(conn: sqlite3.Connection, path: Path) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        (layout,) = conn.execute("PRAGMA user_version").fetchone()
        old = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'log'")
        if layout not in (0, _LAYOUT) or old.fetchone() is not None:
            raise StorageError(
                f"{path} holds an event log in layout {layout or 1}; this version reads "
                f"layout {_LAYOUT} only: move the file away to start a new log"
            )
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.execute("COMMIT")
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")


def _pack(group: list[_Pending]) -> tuple[int, bytes, bytes, bytes]:
    """A group's appends as one row: (event count, index, dedupe keys, payloads)."""
    key_at = list(accumulate(chain.from_iterable(p.key_sizes for p in group), initial=0))
    payload_at = list(accumulate(chain.from_iterable(p.payload_sizes for p in group), initial=0))
    partitions = list(chain.from_iterable(p.partitions for p in group))
    index = zip(partitions, key_at[:-1], key_at[1:], payload_at[:-1], payload_at[1:], strict=True)
    keys = b"".join(p.keys for p in group)
    payloads = b"".join(p.payloads for p in group)
    return len(partitions), _ENCODER.encode(list(index)), keys, payloads


def _settle(settled: list[tuple[asyncio.Future[list[int]], list[int] | BaseException]]) -> None:
    for future, outcome in settled:
        if future.done():
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


def _resolve(group: list[_Pending], outcomes: Sequence[list[int] | BaseException]) -> None:
    """Settle every caller's future, with one wake-up per event loop rather than per call."""
    by_loop: dict[
        asyncio.AbstractEventLoop,
        list[tuple[asyncio.Future[list[int]], list[int] | BaseException]],
    ] = {}
    for pending, outcome in zip(group, outcomes, strict=True):
        by_loop.setdefault(pending.loop, []).append((pending.future, outcome))
    for loop, settled in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, settled)
        except RuntimeError:
            # That caller's event loop has closed: nobody waits for the answer, and the
            # writer thread must live on for everyone else.
            continue


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
        try:
            _create_or_check(self._reader, path)
        except BaseException:
            self._reader.close()
            raise
        if fsync == "full":
            # This connection writes only copies (consumer offsets, which the sinks keep
            # themselves) and retention's deletes, which a rerun repeats: no fsync per
            # commit for them (in WAL mode NORMAL still syncs at checkpoints, so the file
            # stays whole). Each sink's offset every batch had waited for a disk flush.
            self._reader.execute("PRAGMA synchronous=NORMAL")
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
        pending = _pending(entries, asyncio.get_running_loop())
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
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            group = [first]
            size = len(first.partitions)
            while size < self._group_max:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                group.append(item)
                size += len(item.partitions)
            self._commit_group(conn, group)
        conn.close()

    def _commit_group(self, conn: sqlite3.Connection, group: list[_Pending]) -> None:
        count, index, keys, payloads = _pack(group)
        try:
            last = conn.execute(_INSERT, (count, index, keys, payloads)).lastrowid
        except sqlite3.Error as exc:
            error = StorageError(f"event log append failed: {exc}")
            _resolve(group, [error] * len(group))
            return
        assert last is not None  # an INSERT of one row always sets it
        offset = last - count + 1
        outcomes: list[list[int] | BaseException] = []
        for pending in group:
            outcomes.append(list(range(offset, offset + len(pending.partitions))))
            offset += len(pending.partitions)
        _resolve(group, outcomes)

    # -- reading ---------------------------------------------------------------

    def read_sync(
        self, after: int, limit: int, partitions: Collection[int] | None = None
    ) -> list[LogRecord]:
        """Blocking :meth:`read` without waiting, for worker threads."""
        records: list[LogRecord] = []
        if limit <= 0 or (partitions is not None and not partitions):
            return records
        wanted = None if partitions is None else frozenset(partitions)
        with self._read_lock:
            rows = self._reader.execute(
                "SELECT first, events, payload FROM log_rows WHERE last > ? ORDER BY last",
                (after,),
            )
            try:
                for first, events, payload in rows:
                    skip = max(after + 1 - first, 0)
                    index = _INDEX.decode(events)[skip:]
                    for offset, (partition, _, _, start, end) in enumerate(index, first + skip):
                        if wanted is None or partition in wanted:
                            records.append(LogRecord(offset, partition, payload[start:end]))
                            if len(records) == limit:
                                return records
            finally:
                rows.close()
        return records

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
        with self._read_lock:
            (last,) = self._reader.execute("SELECT coalesce(max(last), 0) FROM log_rows").fetchone()
        return int(last)

    async def recent_dedupe_keys(self, limit: int) -> list[bytes]:
        keys: list[bytes] = []
        if limit <= 0:
            return keys
        with self._read_lock:
            # The payloads are stored after the keys, so this never reads them from disk.
            rows = self._reader.execute("SELECT events, dedupe FROM log_rows ORDER BY last DESC")
            try:
                for events, dedupe in rows:
                    for _, start, end, _, _ in reversed(_INDEX.decode(events)):
                        keys.append(dedupe[start:end])
                        if len(keys) == limit:
                            return keys
            finally:
                rows.close()
        return keys

    async def commit(self, consumer: str, offset: int) -> None:
        with self._read_lock:
            self._reader.execute(
                "INSERT INTO consumers VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET offset = excluded.offset",
                (consumer, offset),
            )

    async def committed(self) -> dict[str, int]:
        with self._read_lock:
            rows = self._reader.execute("SELECT name, offset FROM consumers").fetchall()
        return {str(name): int(off) for name, off in rows}

    # -- retention ---------------------------------------------------------------

    def expire(self, through: int, expired: Callable[[bytes], bool]) -> int:
        """Delete the commit groups up to offset ``through`` whose every event payload is
        ``expired``; return how many events went. Blocking (run it in a thread).

        A group holding one unexpired event stays whole (a row is never rewritten), and
        the newest group always stays: the next append numbers its offsets from it.
        """
        doomed: list[int] = []
        removed = 0
        with self._read_lock:
            rows = self._reader.execute(
                "SELECT last, events, payload FROM log_rows"
                " WHERE last <= ? AND last < (SELECT max(last) FROM log_rows) ORDER BY last",
                (through,),
            )
            try:
                for last, events, payload in rows:
                    index = _INDEX.decode(events)
                    if all(expired(payload[start:end]) for _, _, _, start, end in index):
                        doomed.append(last)
                        removed += len(index)
            finally:
                rows.close()
            for at in range(0, len(doomed), 500):
                chunk = doomed[at : at + 500]
                self._reader.execute(
                    f"DELETE FROM log_rows WHERE last IN ({','.join('?' * len(chunk))})", chunk
                )
        return removed

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
