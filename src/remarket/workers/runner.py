"""Move records from the event log into sinks, each exactly once."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence

import msgspec

from remarket.errors import OffsetConflict
from remarket.metrics import LOG_LAG, WORKER_EVENTS
from remarket.schema.events import Message, decode_log_message
from remarket.storage.log import EventLog, LogRecord
from remarket.workers.sinks import Sink

__all__ = ["Runner"]

_log = logging.getLogger(__name__)

PoisonHandler = Callable[[LogRecord, str], None]
Unsealer = Callable[[list[tuple[int, Message]]], list[tuple[int, Message]]]
Ceiling = Callable[[], int]
"""The log offset the sinks may apply up to (blocking: it runs in a thread)."""


class Runner:
    """Reads the log once for several sinks; each sink keeps its own offset.

    Records are decoded once per batch and handed to every sink that has not applied
    them yet, in the order given (events the guard flagged as bots are skipped); a tuple
    of sinks applies its batch concurrently (for sinks that do not depend on each other:
    their database calls overlap). A record that
    cannot be decoded goes to ``on_poison`` (the quarantine) instead of stopping the
    pipeline. With a ``ceiling``, no sink applies a record beyond it: the people part of
    split workers follows the warehouse sink of another process, which it reads through.
    """

    def __init__(
        self,
        log: EventLog,
        sinks: Sequence[Sink | tuple[Sink, ...]],
        *,
        on_poison: PoisonHandler,
        batch_size: int = 10_000,
        poll_interval: float = 0.05,
        unseal: Unsealer | None = None,
        ceiling: Ceiling | None = None,
    ) -> None:
        if not sinks:
            raise ValueError("a runner needs at least one sink")
        self._log = log
        self._stages = [group if isinstance(group, tuple) else (group,) for group in sinks]
        self._sinks = [sink for group in self._stages for sink in group]
        self._on_poison = on_poison
        self._batch = batch_size
        self._poll = poll_interval
        self._offsets = {s.name: s.committed() for s in self._sinks}
        self._poisoned_through = 0
        # Decrypts sealed events; those whose key erasure destroyed are left out.
        self._unseal = unseal
        self._ceiling = ceiling

    @property
    def offsets(self) -> dict[str, int]:
        return dict(self._offsets)

    async def step(self, wait: float = 0.0) -> int:
        """Apply one batch to every sink; return how many records were read."""
        start = min(self._offsets.values())
        records = await self._log.read(start, self._batch, wait=wait)
        if records and self._ceiling is not None:
            ceiling = await asyncio.to_thread(self._ceiling)
            if records[0].offset > ceiling:
                await asyncio.sleep(self._poll)  # what it follows is behind: wait for it
                return 0
            records = [r for r in records if r.offset <= ceiling]
        if not records:
            return 0
        decoded = self._decode(records)
        if self._unseal is not None:
            decoded = await asyncio.to_thread(self._unseal, decoded)
        through = records[-1].offset
        for group in self._stages:
            await asyncio.gather(*(self._apply(s, decoded, start, through) for s in group))
        await self._report_lag()
        return len(records)

    async def _apply(
        self, sink: Sink, decoded: list[tuple[int, Message]], start: int, through: int
    ) -> None:
        done = self._offsets[sink.name]
        if done >= through:
            return
        rows = decoded if done <= start else [r for r in decoded if r[0] > done]
        try:
            await asyncio.to_thread(sink.apply, rows, through, done)
        except OffsetConflict:
            # Another worker applied this batch first; carry on from where it is.
            self._offsets[sink.name] = await asyncio.to_thread(sink.committed)
            _log.info(
                "%s: another worker is ahead; resuming at %d", sink.name, self._offsets[sink.name]
            )
            return
        self._offsets[sink.name] = through
        await self._log.commit(sink.name, through)
        WORKER_EVENTS.labels(sink.name).inc(len(rows))

    async def publish_offsets(self) -> None:
        """Tell the log how far each sink is, from the sinks' own records.

        The log's copy can lag behind after a crash between a sink's commit and the
        log's; without this, health and metrics would report that lag until new events
        arrived.
        """
        for name, offset in self._offsets.items():
            await self._log.commit(name, offset)
        await self._report_lag()

    async def _report_lag(self) -> None:
        end = await self._log.end_offset()
        for name, offset in self._offsets.items():
            LOG_LAG.labels(name).set(max(end - offset, 0))

    def _decode(self, records: Sequence[LogRecord]) -> list[tuple[int, Message]]:
        rows: list[tuple[int, Message]] = []
        # A record some sink has passed, or that this runner reported already, was
        # quarantined before: re-reads (a lagging sink, a retried batch) must not repeat it.
        reported = max(self._poisoned_through, *self._offsets.values())
        for record in records:
            try:
                message = decode_log_message(record.payload)
            except msgspec.MsgspecError as exc:
                if record.offset > reported:
                    _log.error("log record %d cannot be decoded: %s", record.offset, exc)
                    self._on_poison(record, str(exc))
                continue
            # Flagged by the collector's guard: counted there, kept in the log, and kept
            # out of every sink (warehouse, profiles, segments), so the SQL and real-time
            # segment engines agree on who is a person.
            if message.bot is None:
                rows.append((record.offset, message))
        if records:
            self._poisoned_through = max(self._poisoned_through, records[-1].offset)
        return rows

    async def drain(self) -> int:
        """Apply everything in the log up to now; return the records read."""
        total = 0
        await self.publish_offsets()
        end = await self._log.end_offset()
        while min(self._offsets.values()) < end:
            total += await self.step()
        return total

    async def run(self, stop: threading.Event) -> None:
        """Apply batches until ``stop`` is set; errors are logged and retried."""
        await self.publish_offsets()
        while not stop.is_set():
            try:
                await self.step(wait=self._poll)
            except Exception:
                _log.exception("worker batch failed; retrying in 1 s")
                await asyncio.sleep(1.0)
