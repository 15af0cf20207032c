"""Journeys: profiles through a 5-step journey, e-mail to a local SMTP sink, none lost or doubled.

A state store (SQLite file) and a DuckDB warehouse hold N profiles (user id, e-mail,
e-mail consent; half of them on plan "pro", written to the warehouse as identify
events so the branch's segment condition reads them by SQL). One active journey:

    Product Added → wait 1h → branch (plan = pro) ─ no ─────────────→ update trait
                                                └ yes → split ─ a → e-mail → update trait
                                                               └ b ─────────→ update trait

Every profile's `Product Added` goes through the journeys sink (`JourneyRuntime.apply`,
batches of 10,000 as the worker runner hands them over); the clock moves 61 minutes;
`run_due` walks every profile on (the branch answered by one SQL query per batch, the
e-mails into the channel outbox in the same transaction as each step); then the
channels' `Delivery` sends the outbox to an aiosmtpd server on 127.0.0.1. Figures:
wall time of entering and of walking, steps/s (nodes executed per second over both),
delivery time, and messages at the sink against the number expected from the split
(computed independently), with duplicate Message-IDs counted.

    .venv/bin/python benchmarks/journeys.py [--quick] [--profiles N]
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import msgspec
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import Engine, func, select

import common
from remarket.channels import Delivery
from remarket.channels.registry import ProviderStore
from remarket.channels.secrets import SecretBox, load_key
from remarket.channels.templates import Template, TemplateStore
from remarket.clock import ManualClock
from remarket.config import Settings
from remarket.journeys import JourneyCatalog, JourneyRuntime
from remarket.journeys.interpreter import split_arm
from remarket.schema.events import Identify, Message, Track
from remarket.schema.journey import SplitNode
from remarket.storage.state import (
    connect_state,
    consents,
    identities,
    journey_steps,
    profile_traits,
    profiles,
    upgrade_state,
)
from remarket.storage.warehouse.duckdb import DuckDBWarehouse

T0: Final = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
TARGETS: Final = {"steps_per_s": 5_000, "messages_lost": 0, "messages_duplicated": 0}
BATCH: Final = 10_000

JOURNEY: Final[dict[str, Any]] = {
    "id": "bench",
    "entry": {"type": "event", "event": "Product Added"},
    "start": "wait",
    "nodes": [
        {"id": "wait", "type": "wait", "duration": "1h", "next": "pro"},
        {
            "id": "pro",
            "type": "branch",
            "condition": {
                "entry": "t",
                "nodes": [
                    {"id": "t", "type": "trait", "path": "plan", "operator": "eq", "value": "pro"}
                ],
            },
            "then": "split",
            "else": "mark",
        },
        {
            "id": "split",
            "type": "split",
            "arms": [{"name": "a", "weight": 1, "next": "mail"}, {"name": "b", "weight": 1,
                                                                  "next": "mark"}],
        },
        {"id": "mail", "type": "send", "channel": "email", "template": "nudge", "next": "mark"},
        {"id": "mark", "type": "update_trait", "trait": "nudged", "value": True},
    ],
}  # fmt: skip


class _Sink:
    """Counts what the SMTP server accepted, by Message-ID."""

    def __init__(self) -> None:
        self.ids: Counter[str] = Counter()
        self.lock = threading.Lock()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = (envelope.original_content or b"").decode(errors="replace")
        message_id = next(
            (line.split(":", 1)[1].strip() for line in content.splitlines()
             if line.lower().startswith("message-id:")),
            "",
        )  # fmt: skip
        with self.lock:
            self.ids[message_id] += 1
        return "250 OK"


def _user(i: int) -> str:
    return f"u{i:07d}"


def _pid(i: int) -> str:
    return f"p_{i:07d}"


def _seed(engine: Engine, warehouse: DuckDBWarehouse, n: int) -> None:
    """N profiles in the state store and their identify events in the warehouse."""
    rows: list[tuple[int, Message]] = []
    with engine.begin() as conn:
        for start in range(0, n, BATCH):
            chunk = range(start, min(n, start + BATCH))
            conn.execute(
                profiles.insert(), [{"profile_id": _pid(i), "event_count": 1} for i in chunk]
            )
            conn.execute(
                identities.insert(),
                [{"kind": "user_id", "value": _user(i), "profile_id": _pid(i)} for i in chunk],
            )
            conn.execute(
                profile_traits.insert(),
                [
                    {"profile_id": _pid(i), "key": key, "value": value, "ts": T0}
                    | {"message_id": f"seed-{i}"}
                    for i in chunk
                    for key, value in (("email", f"{_user(i)}@example.com"),
                                       ("plan", "pro" if i % 2 == 0 else "free"))
                ],
            )  # fmt: skip
            conn.execute(
                consents.insert(),
                [
                    {"profile_id": _pid(i), "purpose": "email", "state": "granted"}
                    | {"source": "api", "legal_basis": "consent", "at": T0, "ref": f"seed:{i}"}
                    for i in chunk
                ],
            )
    for i in range(n):
        traits = {"plan": "pro" if i % 2 == 0 else "free", "email": f"{_user(i)}@example.com"}
        rows.append(
            (
                i + 1,
                Identify(
                    traits=msgspec.Raw(msgspec.json.encode(traits)),
                    message_id=f"seed-{i}",
                    user_id=_user(i),
                    timestamp=T0 - timedelta(days=1),
                    received_at=T0 - timedelta(days=1),
                    source_id="bench",
                ),
            )
        )
    warehouse.write_events("warehouse", rows, n, expected=0)
    warehouse.upsert_identities([("user_id", _user(i), _pid(i)) for i in range(n)])


def _carts(n: int, first_offset: int) -> list[tuple[int, Message]]:
    return [
        (
            first_offset + i,
            Track(
                event="Product Added",
                message_id=f"cart-{i}",
                user_id=_user(i),
                timestamp=T0,
                received_at=T0,
                source_id="bench",
            ),
        )
        for i in range(n)
    ]


def _deliver(
    engine: Engine, settings: Settings, clock: ManualClock, runtime: JourneyRuntime
) -> None:
    async def main() -> None:
        delivery = Delivery(engine, settings, clock, runtime.is_paused, seed=1)
        try:
            while await delivery.step():
                pass
        finally:
            await delivery.aclose()

    asyncio.run(main())


def run(n: int, folder: Path) -> dict[str, Any]:
    clock = ManualClock(T0)
    settings = Settings(
        data_dir=folder, channels_quiet_hours=None, channels_caps_per_day={},
        channels_caps_per_week={},
    )  # fmt: skip
    engine = connect_state(settings.resolved_database_url())
    upgrade_state(engine)
    warehouse = DuckDBWarehouse(folder / "warehouse.duckdb")
    common.progress(f"seeding {n:,} profiles")
    _seed(engine, warehouse, n)
    catalog = JourneyCatalog(engine, clock=clock)
    catalog.save(JOURNEY, actor="bench")
    catalog.transition("bench", "activate", actor="bench")
    split = SplitNode.model_validate(JOURNEY["nodes"][2])
    expected = sum(1 for i in range(0, n, 2) if split_arm(split, "bench", _pid(i)) == "a")

    runtime = JourneyRuntime(engine, warehouse, clock)
    carts = _carts(n, n + 1)
    common.progress("entering")
    started = time.perf_counter()
    offset = 0
    for start in range(0, n, BATCH):
        batch = carts[start : start + BATCH]
        runtime.apply(batch, batch[-1][0], offset)
        offset = batch[-1][0]
    while runtime.run_due(limit=5_000):  # into the wait
        pass
    entering_s = time.perf_counter() - started
    clock.advance(timedelta(minutes=61))
    common.progress("walking")
    started = time.perf_counter()
    while runtime.run_due(limit=5_000):
        pass
    walking_s = time.perf_counter() - started
    with engine.connect() as conn:
        steps = int(
            conn.scalar(
                select(func.count()).where(journey_steps.c.kind == "reached")
            ) or 0
        )  # fmt: skip

    common.progress("delivering")
    sink = _Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=common.free_port())
    controller.start()
    try:
        ProviderStore(engine, SecretBox(load_key(settings))).create(
            name="sink", kind="smtp", config={"host": "127.0.0.1", "port": controller.port,
            "sender": "shop@shop.example", "security": "none"}, credentials={},
            rate_per_s=None, now=clock.now(),
        )  # fmt: skip
        TemplateStore(engine).put(
            Template("nudge", "email", "Still thinking?", None, "Your cart misses you."),
            now=clock.now(),
        )
        started = time.perf_counter()
        _deliver(engine, settings, clock, runtime)
        delivery_s = time.perf_counter() - started
    finally:
        controller.stop()
    warehouse.close()
    engine.dispose()
    received = sum(sink.ids.values())
    duplicated = sum(c - 1 for c in sink.ids.values() if c > 1)
    total_s = entering_s + walking_s
    return {
        "profiles": n,
        "steps": steps,
        "entering_s": round(entering_s, 2),
        "walking_s": round(walking_s, 2),
        "wall_s": round(total_s, 2),
        "steps_per_s": round(steps / total_s),
        "delivery_s": round(delivery_s, 2),
        "messages_per_s": round(received / delivery_s) if delivery_s else 0,
        "messages_expected": expected,
        "messages_received": received,
        "messages_lost": max(expected - len(sink.ids), 0),
        "messages_duplicated": duplicated,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5,000 profiles, under a minute")
    parser.add_argument("--profiles", type=int, default=None, help="profiles (default 100,000)")
    args = parser.parse_args()
    n = args.profiles or (5_000 if args.quick else 100_000)
    with common.tmp_dir("journeys") as folder:
        figures = run(n, folder)
    print(
        common.table(
            ["phase", "profiles", "steps", "seconds", "per second"],
            [
                ["enter (sink)", n, n, figures["entering_s"], n / figures["entering_s"]],
                [
                    "walk (timers)",
                    n,
                    figures["steps"],
                    figures["walking_s"],
                    figures["steps"] / figures["walking_s"],
                ],
                ["enter + walk", n, figures["steps"], figures["wall_s"], figures["steps_per_s"]],
                [
                    "deliver (SMTP)",
                    figures["messages_received"],
                    "",
                    figures["delivery_s"],
                    figures["messages_per_s"],
                ],
            ],
        )
    )
    print(
        common.table(
            ["messages", "expected", "at the sink", "lost", "duplicated"],
            [
                [
                    "e-mail",
                    figures["messages_expected"],
                    figures["messages_received"],
                    figures["messages_lost"],
                    figures["messages_duplicated"],
                ]
            ],
        )
    )
    met = (
        figures["steps_per_s"] >= TARGETS["steps_per_s"]
        and figures["messages_lost"] == 0
        and figures["messages_duplicated"] == 0
        and figures["messages_received"] == figures["messages_expected"]
    )
    common.final_line("journeys", figures, TARGETS, met)


if __name__ == "__main__":
    main()
