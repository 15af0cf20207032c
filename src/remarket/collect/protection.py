"""The collector's protective stages wired together: guard, pseudonymiser, consent filter,
and the background task that keeps their tables and caches in step with the state store."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from sqlalchemy import Engine

from remarket.clock import Clock
from remarket.collect.consent_filter import ConsentCache, ConsentFilter
from remarket.collect.guard import Guard
from remarket.collect.guard_store import GuardStore
from remarket.collect.pseudonymise import Pseudonymiser
from remarket.collect.stages import Stage
from remarket.config import Settings
from remarket.metrics import GUARD_EVENTS

__all__ = ["Protection"]

_log = logging.getLogger(__name__)


@dataclass(slots=True)
class Protection:
    """Build with :meth:`build`, pass :attr:`stages` to the collector, then :meth:`start`."""

    guard: Guard
    pseudonymiser: Pseudonymiser
    consent: ConsentCache
    stages: list[Stage]
    interval: float
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    @classmethod
    def build(cls, settings: Settings, engine: Engine, clock: Clock) -> Protection:
        """The stages in their order: guard (sees ids and agents as sent), pseudonymiser,
        consent filter (looks ids up as the identities table holds them)."""
        guard = Guard(settings, GuardStore(engine), clock)
        pseudonymiser = Pseudonymiser(settings)
        guard.subject_of = pseudonymiser.pseudonym
        cache = ConsentCache(engine)
        consent = ConsentFilter(settings, cache, pseudonymiser, guard.count)
        stages: list[Stage] = [guard, *pseudonymiser.stages(), consent]
        guard.refresh()
        cache.refresh()
        return cls(guard, pseudonymiser, cache, stages, settings.guard_refresh_s)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="remarket-guard")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.sync()
            except Exception:
                _log.exception("guard: storing counters or reloading block lists failed")

    async def flush(self) -> None:
        """Store the counters and anomaly reports gathered so far."""
        day, counts, reports = self.guard.take()
        if not counts and not reports:
            return
        try:
            await asyncio.to_thread(self.guard.store.record, day, counts, reports)
        except BaseException:
            self.guard.give_back(counts, reports)
            raise
        for (_, kind), n in counts.items():
            GUARD_EVENTS.labels(kind).inc(n)

    async def sync(self) -> None:
        """Flush, then reload the block lists and the consent cache."""
        await self.flush()
        await asyncio.to_thread(self.guard.refresh)
        await asyncio.to_thread(self.consent.refresh)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
