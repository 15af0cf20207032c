"""A collector with the protective stages (guard, pseudonymiser, consent filter), on a
real state store and a real embedded log."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from sqlalchemy import Engine

from remarket.clock import ManualClock
from remarket.collect import Collector, IngestResult, QuarantineStore, Source, parse_batch
from remarket.collect.protection import Protection
from remarket.config import Settings
from remarket.schema.events import Message, decode_log_message
from remarket.storage.log import SQLiteLog
from remarket.storage.state import connect_state, upgrade_state

NOW = datetime(2026, 5, 1, 12, tzinfo=UTC)
SOURCE = Source("s1", "web", "wk_", True, NOW)


@dataclass
class Pipeline:
    collector: Collector
    protection: Protection
    log: SQLiteLog
    engine: Engine
    clock: ManualClock
    quarantine: QuarantineStore

    def send(
        self, events: list[dict[str, Any]], *, ip: str | None = None, agent: str | None = None
    ) -> IngestResult:
        body = msgspec.json.encode({"batch": events})
        return asyncio.run(
            self.collector.ingest_batch(SOURCE, parse_batch(body), ip=ip, user_agent=agent)
        )

    def logged(self) -> list[Message]:
        return [decode_log_message(r.payload) for r in asyncio.run(self.log.read(0, 100_000))]

    def flush(self) -> None:
        asyncio.run(self.protection.flush())

    def sync(self) -> None:
        asyncio.run(self.protection.sync())


def pipeline(tmp_path: Path, state_url: str | None = None, **overrides: Any) -> Pipeline:
    settings = Settings(data_dir=tmp_path, log_partitions=4, **overrides)
    engine = connect_state(state_url or settings.resolved_database_url())
    upgrade_state(engine)
    log = SQLiteLog(tmp_path / "log.db", fsync="off")
    clock = ManualClock(NOW)
    protection = Protection.build(settings, engine, clock)
    quarantine = QuarantineStore(engine)
    collector = Collector(settings, log, quarantine, clock, extra_stages=protection.stages)
    return Pipeline(collector, protection, log, engine, clock, quarantine)


def track(user: str = "u1", n: int = 1, **fields: Any) -> list[dict[str, Any]]:
    return [{"type": "track", "event": "Viewed", "userId": user, **fields} for _ in range(n)]
