"""Run the foundation's workers in a background thread with their own event loop."""

from __future__ import annotations

import asyncio
import logging
import threading

from sqlalchemy import Engine

from remarket.clock import Clock, SystemClock
from remarket.collect.quarantine import QuarantineStore, Rejection
from remarket.config import Settings
from remarket.profiles.store import ProfileStore
from remarket.storage.log import EventLog, LogRecord, open_log
from remarket.storage.warehouse import Warehouse
from remarket.workers.runner import Runner
from remarket.workers.sinks import ProfilesSink, Sink, WarehouseSink

__all__ = ["WorkerThread", "build_runner"]

_log = logging.getLogger(__name__)


async def build_runner(
    settings: Settings, engine: Engine, warehouse: Warehouse, clock: Clock | None = None
) -> tuple[Runner, EventLog]:
    """A runner over the configured log with the warehouse and profile sinks."""
    log = await open_log(settings)
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

    sinks: list[Sink] = [
        WarehouseSink(warehouse),
        ProfilesSink(ProfileStore(engine), warehouse),
    ]
    runner = Runner(
        log,
        sinks,
        on_poison=poison,
        batch_size=settings.worker_batch_size,
        poll_interval=settings.worker_poll_interval_s,
    )
    return runner, log


class WorkerThread:
    """The workers of ``remarket serve``: started with the API, stopped with it."""

    def __init__(self, settings: Settings, engine: Engine, warehouse: Warehouse) -> None:
        self._settings = settings
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
        runner, log = await build_runner(self._settings, self._engine, self._warehouse)
        try:
            await runner.run(self._stop)
        finally:
            await log.close()
