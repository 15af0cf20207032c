"""Segment scenarios through the HTTP API on a manual clock: tables of steps.

Each step is one of: ``("save", definition)``, ``("send", event, ...)``, ``("advance",
timedelta)``, ``("members", segment, {user ids})`` and ``("published", [(event,
segment, user id), ...])`` (every transition published so far, in order). The
workers run after every step (``settle``), so the clock alone moves membership.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from remarket.clock import ManualClock
from remarket.collect.dedupe import dedupe_key
from remarket.config import Settings
from remarket.schema.events import decode_log_message
from remarket.segments.membership import (
    ENTERED,
    PUBLISHER_SOURCE,
    Transition,
    write_transitions,
)
from remarket.segments.sink import SegmentPublisher
from remarket.storage.log import LogEntry, SQLiteLog
from remarket.storage.state import connect_state, segment_history, segment_outbox, upgrade_state
from tests.segments.world import World, running

T0 = datetime(2026, 4, 1, 9, tzinfo=UTC)

CART = {"name": "carts", "entry": "c", "nodes": [{"id": "c", "type": "cart_abandoned"}]}
VIEWERS = {
    "name": "viewers",
    "entry": "v",
    "nodes": [{"id": "v", "type": "performed", "event": "Product Viewed", "times": 2}],
}


def track(user: str, event: str, **properties: Any) -> dict[str, Any]:
    return {"type": "track", "userId": user, "event": event, "properties": properties}


def anon(anonymous_id: str, event: str) -> dict[str, Any]:
    return {"type": "track", "anonymousId": anonymous_id, "event": event}


def identify(user: str, anonymous_id: str) -> dict[str, Any]:
    return {"type": "identify", "userId": user, "anonymousId": anonymous_id}


def buyers(times: int) -> dict[str, Any]:
    node = {"id": "o", "type": "performed", "event": "Order Completed", "times": times}
    return {"name": "buyers", "entry": "o", "nodes": [node]}


SCENARIOS: dict[str, list[tuple[Any, ...]]] = {
    "cart-abandoned-an-hour-later-with-no-new-event": [
        ("save", CART),
        ("send", track("u1", "Product Added")),
        ("members", "carts", set()),
        ("advance", timedelta(minutes=59)),
        ("members", "carts", set()),
        ("published", []),
        ("advance", timedelta(minutes=1)),
        ("members", "carts", {"u1"}),
        ("published", [(ENTERED, "carts", "u1")]),
    ],
    "order-within-the-hour-never-enters": [
        ("save", CART),
        ("send", track("u1", "Product Added")),
        ("advance", timedelta(minutes=30)),
        ("send", track("u1", "Order Completed")),
        ("advance", timedelta(hours=2)),
        ("members", "carts", set()),
        ("published", []),
    ],
    "cart-abandoner-leaves-when-the-cart-ages-out": [
        ("save", CART),
        ("send", track("u1", "Product Added")),
        ("advance", timedelta(hours=1)),
        ("members", "carts", {"u1"}),
        ("advance", timedelta(days=7)),
        ("members", "carts", set()),
        ("published", [(ENTERED, "carts", "u1"), ("Segment Exited", "carts", "u1")]),
    ],
    "identify-merges-two-anonymous-histories": [
        ("save", VIEWERS),
        ("send", anon("a1", "Product Viewed"), anon("a2", "Product Viewed")),
        ("members", "viewers", set()),
        ("send", identify("u1", "a1")),
        ("members", "viewers", set()),
        ("send", identify("u1", "a2")),
        ("members", "viewers", {"u1"}),
        ("published", [(ENTERED, "viewers", "u1")]),
    ],
    "edit-makes-a-version-and-backfills": [
        ("send", track("u1", "Order Completed"), track("u2", "Order Completed")),
        ("send", track("u2", "Order Completed")),
        ("save", buyers(1)),
        ("members", "buyers", {"u1", "u2"}),
        ("save", buyers(2)),
        ("members", "buyers", {"u2"}),
        ("send", track("u1", "Order Completed")),
        ("members", "buyers", {"u1", "u2"}),
        (
            "published",
            [
                (ENTERED, "buyers", "u1"),
                (ENTERED, "buyers", "u2"),
                ("Segment Exited", "buyers", "u1"),
                (ENTERED, "buyers", "u1"),
            ],
        ),
    ],
}


def _run(world: World, steps: list[tuple[Any, ...]]) -> None:
    for step in steps:
        kind, *args = step
        if kind == "save":
            world.save(args[0])
        elif kind == "send":
            world.send(*args)
        elif kind == "advance":
            world.advance(args[0])
        world.settle()
        if kind == "members":
            segment, users = args
            assert world.members(segment) == {world.profile(user_id=u) for u in users}, step
        elif kind == "published":
            assert world.published() == args[0], step


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with running(tmp_path / "var", ManualClock(T0)) as w:
        yield w


@pytest.mark.parametrize("name", list(SCENARIOS), ids=list(SCENARIOS))
def test_scenario(world: World, name: str) -> None:
    _run(world, SCENARIOS[name])


def test_edit_keeps_versions_and_goes_live(world: World) -> None:
    _run(world, SCENARIOS["edit-makes-a-version-and-backfills"])
    detail = world.server.client.get("/v1/segments/buyers", headers=world.server.admin).json()
    assert [v["version"] for v in detail["versions"]] == [1, 2]
    assert detail["versions"][0]["definition"]["nodes"][0]["times"] == 1
    assert (detail["version"], detail["live_version"], detail["status"]) == (2, 2, "live")


def test_transitions_exactly_once_across_a_restart(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    with running(tmp_path / "var", clock) as world:
        _run(world, SCENARIOS["cart-abandoned-an-hour-later-with-no-new-event"])
    with running(tmp_path / "var", clock) as world:
        world.settle()
        world.advance(timedelta(hours=2))
        world.settle()
        assert world.published() == [(ENTERED, "carts", "u1")]
        with world.runtime.engine.connect() as conn:
            kinds = conn.scalars(select(segment_history.c.kind)).all()
        assert kinds == ["entered"]


def test_a_republished_transition_is_dropped(tmp_path: Path) -> None:
    """A crash after the log append but before the outbox row went: the copy is dropped."""
    settings = Settings(data_dir=tmp_path, log_fsync="off")
    engine = connect_state(settings.resolved_database_url())
    upgrade_state(engine)
    with engine.begin() as conn:
        # An identity, so that the transition has someone to be sent as.
        conn.exec_driver_sql(
            "INSERT INTO identities (kind, value, profile_id) VALUES ('user_id', 'u1', 'p_1')"
        )
        write_transitions(conn, [Transition("carts", 1, "p_1", True, T0)])

    async def scenario() -> list[str]:
        log = SQLiteLog(tmp_path / "log.db", fsync="off")
        try:
            with engine.connect() as conn:
                saved = conn.execute(select(segment_outbox)).one()
            # A first run appended the row and died before deleting it ...
            key = dedupe_key(PUBLISHER_SOURCE, saved.message_id)
            await log.append([LogEntry(saved.payload, 0, key)])
            # ... so the next run publishes the row again.
            assert await SegmentPublisher(engine, log, settings).publish() == 1
            records = await log.read(0, 100)
            return [str(decode_log_message(r.payload).message_id) for r in records]
        finally:
            await log.close()

    ids = asyncio.run(scenario())
    assert len(ids) == 1
    with engine.connect() as conn:
        assert conn.execute(select(segment_outbox)).all() == []


def test_one_publish_appends_and_clears_an_outbox_of_thousands(tmp_path: Path) -> None:
    """More transitions than one IN list holds: every one reaches the log once and
    leaves the outbox."""
    settings = Settings(data_dir=tmp_path, log_fsync="off")
    engine = connect_state(settings.resolved_database_url())
    upgrade_state(engine)
    people = [f"p_{n}" for n in range(1_200)]
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO identities (kind, value, profile_id) VALUES ('user_id', ?, ?)",
            [(f"u{pid}", pid) for pid in people],
        )
        write_transitions(conn, [Transition("carts", 1, pid, True, T0) for pid in people])

    async def scenario() -> tuple[int, list[str]]:
        log = SQLiteLog(tmp_path / "log.db", fsync="off")
        try:
            published = await SegmentPublisher(engine, log, settings).publish()
            records = await log.read(0, 10_000)
            return published, [str(decode_log_message(r.payload).user_id) for r in records]
        finally:
            await log.close()

    published, senders = asyncio.run(scenario())
    assert published == len(people)
    assert sorted(senders) == sorted(f"u{pid}" for pid in people)
    with engine.connect() as conn:
        assert conn.execute(select(segment_outbox)).all() == []
