"""Run the foundation's workers in a background thread with their own event loop."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from sqlalchemy import Engine

from remarket.channels import Delivery
from remarket.clock import Clock, SystemClock
from remarket.collect.quarantine import QuarantineStore, Rejection
from remarket.collect.seal import SealingLog
from remarket.config import Settings
from remarket.journeys import JourneyLoop, JourneyRuntime, JourneysSink
from remarket.privacy import ConsentLedger, ConsentSink, RetentionJob
from remarket.privacy.keyring import Keyring
from remarket.privacy.seal import Opener, Sealer
from remarket.profiles.store import ProfileStore
from remarket.segments.live import LiveSegments
from remarket.segments.sink import SegmentLoop, SegmentPublisher, SegmentsSink
from remarket.storage.log import EventLog, LogRecord, open_log
from remarket.storage.warehouse import Warehouse
from remarket.workers.runner import Ceiling, PoisonHandler, Runner
from remarket.workers.sinks import ProfilesSink, Sink, WarehouseSink

__all__ = ["WorkerPart", "WorkerThread", "Workers", "build_runner", "build_workers"]

_log = logging.getLogger(__name__)


WorkerPart = Literal["all", "events", "people"]
"""What a worker process runs: everything; the warehouse's part (events into the warehouse,
retention); or the people's part (profiles, segments, consent, journeys, delivery), which
follows the warehouse sink (segment backfills and journey conditions read the warehouse)."""


class _Loop(Protocol):
    async def run(self, stop: threading.Event) -> None: ...


class _Retention:
    """The retention job as a loop."""

    def __init__(self, job: RetentionJob) -> None:
        self._job = job

    async def run(self, stop: threading.Event) -> None:
        await self._job.run_every(stop)


@dataclass(frozen=True, slots=True)
class Workers:
    """The log runner and the loops beside it: the segment worker's (backfills, timers,
    publishing), the journey worker's (schedules, timers), the deliverer and the periodic
    retention job, as the part run here has them."""

    runner: Runner
    log: EventLog
    loops: tuple[_Loop, ...]

    async def run(self, stop: threading.Event) -> None:
        await asyncio.gather(self.runner.run(stop), *(loop.run(stop) for loop in self.loops))


async def build_runner(
    settings: Settings, engine: Engine, warehouse: Warehouse, clock: Clock | None = None
) -> tuple[Runner, EventLog]:
    """A runner over the configured log with the warehouse, profile, segment and consent
    sinks."""
    workers = await build_workers(settings, engine, warehouse, clock)
    return workers.runner, workers.log


async def build_workers(
    settings: Settings,
    engine: Engine,
    warehouse: Warehouse,
    clock: Clock | None = None,
    keyring: Keyring | None = None,
    *,
    part: WorkerPart = "all",
) -> Workers:
    """The runner (sinks in order: warehouse, profiles, segments, consent, journeys), the
    segment and journey loops, the deliverer and retention; or those of one ``part``.
    ``keyring``: the server's, so that an erasure drops cached keys at once (one is made
    otherwise)."""
    log = await open_log(settings)
    keyring = keyring or Keyring(engine, clock=clock, sync_commits=settings.log_fsync == "full")
    quarantine = QuarantineStore(engine)
    now = (clock or SystemClock()).now

    def poison(record: LogRecord, reason: str) -> None:
        rejection = Rejection(
            index=record.offset,
            reason="undecodable_log_record",
            field=None,
            detail=f"log offset {record.offset}: {reason}",
            payload=record.payload,
        )
        quarantine.add("log", now(), [rejection])

    events = WarehouseSink(warehouse)
    retention = _Retention(RetentionJob(engine, warehouse, log, settings, clock))
    if part == "events":
        runner = _runner(settings, log, [events], poison, Opener(keyring))
        return Workers(runner, log, (retention,))
    live = LiveSegments(engine, warehouse, clock)
    journeys = JourneyRuntime(engine, warehouse, clock)
    profiles = ProfileStore(engine)
    people: list[Sink] = [
        # After profiles: events are resolved to profiles through the identities it wrote.
        SegmentsSink(live),
        ConsentSink(ConsentLedger(engine, clock=clock)),
        # After segments: journeys enter on their published transitions.
        JourneysSink(journeys),
    ]
    mirror = ProfilesSink(profiles, warehouse)
    # Split, the events' part fills the keys' handle index; the people's part needs not.
    opener = Opener(keyring, on_erasure=[profiles.forget], indexes=part != "people")
    if part == "people":
        runner = _runner(
            settings,
            log,
            [mirror, *people],
            poison,
            opener,
            ceiling=lambda: warehouse.committed(events.name),
        )
    else:
        # The warehouse and profiles are independent of each other: their writes overlap.
        runner = _runner(settings, log, [(events, mirror), *people], poison, opener)
    # Segment transitions name the profile in their properties: sealed with the PII.
    sealer = Sealer(keyring, [*settings.pii_fields, "profile_id"])
    published = (
        SealingLog(log, sealer, keyring, settings.log_partitions)
        if settings.pii_encryption
        else log
    )
    poll = settings.worker_poll_interval_s
    loops: tuple[_Loop, ...] = (
        SegmentLoop(live, SegmentPublisher(engine, published, settings), poll_interval=poll),
        JourneyLoop(journeys, poll_interval=poll),
        # The channel outbox: journeys' sends and audience uploads.
        Delivery(
            engine, settings, clock or SystemClock(), journeys.is_paused, journeys.daily_limit
        ),
    )
    return Workers(runner, log, loops if part == "people" else (*loops, retention))


def _runner(
    settings: Settings,
    log: EventLog,
    sinks: Sequence[Sink | tuple[Sink, ...]],
    poison: PoisonHandler,
    opener: Opener,
    *,
    ceiling: Ceiling | None = None,
) -> Runner:
    return Runner(
        log,
        sinks,
        on_poison=poison,
        batch_size=settings.worker_batch_size,
        poll_interval=settings.worker_poll_interval_s,
        unseal=opener,
        ceiling=ceiling,
    )


class WorkerThread:
    """The workers of ``remarket serve``: started with the API, stopped with it."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        warehouse: Warehouse,
        clock: Clock | None = None,
        keyring: Keyring | None = None,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._keyring = keyring
        self._engine = engine
        self._warehouse = warehouse
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="remarket-workers", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        workers = await build_workers(
            self._settings, self._engine, self._warehouse, self._clock, self._keyring
        )
        try:
            await workers.run(self._stop)
        finally:
            await workers.log.close()
