"""Retention: how long events are kept per source and event type, and the job that
deletes expired events from the warehouse, the quarantine and the embedded log.

The window of an event is that of the most specific rule: (source, type), then
(source, any type), then (any source, type), then (any, any), then
``retention_default_days`` (none: kept forever). An event expires when its timestamp
(quarantined events: when received) is older than its window.

The embedded SQLite log loses only what every consumer has applied, and only whole
commit groups whose events have all expired. NATS JetStream is not touched here: a
stream forgets by its ``max_age``, whatever the consumers, which remarket sets from
``nats_max_age_s`` (choose the longest time the workers may need to replay, and at
most the shortest retention window that must hold for the log too).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import msgspec
from sqlalchemy import Engine, delete, select

from remarket.clock import Clock, SystemClock
from remarket.config import Settings
from remarket.errors import InvalidInput, NotFound
from remarket.privacy.audit import AuditLog
from remarket.schema.events import EVENT_TYPES, as_utc
from remarket.storage.log import EventLog, SQLiteLog
from remarket.storage.state import quarantine, retention_rules
from remarket.storage.warehouse import Warehouse

__all__ = ["ANY", "RetentionJob", "RetentionReport", "RetentionRule", "RetentionRules"]

ANY: Final = "*"
_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RetentionRule:
    id: int
    source_id: str
    event_type: str
    days: int
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class RetentionReport:
    """Events deleted by one run, per store."""

    warehouse: int
    quarantine: int
    log: int
    at: datetime


class _Header(msgspec.Struct, rename="camel"):
    """The fields of an event that retention reads (the rest is skipped, not decoded)."""

    type: str | None = None
    source_id: str | None = None
    timestamp: datetime | None = None


_HEADER: Final = msgspec.json.Decoder(_Header)


class RetentionRules:
    """The rules table, and the window that applies to an event.

    >>> from remarket.storage.state import connect_state, upgrade_state
    >>> engine = connect_state("sqlite://"); upgrade_state(engine)
    >>> rules = RetentionRules(engine, default_days=365)
    >>> _ = rules.put(ANY, "track", 30)
    >>> w = rules.windows()
    >>> w.days("s1", "track"), w.days("s1", "page")
    (30, 365)
    """

    def __init__(
        self, engine: Engine, *, default_days: int | None = None, clock: Clock | None = None
    ) -> None:
        self._engine = engine
        self.default_days = default_days
        self._clock = clock or SystemClock()

    def list(self) -> list[RetentionRule]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(retention_rules).order_by(retention_rules.c.id)).all()
        return [
            RetentionRule(r.id, r.source_id, r.event_type, r.days, as_utc(r.updated_at))
            for r in rows
        ]

    def put(self, source_id: str, event_type: str, days: int) -> RetentionRule:
        """Set the window of (source, type); ``*`` for any. Replaces an existing rule."""
        if event_type != ANY and event_type not in EVENT_TYPES:
            raise InvalidInput(
                f"event_type must be '*' or one of {list(EVENT_TYPES)}", field="event_type"
            )
        if not 1 <= days <= 36_500:
            raise InvalidInput("days must be between 1 and 36500", field="days")
        now = self._clock.now()
        with self._engine.begin() as conn:
            match = (retention_rules.c.source_id == source_id) & (
                retention_rules.c.event_type == event_type
            )
            existing = conn.scalar(select(retention_rules.c.id).where(match))
            if existing is None:
                key = conn.execute(
                    retention_rules.insert().values(
                        source_id=source_id, event_type=event_type, days=days, updated_at=now
                    )
                ).inserted_primary_key
                assert key is not None
                existing = int(key[0])
            else:
                conn.execute(
                    retention_rules.update().where(match).values(days=days, updated_at=now)
                )
        return RetentionRule(existing, source_id, event_type, days, now)

    def remove(self, rule_id: int) -> None:
        with self._engine.begin() as conn:
            gone = conn.execute(delete(retention_rules).where(retention_rules.c.id == rule_id))
        if gone.rowcount == 0:
            raise NotFound(f"no retention rule with id {rule_id}", field="id")

    def windows(self) -> Windows:
        return Windows(
            {(r.source_id, r.event_type): r.days for r in self.list()}, self.default_days
        )


class Windows:
    """The rules at one moment, resolved per (source, type)."""

    def __init__(self, rules: dict[tuple[str, str], int], default_days: int | None) -> None:
        self._rules = rules
        self._default = default_days
        self._resolved: dict[tuple[str | None, str | None], int | None] = {}

    @property
    def empty(self) -> bool:
        return not self._rules and self._default is None

    @property
    def shortest(self) -> int | None:
        """The shortest window of any rule (None: nothing expires)."""
        return min((*self._rules.values(), self._default or 36_500)) if not self.empty else None

    def days(self, source_id: str | None, event_type: str | None) -> int | None:
        key = (source_id, event_type)
        if key not in self._resolved:
            source, kind = source_id or "", event_type or ""
            found = next(
                (
                    self._rules[k]
                    for k in ((source, kind), (source, ANY), (ANY, kind), (ANY, ANY))
                    if k in self._rules
                ),
                self._default,
            )
            self._resolved[key] = found
        return self._resolved[key]


class RetentionJob:
    """Deletes expired events from every store; safe to run at any time, idempotent."""

    def __init__(
        self,
        engine: Engine,
        warehouse: Warehouse,
        log: EventLog,
        settings: Settings,
        clock: Clock | None = None,
    ) -> None:
        self._engine = engine
        self._warehouse = warehouse
        self._log = log
        self._clock = clock or SystemClock()
        self._interval = settings.retention_interval_s
        self.rules = RetentionRules(
            engine, default_days=settings.retention_default_days, clock=self._clock
        )
        self._audit = AuditLog(engine, clock=self._clock)

    async def run(self, *, actor: str = "retention") -> RetentionReport:
        """One pass over the stores; audited when it deleted anything."""
        now = self._clock.now()
        windows = await asyncio.to_thread(self.rules.windows)
        if windows.empty:
            return RetentionReport(0, 0, 0, now)
        warehouse = await asyncio.to_thread(self._warehouse_pass, windows, now)
        held = await asyncio.to_thread(self._quarantine_pass, windows, now)
        log = await self._log_pass(windows, now)
        report = RetentionReport(warehouse, held, log, now)
        if warehouse or held or log:
            details = {"warehouse": warehouse, "quarantine": held, "log": log}
            await asyncio.to_thread(self._audit.record, actor, "retention.run", "events", details)
            _log.info("retention deleted %s", details)
        return report

    async def run_every(self, stop: threading.Event) -> None:
        """Run every ``retention_interval_s`` until ``stop`` is set (the worker service)."""
        while not stop.is_set():
            try:
                await self.run()
            except Exception:
                _log.exception("retention run failed; trying again next interval")
            waited = 0.0
            while waited < self._interval and not stop.is_set():
                await asyncio.sleep(min(0.5, self._interval - waited))
                waited += 0.5

    def _warehouse_pass(self, windows: Windows, now: datetime) -> int:
        pairs: Iterable[tuple[Any, ...]] = self._warehouse.query(
            "SELECT DISTINCT source_id, type FROM events"
        )
        removed = 0
        for source_id, event_type in pairs:
            days = windows.days(source_id, event_type)
            if days is not None:
                before = now - timedelta(days=days)
                removed += self._warehouse.delete_events(source_id, event_type, before)
        return removed

    def _quarantine_pass(self, windows: Windows, now: datetime) -> int:
        shortest = windows.shortest
        if shortest is None:
            return 0
        doomed: list[int] = []
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(
                    quarantine.c.id,
                    quarantine.c.source_id,
                    quarantine.c.received_at,
                    quarantine.c.payload,
                ).where(quarantine.c.received_at < now - timedelta(days=shortest))
            )
            for row_id, source_id, received_at, payload in rows:
                try:
                    kind = _HEADER.decode(bytes(payload)).type
                except msgspec.MsgspecError:
                    kind = None  # an invalid event: the source's rule for any type
                days = windows.days(source_id, kind)
                if days is not None and as_utc(received_at) < now - timedelta(days=days):
                    doomed.append(row_id)
        with self._engine.begin() as conn:
            for at in range(0, len(doomed), 500):
                conn.execute(delete(quarantine).where(quarantine.c.id.in_(doomed[at : at + 500])))
        return len(doomed)

    async def _log_pass(self, windows: Windows, now: datetime) -> int:
        if not isinstance(self._log, SQLiteLog):
            return 0  # JetStream: the stream's max_age (see the module docstring)
        consumers = await self._log.committed()
        if not consumers:
            return 0
        through = min(consumers.values())

        def expired(payload: bytes) -> bool:
            try:
                header = _HEADER.decode(payload)
            except msgspec.MsgspecError:
                return False  # undecodable: the workers quarantined it; keep the original
            days = windows.days(header.source_id, header.type)
            return (
                days is not None
                and header.timestamp is not None
                and as_utc(header.timestamp) < now - timedelta(days=days)
            )

        return await asyncio.to_thread(self._log.expire, through, expired)
