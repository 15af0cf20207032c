"""A state store with profiles, consent, providers and a controllable clock, and a way to
run the deliverer over it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from remarket.channels import Delivery, OutboxMessage, enqueue
from remarket.channels.registry import ProviderStore
from remarket.channels.secrets import SecretBox, load_key
from remarket.channels.templates import Template, TemplateStore
from remarket.clock import ManualClock
from remarket.config import Settings
from remarket.privacy import ConsentLedger
from remarket.segments.membership import Transition, write_transitions
from remarket.storage.state import channel_outbox, profile_traits, profiles, segments

START = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # a Monday, noon UTC


@dataclass
class World:
    engine: Engine
    settings: Settings
    clock: ManualClock = field(default_factory=lambda: ManualClock(START))
    paused: set[str] = field(default_factory=set)
    limits: dict[str, int] = field(default_factory=dict)

    @classmethod
    def make(cls, engine: Engine, data_dir: Path, **settings: Any) -> World:
        settings.setdefault("channels_quiet_hours", None)
        return cls(engine, Settings(data_dir=data_dir, **settings))

    @property
    def box(self) -> SecretBox:
        return SecretBox(load_key(self.settings))

    def profile(self, pid: str, consent: tuple[str, ...] = ("email",), **traits: Any) -> str:
        now = self.clock.now()
        with self.engine.begin() as conn:
            conn.execute(profiles.insert(), {"profile_id": pid, "event_count": 0})
            if traits:
                conn.execute(
                    profile_traits.insert(),
                    [
                        {"profile_id": pid, "key": k, "value": v, "ts": now, "message_id": "t"}
                        for k, v in traits.items()
                    ],
                )
        if consent:
            ConsentLedger(self.engine, clock=self.clock).set(
                pid, dict.fromkeys(consent, True), actor="test"
            )
        return pid

    def segment(self, name: str) -> None:
        """A live segment row (for audiences to follow); members come by transitions."""
        now = self.clock.now()
        with self.engine.begin() as conn:
            conn.execute(
                segments.insert(),
                {
                    "name": name,
                    "version": 1,
                    "live_version": 1,
                    "pending": False,
                    "generation": 1,
                    "created_at": now,
                    "updated_at": now,
                },
            )

    def move(self, segment: str, pid: str, entered: bool) -> None:
        """One second later, the profile enters (or leaves) the segment."""
        self.clock.advance(timedelta(seconds=1))
        with self.engine.begin() as conn:
            write_transitions(conn, [Transition(segment, 1, pid, entered, self.clock.now())])

    def provider(self, kind: str, *, rate_per_s: int | None = None, **settings: Any) -> str:
        from remarket.channels.registry import KINDS

        spec = KINDS[kind]
        config = {k: v for k, v in settings.items() if k in spec.config}
        credentials = {k: v for k, v in settings.items() if k in spec.credentials}
        return (
            ProviderStore(self.engine, self.box)
            .create(
                name=f"{kind}-{len(settings)}-{id(settings)}",
                kind=kind,
                config=config,
                credentials=credentials,
                rate_per_s=rate_per_s,
                now=self.clock.now(),
            )
            .id
        )

    def template(self, tid: str, channel: str, text: str, **parts: str | None) -> None:
        TemplateStore(self.engine).put(
            Template(tid, channel, parts.get("subject"), parts.get("html"), text),
            now=self.clock.now(),
        )

    def enqueue(self, key: str, pid: str, channel: str = "email", **kwargs: Any) -> bool:
        kwargs.setdefault("template_id", "welcome" if channel != "webhook" else None)
        kwargs.setdefault("variables", {})
        with self.engine.begin() as conn:
            return enqueue(conn, OutboxMessage(key, pid, channel, **kwargs), now=self.clock.now())

    def delivery(self) -> Delivery:
        return Delivery(
            self.engine,
            self.settings,
            self.clock,
            lambda j: j in self.paused,
            self.limits.get,
            seed=1,
        )

    def deliver(self) -> int:
        """Run steps until nothing is due; how many rows were handled."""

        async def main() -> int:
            delivery = self.delivery()
            total = 0
            try:
                while done := await delivery.step():
                    total += done
            finally:
                await delivery.aclose()
            return total

        return asyncio.run(main())

    def row(self, key: str) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(
                select(channel_outbox).where(channel_outbox.c.idempotency_key == key)
            ).one()
