"""Retention: the window that applies to an event, and the job that deletes only expired
events from the warehouse, the quarantine and the embedded log (DuckDB on SQLite, and
PostgreSQL for both)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from sqlalchemy import Engine

from remarket.clock import ManualClock
from remarket.collect import QuarantineStore, Rejection
from remarket.config import Settings
from remarket.errors import InvalidInput
from remarket.privacy import AuditLog, RetentionJob, RetentionRules
from remarket.privacy.retention import ANY
from remarket.schema.events import Message, decode_log_message, encode_message
from remarket.storage.log import LogEntry, SQLiteLog
from remarket.storage.state import connect_state, upgrade_state
from remarket.storage.warehouse import DuckDBWarehouse, Warehouse
from remarket.storage.warehouse.postgres import PostgresWarehouse

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def test_the_most_specific_rule_wins(engine: Engine) -> None:
    rules = RetentionRules(engine, default_days=400)
    rules.put(ANY, ANY, 60)
    rules.put("s1", "track", 10)
    rules.put("s1", ANY, 20)
    rules.put(ANY, "identify", 365)
    windows = rules.windows()
    assert windows.days("s1", "track") == 10
    assert windows.days("s1", "page") == 20
    assert windows.days("s1", "identify") == 20  # the source beats the type
    assert windows.days("s2", "identify") == 365
    assert windows.days("s2", "page") == 60
    assert RetentionRules(engine).windows().days("s9", "page") == 60
    assert RetentionRules(engine, default_days=None).windows().shortest == 10


def test_a_rule_is_replaced_not_duplicated_and_can_be_removed(engine: Engine) -> None:
    rules = RetentionRules(engine)
    first = rules.put("s1", "track", 10)
    second = rules.put("s1", "track", 30)
    assert first.id == second.id
    assert [(r.source_id, r.event_type, r.days) for r in rules.list()] == [("s1", "track", 30)]
    rules.remove(first.id)
    assert rules.list() == []
    assert rules.windows().empty


@pytest.mark.parametrize(("event_type", "days"), [("purchase", 5), ("track", 0)])
def test_bad_rules_are_refused(engine: Engine, event_type: str, days: int) -> None:
    with pytest.raises(InvalidInput):
        RetentionRules(engine).put(ANY, event_type, days)


@dataclass
class Stores:
    engine: Engine
    warehouse: Warehouse
    log: SQLiteLog


@pytest.fixture(
    params=[
        pytest.param("embedded", id="sqlite-duckdb"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stores]:
    if request.param == "embedded":
        engine = connect_state(f"sqlite:///{tmp_path / 'state.db'}")
        warehouse: Warehouse = DuckDBWarehouse(tmp_path / "warehouse.duckdb")
    else:
        url: str = request.getfixturevalue("pg_database")
        engine = connect_state(url.replace("postgresql://", "postgresql+psycopg://", 1))
        warehouse = PostgresWarehouse(url)
    upgrade_state(engine)
    log = SQLiteLog(tmp_path / "log.db", fsync="off")
    yield Stores(engine, warehouse, log)
    asyncio.run(log.close())
    warehouse.close()
    engine.dispose()


def _event(source: str, kind: str, age_days: int, name: str) -> Message:
    raw: dict[str, Any] = {
        "type": kind,
        "messageId": name,
        "userId": "u1",
        "sourceId": source,
        "timestamp": (NOW - timedelta(days=age_days)).isoformat(),
        "receivedAt": (NOW - timedelta(days=age_days)).isoformat(),
    }
    if kind == "track":
        raw["event"] = "Viewed"
    return decode_log_message(msgspec.json.encode(raw))


# (source, type, age in days, messageId); rules: any 60 d, (s1, track) 10 d, identify 365 d.
EVENTS = [
    ("s1", "track", 100, "s1-track-old"),
    ("s1", "track", 20, "s1-track-mid"),
    ("s1", "track", 1, "s1-track-new"),
    ("s1", "page", 100, "s1-page-old"),
    ("s1", "page", 20, "s1-page-mid"),
    ("s2", "track", 100, "s2-track-old"),
    ("s2", "track", 20, "s2-track-mid"),
    ("s1", "identify", 100, "s1-identify-old"),
]
EXPIRED = {"s1-track-old", "s1-track-mid", "s1-page-old", "s2-track-old"}


def _rules(engine: Engine) -> None:
    rules = RetentionRules(engine)
    rules.put(ANY, ANY, 60)
    rules.put("s1", "track", 10)
    rules.put(ANY, "identify", 365)


def _job(stores: Stores, **settings: Any) -> RetentionJob:
    return RetentionJob(
        stores.engine,
        stores.warehouse,
        stores.log,
        Settings(**settings),
        ManualClock(NOW),
    )


def _warehouse_ids(warehouse: Warehouse) -> set[str]:
    return {row[0] for row in warehouse.query("SELECT message_id FROM events")}


def test_the_job_deletes_only_expired_events_from_the_warehouse(stores: Stores) -> None:
    messages = [_event(*e) for e in EVENTS]
    stores.warehouse.write_events(
        "warehouse", list(enumerate(messages, 1)), len(messages), expected=0
    )
    _rules(stores.engine)
    report = asyncio.run(_job(stores).run())
    assert report.warehouse == len(EXPIRED)
    assert _warehouse_ids(stores.warehouse) == {e[3] for e in EVENTS} - EXPIRED
    assert asyncio.run(_job(stores).run()).warehouse == 0  # idempotent
    (entry,) = [e for e in AuditLog(stores.engine).entries() if e.action == "retention.run"]
    assert json.loads(entry.details)["warehouse"] == len(EXPIRED)


def test_without_rules_nothing_is_deleted(stores: Stores) -> None:
    messages = [_event(*e) for e in EVENTS]
    stores.warehouse.write_events("warehouse", list(enumerate(messages, 1)), 8, expected=0)
    report = asyncio.run(_job(stores).run())
    assert (report.warehouse, report.quarantine, report.log) == (0, 0, 0)
    # The four events 100 days old; those 20 days old and younger stay.
    assert asyncio.run(_job(stores, retention_default_days=30).run()).warehouse == 4


def test_the_job_deletes_only_expired_quarantined_events(stores: Stores) -> None:
    store = QuarantineStore(stores.engine)
    for source, kind, age, name in EVENTS:
        payload = encode_message(_event(source, kind, age, name))
        store.add(source, NOW - timedelta(days=age), [Rejection(0, "x", None, "x", payload)])
    store.add("s2", NOW - timedelta(days=100), [Rejection(0, "x", None, "x", b"{not json")])
    _rules(stores.engine)
    assert asyncio.run(_job(stores).run()).quarantine == len(EXPIRED) + 1
    left = {msgspec.json.decode(q.payload)["messageId"] for q in store.list()}
    assert left == {e[3] for e in EVENTS} - EXPIRED


def test_the_log_loses_only_groups_every_consumer_passed_and_all_expired(
    stores: Stores,
) -> None:
    async def scenario() -> tuple[int, list[str]]:
        log = stores.log
        # One commit group per append: [old, old], [old, new], [old], [old] (the last).
        groups = [
            ["s1-track-old", "s2-track-old"],
            ["s1-page-old", "s1-track-new"],
            ["s1-track-mid"],
            ["s1-page-old-2"],
            ["s2-track-old-2"],
        ]
        kinds = {e[3]: e for e in EVENTS}
        kinds["s1-page-old-2"] = ("s1", "page", 100, "s1-page-old-2")
        kinds["s2-track-old-2"] = ("s2", "track", 100, "s2-track-old-2")
        for group in groups:
            await log.append(
                [LogEntry(encode_message(_event(*kinds[n])), 0, n.encode()) for n in group]
            )
        _rules(stores.engine)
        await log.commit("warehouse", 7)
        await log.commit("profiles", 5)  # the slowest consumer: offsets 1-5 are done
        removed = await _job(stores).run()
        left = [msgspec.json.decode(r.payload)["messageId"] for r in await log.read(0, 100)]
        return removed.log, left

    removed, left = asyncio.run(scenario())
    # Group 1 (offsets 1-2) is all expired and passed; group 2 holds an unexpired event;
    # group 3 (offset 5) is expired and passed; group 4 (offset 6) is not passed by
    # profiles; group 5 is the newest, which always stays.
    assert removed == 3
    assert left == ["s1-page-old", "s1-track-new", "s1-page-old-2", "s2-track-old-2"]
    assert asyncio.run(stores.log.end_offset()) == 7
