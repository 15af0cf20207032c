"""The segment worker: the log sink, and the loop that backfills, fires timers and publishes.

Transitions are committed to ``segment_outbox`` with the state that caused them;
:class:`SegmentPublisher` appends them to the log afterwards and then deletes them. A
crash in between publishes them again with the same messageId (hence the same dedupe
key): JetStream drops the copy itself; for the embedded log the publisher remembers
the keys it appended and, when it starts with rows left over, the log's newest keys,
as the collector does.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from typing import Final

from sqlalchemy import Engine, func, select

from remarket.collect.dedupe import Deduper, dedupe_key
from remarket.collect.stages import partition_of
from remarket.config import Settings
from remarket.schema.events import Message, decode_log_message
from remarket.segments.live import LiveSegments
from remarket.segments.membership import CONSUMER, PUBLISHER_SOURCE
from remarket.storage.log import EventLog, LogEntry
from remarket.storage.state import segment_outbox
from remarket.storage.state.published import chunks
from remarket.storage.state.turns import step_aside, write_turn

__all__ = ["SegmentLoop", "SegmentPublisher", "SegmentsSink"]

_log = logging.getLogger(__name__)


_CHUNK: Final = 1_000
"""Most records per transaction: at a few hundred µs per event with 50 live segments, a
worker's whole batch (10,000) would hold the state store's write lock for seconds, and
on SQLite everything else that writes there waits (collect's new keys, the API)."""
_LONG_TURN_S: Final = 0.01
"""A chunk that held the write lock this long steps aside before the next one; shorter
ones (no live segment reads the events) leave gaps enough, and a pause after each would
idle the worker (2 ms per 1,000 records: a tenth of the workers' time, measured)."""
_PUBLISH: Final = 10_000
"""Most transitions per append: each append waits twice for the state store's write lock
(the keys sealing them, then the outbox rows it deletes), which the sink holds most of
the time under load; 1,000 per append made transitions wait ~2x longer when segments
go live on a busy shop (`benchmarks/segments.py --cold --rate 2000`, session 7)."""


class SegmentsSink:
    """The real-time segments as a log sink (after the profiles sink: identities first).

    A batch is applied in chunks of up to 1,000 records, each a transaction of its own
    that moves the offset to its last record, so progress stays exactly once."""

    def __init__(self, live: LiveSegments, *, chunk: int = _CHUNK) -> None:
        self.name = CONSUMER
        self._live = live
        self._chunk = chunk

    def committed(self) -> int:
        return self._live.committed()

    def apply(self, rows: Sequence[tuple[int, Message]], through: int, expected: int) -> None:
        held = 0.0
        for start in range(0, len(rows), self._chunk) or [0]:  # an empty batch moves too
            if held >= _LONG_TURN_S:
                step_aside()  # a writer waiting for its turn goes between two chunks
            chunk = rows[start : start + self._chunk]
            last = start + self._chunk >= len(rows)
            end = through if last else chunk[-1][0]
            began = time.monotonic()
            self._live.apply(chunk, end, expected)
            held = time.monotonic() - began
            expected = end


class SegmentPublisher:
    """Appends committed transitions from the outbox to the log, each once."""

    def __init__(self, engine: Engine, log: EventLog, settings: Settings) -> None:
        self._engine = engine
        self._log = log
        self._partitions = settings.log_partitions
        self._capacity = settings.dedupe_capacity
        self._published = Deduper(settings.dedupe_capacity)
        # Rows up to this id were committed before this process: they may be in the log.
        self._leftover = 0 if log.dedupes_itself else self._last_id()

    def _last_id(self) -> int:
        with self._engine.connect() as conn:
            return int(conn.scalar(select(func.max(segment_outbox.c.id))) or 0)

    def _pending(self, limit: int) -> list[tuple[int, str, bytes]]:
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(segment_outbox.c.id, segment_outbox.c.message_id, segment_outbox.c.payload)
                .order_by(segment_outbox.c.id)
                .limit(limit)
            )
            return [(r.id, r.message_id, bytes(r.payload)) for r in rows]

    def _done(self, ids: Sequence[int]) -> None:
        with write_turn(self._engine), self._engine.begin() as conn:
            for chunk in chunks(ids):  # one transaction, IN lists of a bound length
                conn.execute(segment_outbox.delete().where(segment_outbox.c.id.in_(chunk)))

    async def publish(self, limit: int = _PUBLISH) -> int:
        """Publish up to ``limit`` pending transitions; how many left the outbox."""
        rows = await asyncio.to_thread(self._pending, limit)
        if not rows:
            return 0
        if rows[0][0] <= self._leftover:
            self._published.warm(await self._log.recent_dedupe_keys(self._capacity))
            self._leftover = 0
        keys = [dedupe_key(PUBLISHER_SOURCE, message_id) for _, message_id, _ in rows]
        owner: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        verdicts = self._published.claim(keys, owner)
        entries = [
            LogEntry(payload, partition_of(decode_log_message(payload), self._partitions), key)
            for (_, _, payload), key, fresh in zip(rows, keys, verdicts, strict=True)
            if fresh is True
        ]
        try:
            await self._log.append(entries)
        except BaseException:
            self._published.settle(keys, owner, durable=False)
            raise
        self._published.settle(keys, owner, durable=True)
        await asyncio.to_thread(self._done, [row_id for row_id, _, _ in rows])
        return len(rows)


class SegmentLoop:
    """What the segment worker does besides the sink: backfills, timers, publishing."""

    def __init__(
        self, live: LiveSegments, publisher: SegmentPublisher, *, poll_interval: float
    ) -> None:
        self.live = live
        self.publisher = publisher
        self._poll = poll_interval

    async def step(self) -> None:
        """One round: pending backfills, then due timers, then the whole outbox."""
        await asyncio.to_thread(self.live.backfill_pending)
        while await asyncio.to_thread(self.live.run_timers):
            pass
        while await self.publisher.publish():
            pass

    async def run(self, stop: threading.Event) -> None:
        """Rounds until ``stop`` is set; errors are logged and retried."""
        while not stop.is_set():
            try:
                await self.step()
            except Exception:
                _log.exception("segment worker round failed; retrying in 1 s")
                await asyncio.sleep(1.0)
            await asyncio.sleep(self._poll)
