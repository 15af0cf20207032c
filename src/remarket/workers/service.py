"""Run the foundation's workers in a background thread with their own event loop."""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass

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
from remarket.workers.runner import Runner
from remarket.workers.sinks import ProfilesSink, Sink, WarehouseSink

__all__ = ["WorkerThread", "Workers", "build_runner", "build_workers"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Workers:
    """The log runner, the segment worker's loop (backfills, timers, publishing) and the
    journey worker's loop (schedules, timers), the deliverer and the periodic retention job."""

    runner: Runner
    log: EventLog
    segments: SegmentLoop
    journeys: JourneyLoop
    delivery: Delivery
    retention: RetentionJob

    async def run(self, stop: threading.Event) -> None:
        await asyncio.gather(
            self.runner.run(stop),
            self.segments.run(stop),
            self.journeys.run(stop),
            self.delivery.run(stop),
            self.retention.run_every(stop),
        )


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
) -> Workers:
    """The runner (sinks in order: warehouse, profiles, segments, consent, journeys), the
    segment and journey loops, the deliverer and retention. ``keyring``: the server's, so
    that an erasure drops cached keys at once (one is made otherwise)."""
    log = await open_log(settings)
    keyring = keyring or Keyring(engine, clock=clock)
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

    live = LiveSegments(engine, warehouse, clock)
    journeys = JourneyRuntime(engine, warehouse, clock)
    profiles = ProfileStore(engine)
    sinks: list[Sink | tuple[Sink, ...]] = [
        # Independent of each other: their database writes overlap.
        (WarehouseSink(warehouse), ProfilesSink(profiles, warehouse)),
        # After profiles: events are resolved to profiles through the identities it wrote.
        SegmentsSink(live),
        ConsentSink(ConsentLedger(engine, clock=clock)),
        # After segments: journeys enter on their published transitions.
        JourneysSink(journeys),
    ]
    runner = Runner(
        log,
        sinks,
        on_poison=poison,
        batch_size=settings.worker_batch_size,
        poll_interval=settings.worker_poll_interval_s,
        unseal=Opener(keyring, on_erasure=[profiles.forget]),
    )
    # Segment transitions name the profile in their properties: sealed with the PII.
    sealer = Sealer(keyring, [*settings.pii_fields, "profile_id"])
    published = (
        SealingLog(log, sealer, keyring, settings.log_partitions)
        if settings.pii_encryption
        else log
    )
    loop = SegmentLoop(
        live,
        SegmentPublisher(engine, published, settings),
        poll_interval=settings.worker_poll_interval_s,
    )
    return Workers(
        runner,
        log,
        loop,
        JourneyLoop(journeys, poll_interval=settings.worker_poll_interval_s),
        # The channel outbox: journeys' sends and audience uploads.
        Delivery(
            engine, settings, clock or SystemClock(), journeys.is_paused, journeys.daily_limit
        ),
        RetentionJob(engine, warehouse, log, settings, clock),
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
