"""Workers: the log is the source of truth; replaying it rebuilds the same state."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from sqlalchemy import select

from remarket.clock import ManualClock
from remarket.collect import Collector, QuarantineStore, Source, parse_batch
from remarket.config import Settings
from remarket.profiles import ProfileStore
from remarket.sim import Shop
from remarket.storage.log import LogEntry, SQLiteLog
from remarket.storage.state import (
    connect_state,
    identities,
    profile_traits,
    profiles,
    upgrade_state,
)
from remarket.storage.warehouse import DuckDBWarehouse
from remarket.workers import ProfilesSink, Runner, WarehouseSink

NOW = datetime(2026, 3, 1, tzinfo=UTC)
SOURCE = Source("src1", "web", "wk_", True, NOW)


def fill_log(tmp: Path, visitors: int) -> SQLiteLog:
    """A log holding a synthetic shop's events, appended through the real collector."""
    settings = Settings(data_dir=tmp / "collect")
    engine = connect_state(settings.resolved_database_url())
    upgrade_state(engine)
    log = SQLiteLog(tmp / "log.db", fsync="off")
    collector = Collector(settings, log, QuarantineStore(engine), ManualClock(NOW))
    events = list(Shop(visitors=visitors, end=NOW, seed=7).events())

    async def send() -> None:
        for start in range(0, len(events), 100):
            body = msgspec.json.encode({"batch": events[start : start + 100]})
            result = await collector.ingest_batch(SOURCE, parse_batch(body))
            assert not result.rejected

    asyncio.run(send())
    return log


def build(tmp: Path, log: SQLiteLog, name: str) -> tuple[Runner, Any, DuckDBWarehouse]:
    engine = connect_state(f"sqlite:///{tmp / f'{name}-state.db'}")
    upgrade_state(engine)
    warehouse = DuckDBWarehouse(tmp / f"{name}.duckdb")
    sinks = [WarehouseSink(warehouse), ProfilesSink(ProfileStore(engine), warehouse)]
    poisoned: list[int] = []
    runner = Runner(log, sinks, on_poison=lambda r, _: poisoned.append(r.offset), batch_size=700)
    return runner, engine, warehouse


def snapshot(engine: Any, warehouse: DuckDBWarehouse) -> dict[str, Any]:
    with engine.connect() as conn:
        state = {
            t.name: sorted(tuple(r) for r in conn.execute(select(t)).all())
            for t in (profiles, identities, profile_traits)
        }
    state["events"] = warehouse.query('SELECT * FROM events ORDER BY "offset"')
    state["wh_identities"] = warehouse.query("SELECT * FROM identities ORDER BY kind, value")
    return state


def test_replaying_the_log_into_empty_stores_gives_identical_state(tmp_path: Path) -> None:
    log = fill_log(tmp_path, visitors=150)
    first, engine1, wh1 = build(tmp_path, log, "one")
    asyncio.run(first.drain())
    second, engine2, wh2 = build(tmp_path, log, "two")
    asyncio.run(second.drain())
    one, two = snapshot(engine1, wh1), snapshot(engine2, wh2)
    assert one == two
    end = asyncio.run(log.end_offset())
    assert len(one["events"]) == end
    # The warehouse's identity copy matches the state store's table.
    assert sorted(one["wh_identities"]) == one["identities"]


def test_a_restarted_runner_resumes_without_repeating(tmp_path: Path) -> None:
    log = fill_log(tmp_path, visitors=60)
    runner, engine, warehouse = build(tmp_path, log, "one")
    asyncio.run(runner.step())  # one batch only, then "crash"
    assert 0 < warehouse.count_events() < asyncio.run(log.end_offset())
    resumed = Runner(
        log,
        [WarehouseSink(warehouse), ProfilesSink(ProfileStore(engine), warehouse)],
        on_poison=lambda r, _: None,
    )
    asyncio.run(resumed.drain())
    assert warehouse.count_events() == asyncio.run(log.end_offset())
    with engine.connect() as conn:
        total = sum(r.event_count for r in conn.execute(select(profiles)).all())
    assert total == warehouse.count_events()


def test_an_undecodable_record_is_quarantined_and_the_rest_flows(tmp_path: Path) -> None:
    log = fill_log(tmp_path, visitors=5)
    asyncio.run(log.append([LogEntry(b'{"type": "nonsense"}', 0, b"k" * 16)]))
    engine = connect_state(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade_state(engine)
    warehouse = DuckDBWarehouse(None)
    poisoned: list[int] = []
    runner = Runner(
        log,
        [WarehouseSink(warehouse)],
        on_poison=lambda record, _: poisoned.append(record.offset),
    )
    asyncio.run(runner.drain())
    end = asyncio.run(log.end_offset())
    assert poisoned == [end]
    assert warehouse.count_events() == end - 1
    assert warehouse.committed("warehouse") == end


def test_split_parts_follow_each_other_and_end_as_one_runner_does(tmp_path: Path) -> None:
    """The people's part (profiles) never applies past the warehouse sink it follows, and
    the two parts, run as they come, leave the stores as one runner with both sinks does."""
    log = fill_log(tmp_path, visitors=80)
    end = asyncio.run(log.end_offset())
    engine = connect_state(f"sqlite:///{tmp_path / 'split-state.db'}")
    upgrade_state(engine)
    warehouse = DuckDBWarehouse(tmp_path / "split.duckdb")
    events = Runner(log, [WarehouseSink(warehouse)], on_poison=lambda r, _: None, batch_size=700)
    store = ProfileStore(engine)
    people = Runner(
        log,
        [ProfilesSink(store, warehouse)],
        on_poison=lambda r, _: None,
        batch_size=1_000,
        poll_interval=0.001,
        ceiling=lambda: warehouse.committed("warehouse"),
    )
    assert asyncio.run(people.step()) == 0  # nothing in the warehouse yet: it waits
    assert store.committed("profiles") == 0
    while min(events.offsets.values()) < end or min(people.offsets.values()) < end:
        asyncio.run(events.step())
        asyncio.run(people.step())
        assert store.committed("profiles") <= warehouse.committed("warehouse")
    assert store.committed("profiles") == end

    whole, whole_engine, whole_warehouse = build(tmp_path, log, "whole")
    asyncio.run(whole.drain())
    assert snapshot(engine, warehouse) == snapshot(whole_engine, whole_warehouse)
