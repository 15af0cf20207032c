"""The journey worker: the log sink, and the loop that runs schedules and due timers."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence

from remarket.journeys.catalog import CONSUMER
from remarket.journeys.runtime import JourneyRuntime
from remarket.schema.events import Message

__all__ = ["JourneyLoop", "JourneysSink"]

_log = logging.getLogger(__name__)


class JourneysSink:
    """Journeys as a log sink (after the segments sink: it reads their transitions)."""

    def __init__(self, runtime: JourneyRuntime) -> None:
        self.name = CONSUMER
        self._runtime = runtime

    def committed(self) -> int:
        return self._runtime.committed()

    def apply(self, rows: Sequence[tuple[int, Message]], through: int, expected: int) -> None:
        self._runtime.apply(rows, through, expected)


class JourneyLoop:
    """What the journey worker does besides the sink: due schedules, then due timers."""

    def __init__(self, runtime: JourneyRuntime, *, poll_interval: float) -> None:
        self.runtime = runtime
        self._poll = poll_interval

    async def step(self) -> int:
        """One round: schedules, then timers until none is due; instances walked."""
        await asyncio.to_thread(self.runtime.run_schedules)
        total = 0
        while walked := await asyncio.to_thread(self.runtime.run_due):
            total += walked
        return total

    async def run(self, stop: threading.Event) -> None:
        """Rounds until ``stop`` is set; errors are logged and retried."""
        while not stop.is_set():
            try:
                await self.step()
            except Exception:
                _log.exception("journey worker round failed; retrying in 1 s")
                await asyncio.sleep(1.0)
            await asyncio.sleep(self._poll)
