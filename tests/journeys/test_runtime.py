"""The journey runtime on the state store (SQLite and PostgreSQL): sink, timers, effects."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from sqlalchemy import Engine, func, select, update

from remarket.channels.outbox import RESENT
from remarket.clock import ManualClock
from remarket.journeys import JourneyRuntime
from remarket.journeys import runtime as runtime_module
from remarket.journeys.funnel import funnel, history
from remarket.schema.events import Identify, Message, Track
from remarket.storage.state import (
    channel_outbox,
    identities,
    journey_assignments,
    journey_instances,
    journey_steps,
    profile_traits,
    profiles,
    segment_members,
    segment_outbox,
    upgrade_state,
)
from remarket.storage.state.bulk import bulk_insert
from remarket.storage.warehouse.duckdb import DuckDBWarehouse

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)

BASE: dict[str, Any] = {
    "id": "j",
    "entry": {"type": "event", "event": "Product Added"},
    "start": "w",
    "nodes": [
        {"id": "w", "type": "wait", "duration": "1h", "next": "m"},
        {"id": "m", "type": "send", "channel": "email", "template": "t", "next": "x"},
        {"id": "x", "type": "update_trait", "trait": "nudged", "value": True},
    ],
}


class Rig:
    """A runtime over a real state store and an in-memory warehouse, fed by hand."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.clock = ManualClock(T0)
        self.warehouse = DuckDBWarehouse(None)
        self.runtime = JourneyRuntime(engine, self.warehouse, self.clock)
        self.offset = 0
        self.users: set[str] = set()

    def journey(self, definition: dict[str, Any]) -> None:
        catalog = self.runtime.catalog
        catalog.save(definition, actor="test")
        if catalog.require(definition["id"]).status != "active":
            catalog.transition(definition["id"], "activate", actor="test")

    def _profile(self, user: str) -> None:
        if user not in self.users:
            with self.engine.begin() as conn:
                conn.execute(
                    identities.insert().values(kind="user_id", value=user, profile_id=f"p_{user}")
                )
            self.warehouse.upsert_identities([("user_id", user, f"p_{user}")])
            self.users.add(user)

    def feed(self, *messages: Message) -> None:
        rows: list[tuple[int, Message]] = []
        for message in messages:
            assert message.user_id is not None
            self._profile(message.user_id)
            self.offset += 1
            rows.append((self.offset, message))
        expected = self.runtime.committed()
        self.warehouse.write_events(
            "warehouse", rows, self.offset, expected=self.warehouse.committed("warehouse")
        )
        self.runtime.apply(rows, self.offset, expected)

    def track(self, user: str, event: str, **properties: Any) -> None:
        self.feed(
            Track(
                event=event,
                properties=msgspec.Raw(msgspec.json.encode(properties)),
                message_id=f"m{self.offset + 1}",
                user_id=user,
                timestamp=self.clock.now(),
                received_at=self.clock.now(),
                source_id="test",
            )
        )

    def identify(self, user: str, **traits: Any) -> None:
        self.feed(
            Identify(
                traits=msgspec.Raw(msgspec.json.encode(traits)),
                message_id=f"m{self.offset + 1}",
                user_id=user,
                timestamp=self.clock.now(),
                received_at=self.clock.now(),
                source_id="test",
            )
        )

    def run(self, delta: timedelta = timedelta(0)) -> int:
        self.clock.advance(delta)
        total = 0
        while walked := self.runtime.run_due():
            total += walked
        return total

    def sent(self) -> list[tuple[str, str | None, str | None]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(channel_outbox.c.profile_id, channel_outbox.c.node_id)
                .add_columns(channel_outbox.c.template_id)
                .order_by(channel_outbox.c.id)
            )
            return [(r[0], r[1], r[2]) for r in rows]

    def walks(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(journey_instances).order_by(journey_instances.c.id))
            return [dict(r._mapping) for r in rows]


@pytest.fixture
def rig(state_engine: Engine) -> Iterator[Rig]:
    upgrade_state(state_engine)
    rig = Rig(state_engine)
    yield rig
    rig.warehouse.close()


def test_a_due_timer_fires_once_and_effects_land_with_the_step(rig: Rig) -> None:
    rig.journey(BASE)
    rig.track("ann", "Product Added")
    assert rig.run() == 0  # entering walked to the wait already
    assert rig.run(timedelta(minutes=59)) == 0
    assert rig.run(timedelta(minutes=2)) == 1
    assert rig.run(timedelta(hours=5)) == 0
    assert rig.sent() == [("p_ann", "m", "t")]
    with rig.engine.connect() as conn:
        published = conn.scalar(select(func.count()).select_from(segment_outbox))
    assert published == 1  # the update_trait identify, waiting for the publisher
    (walk,) = rig.walks()
    assert (walk["status"], walk["reason"], walk["node"]) == ("exited", "completed", "x")
    kinds = [(s.kind, s.node) for s in history(rig.engine, "p_ann")]
    assert kinds == [
        ("entered", None),
        ("reached", "w"),
        ("reached", "m"),
        ("reached", "x"),
        ("exited", "x"),
    ]


@pytest.mark.parametrize(
    ("reentry", "entries", "refused"),
    [
        ({"policy": "never"}, 1, "reentry_never"),
        ({"policy": "after", "after": "1d"}, 2, "reentry_wait"),
    ],
    ids=["never", "after-1d"],
)
def test_reentry_policy_and_every_refusal_is_counted(
    rig: Rig, reentry: dict[str, Any], entries: int, refused: str
) -> None:
    rig.journey(BASE | {"reentry": reentry})
    rig.track("ann", "Product Added")
    rig.track("ann", "Product Added")  # already in: never twice at once
    rig.run(timedelta(hours=2))
    rig.clock.advance(timedelta(hours=20))
    rig.track("ann", "Product Added")  # 22 h after the entry: "after 1d" refuses too
    rig.clock.advance(timedelta(hours=3))
    rig.track("ann", "Product Added")
    rig.run(timedelta(hours=2))
    assert len(rig.walks()) == entries
    assert len(rig.sent()) == entries  # one idempotency key per entry
    counts = funnel(rig.engine, "j", ["w", "m", "x"])
    assert counts.entered == entries
    assert counts.not_entered == {"already_active": 1, refused: 1}
    skips = [(s.kind, s.reason) for s in history(rig.engine, "p_ann") if s.kind == "skipped"]
    expected = [("skipped", "already_active"), ("skipped", refused)]
    assert skips == expected + ([("skipped", refused)] if refused == "reentry_never" else [])


def test_max_concurrent_profiles(rig: Rig) -> None:
    rig.journey(BASE | {"max_concurrent": 2})
    for user in ("a", "b", "c"):
        rig.track(user, "Product Added")
    assert [w["profile_id"] for w in rig.walks()] == ["p_a", "p_b"]
    assert funnel(rig.engine, "j", ["w"]).not_entered == {"max_concurrent": 1}
    rig.run(timedelta(hours=2))
    rig.track("c", "Product Added")  # room again
    assert len(rig.walks()) == 3
    counts = funnel(rig.engine, "j", ["w"])
    assert (counts.entered, counts.not_entered) == (3, {"max_concurrent": 1})


def test_wait_until_event_or_timeout(rig: Rig) -> None:
    definition = copy.deepcopy(BASE)
    definition["nodes"][0] = {
        "id": "w",
        "type": "wait",
        "until_event": {"event": "Email Opened"},
        "timeout": "2d",
        "next": "m",
        "on_timeout": "x",
    }
    rig.journey(definition)
    rig.track("ann", "Product Added")
    rig.track("bob", "Product Added")
    rig.clock.advance(timedelta(hours=3))
    rig.track("ann", "Email Opened")
    rig.run()
    assert rig.sent() == [("p_ann", "m", "t")]
    rig.run(timedelta(days=2))
    assert rig.sent() == [("p_ann", "m", "t")]  # bob timed out to x: no message
    assert {w["profile_id"]: w["node"] for w in rig.walks()} == {"p_ann": "x", "p_bob": "x"}


def test_wait_until_local_time_of_day(rig: Rig) -> None:
    definition = copy.deepcopy(BASE)
    definition["nodes"][0] = {"id": "w", "type": "wait", "until_time": "09:00", "next": "m"}
    rig.journey(definition)
    with rig.engine.begin() as conn:
        conn.execute(
            profile_traits.insert().values(
                profile_id="p_ann", key="timezone", value="Asia/Tokyo", ts=T0, message_id="x"
            )
        )
    rig.track("ann", "Product Added")  # 12:00 UTC is 21:00 in Tokyo
    rig.track("bob", "Product Added")  # no time zone: UTC
    rig.run()
    due = {w["profile_id"]: w["due_at"] for w in rig.walks()}
    assert due["p_ann"].replace(tzinfo=UTC) == datetime(2026, 3, 3, 0, 0, tzinfo=UTC)
    assert due["p_bob"].replace(tzinfo=UTC) == datetime(2026, 3, 3, 9, 0, tzinfo=UTC)


def test_exit_event_ends_the_walk_and_the_goal_counts_conversions(rig: Rig) -> None:
    rig.journey(
        BASE
        | {
            "exit_when": [{"event": "Order Completed"}],
            "goal": {"event": "Order Completed", "within": "2d"},
        }
    )
    rig.track("ann", "Product Added")
    rig.track("bob", "Product Added")
    rig.clock.advance(timedelta(minutes=30))
    rig.track("ann", "Order Completed")
    rig.run(timedelta(hours=1))
    rig.clock.advance(timedelta(days=1))
    rig.track("bob", "Order Completed")  # after the message: converted, already exited
    counts = funnel(rig.engine, "j", ["w", "m", "x"])
    assert counts.entered == 2 and counts.converted == 2
    assert counts.exited == {"exit_event": 1, "completed": 1}
    per_node = {n.node: (n.entered, n.converted, n.exited) for n in counts.nodes}
    assert per_node == {"w": (2, 2, 1), "m": (1, 1, 0), "x": (1, 1, 1)}
    assert rig.sent() == [("p_bob", "m", "t")]


def test_holdout_is_never_messaged_and_split_is_stable(rig: Rig) -> None:
    definition = {
        "id": "j",
        "entry": {"type": "event", "event": "Product Added"},
        "start": "h",
        "nodes": [
            {"id": "h", "type": "holdout", "percent": 30, "next": "s"},
            {
                "id": "s",
                "type": "split",
                "arms": [
                    {"name": "a", "weight": 1, "next": "m"},
                    {"name": "b", "weight": 3},
                ],
            },
            {"id": "m", "type": "send", "channel": "email", "template": "t"},
        ],
        "reentry": {"policy": "after", "after": "1h"},
    }
    rig.journey(definition)
    users = [f"u{i}" for i in range(200)]
    for user in users:
        rig.track(user, "Product Added")
    with rig.engine.connect() as conn:
        arms = {(r.node, r.profile_id): r.arm for r in conn.execute(select(journey_assignments))}
    held = {p for (node, p), arm in arms.items() if node == "h" and arm == "holdout"}
    a_arm = {p for (node, p), arm in arms.items() if node == "s" and arm == "a"}
    assert 30 <= len(held) <= 90  # 30 % of 200, loosely
    assert {p for p, _, _ in rig.sent()} == a_arm and not (a_arm & held)
    rig.clock.advance(timedelta(hours=2))
    for user in users:
        rig.track(user, "Product Added")  # second entry: same arms
    again = {p for p, _, _ in rig.sent()}
    assert again == a_arm and len(rig.sent()) == 2 * len(a_arm)


def test_branch_reads_the_segment_condition_by_sql(rig: Rig) -> None:
    definition = copy.deepcopy(BASE)
    definition["nodes"] = [
        {"id": "w", "type": "wait", "duration": "1h", "next": "b"},
        {
            "id": "b",
            "type": "branch",
            "condition": {
                "entry": "t",
                "nodes": [{"id": "t", "type": "trait", "path": "plan", "operator": "eq",
                           "value": "pro"}],
            },
            "then": "m",
        },
        {"id": "m", "type": "send", "channel": "email", "template": "t"},
    ]  # fmt: skip
    rig.journey(definition)
    rig.identify("ann", plan="pro")
    rig.identify("bob", plan="free")
    rig.track("ann", "Product Added")
    rig.track("bob", "Product Added")
    rig.clock.advance(timedelta(minutes=30))
    rig.identify("bob", plan="pro")  # decided when bob reaches the branch, not at entry
    rig.run(timedelta(hours=1))
    assert sorted(p for p, _, _ in rig.sent()) == ["p_ann", "p_bob"]


def test_pause_freezes_walks_and_archive_ends_them(rig: Rig) -> None:
    rig.journey(BASE)
    rig.track("ann", "Product Added")
    rig.runtime.catalog.transition("j", "pause", actor="test")
    assert rig.runtime.is_paused("j")
    rig.track("bob", "Product Added")  # paused: nobody enters
    assert rig.run(timedelta(hours=2)) == 0
    assert rig.sent() == [] and len(rig.walks()) == 1
    assert funnel(rig.engine, "j", ["w"]).not_entered == {"paused": 1}
    rig.runtime.catalog.transition("j", "activate", actor="test")
    assert rig.run() == 1  # the wait that fell due while paused fires once on resume
    rig.track("bob", "Product Added")
    rig.runtime.catalog.transition("j", "archive", actor="test")
    assert rig.run(timedelta(hours=2)) == 0
    assert [(w["profile_id"], w["reason"]) for w in rig.walks()] == [
        ("p_ann", "completed"),
        ("p_bob", "archived"),
    ]


def test_a_schedule_enters_the_segment_members_each_run(rig: Rig) -> None:
    with rig.engine.begin() as conn:
        conn.execute(
            segment_members.insert(),
            [
                {"segment": "lapsed", "profile_id": f"p_{u}", "version": 1, "since": T0}
                for u in ("a", "b")
            ],
        )
    rig.journey(
        BASE
        | {
            "entry": {"type": "schedule", "segment": "lapsed", "every": "1d"},
            "reentry": {"policy": "after", "after": "1d"},
        }
    )
    assert rig.runtime.run_schedules() == 2
    assert rig.runtime.run_schedules() == 0  # the next run is a day later
    rig.run(timedelta(hours=2))
    assert len(rig.sent()) == 2
    rig.clock.advance(timedelta(hours=22))
    assert rig.runtime.run_schedules() == 2
    assert len(rig.walks()) == 4
    rig.clock.advance(timedelta(days=1))
    assert rig.runtime.run_schedules() == 0  # both still in their second walk
    assert funnel(rig.engine, "j", ["w"]).not_entered == {"already_active": 2}


def test_bulk_writes_store_what_sqlalchemy_stores(state_engine: Engine) -> None:
    upgrade_state(state_engine)
    row = {
        "journey_id": "j",
        "version": 1,
        "profile_id": "p_1",
        "instance_id": "i",
        "node": "n",
        "kind": "reached",
        "at": datetime(2026, 3, 2, 12, 0, 0, 123456, tzinfo=UTC),
    }
    with state_engine.begin() as conn:
        conn.execute(journey_steps.insert(), [row])
        bulk_insert(conn, journey_steps, [row | {"instance_id": "k"}])
        stored = conn.exec_driver_sql(
            "SELECT instance_id, CAST(at AS TEXT) FROM journey_steps ORDER BY instance_id"
        ).all()
        assert stored[0][1] == stored[1][1]
        newer = conn.scalar(select(func.count()).where(journey_steps.c.at >= row["at"]))
        assert newer == 2


def test_a_crash_before_the_commit_neither_loses_nor_repeats_the_message(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig.journey(BASE)
    rig.track("ann", "Product Added")
    rig.clock.advance(timedelta(minutes=61))

    def crash(*_args: object) -> None:
        raise RuntimeError("the process dies after queueing the e-mail, before the commit")

    # _write queues the message, then publishes the trait update: die in between.
    monkeypatch.setattr(runtime_module, "_publish_traits", crash)
    with pytest.raises(RuntimeError):
        rig.runtime.run_due()
    assert rig.sent() == []  # rolled back with the step that decided it
    monkeypatch.undo()
    assert rig.run() == 1  # the timer is still due
    assert rig.sent() == [("p_ann", "m", "t")]
    assert rig.run(timedelta(days=1)) == 0
    assert rig.sent() == [("p_ann", "m", "t")]


def test_the_funnel_counts_messages_resent_after_a_crash(rig: Rig) -> None:
    rig.journey(BASE)
    rig.track("ann", "Product Added")
    rig.track("bob", "Product Added")
    rig.run(timedelta(minutes=61))
    # As the deliverer records them: ann's e-mail sent once; bob's in doubt after a
    # deliverer died while sending it, then sent again.
    c = channel_outbox.c
    with rig.engine.begin() as conn:
        conn.execute(update(channel_outbox).values(status="sent", finished_at=rig.clock.now()))
        conn.execute(
            update(channel_outbox)
            .where(c.profile_id == "p_bob")
            .values(reason=RESENT, in_doubt=True)
        )
    counts = funnel(rig.engine, "j", ["w", "m", "x"])
    assert (counts.sent, counts.resent) == (2, 1)
    mail = counts.nodes[1]
    assert (mail.node, mail.queued, mail.sent, mail.resent) == ("m", 2, 2, 1)
    assert (counts.nodes[0].resent, counts.nodes[2].resent) == (0, 0)


def test_daily_limit_is_read_from_the_newest_version(rig: Rig) -> None:
    rig.journey(BASE)
    assert rig.runtime.daily_limit("j") is None
    rig.journey(BASE | {"daily_limit": 500})
    assert rig.runtime.daily_limit("j") is None  # remembered for up to a second
    fresh = JourneyRuntime(rig.engine, rig.warehouse, rig.clock)
    assert fresh.daily_limit("j") == 500
    assert fresh.daily_limit("nope") is None


def test_a_branch_asks_about_the_profile_a_walker_was_merged_into(rig: Rig) -> None:
    definition = copy.deepcopy(BASE)
    definition["nodes"][0]["next"] = "b"
    definition["nodes"].append(
        {
            "id": "b",
            "type": "branch",
            "condition": {
                "entry": "t",
                "nodes": [
                    {"id": "t", "type": "trait", "path": "plan", "operator": "eq", "value": "pro"}
                ],
            },
            "then": "m",
        }
    )
    rig.journey(definition)
    rig.track("ann", "Product Added")
    rig.identify("bob", plan="pro")
    # ann turns out to be bob: the store merges p_ann into p_bob and repoints ann's id.
    with rig.engine.begin() as conn:
        conn.execute(
            profiles.insert(),
            [
                {"profile_id": "p_bob", "event_count": 1, "merged_into": None},
                {"profile_id": "p_ann", "event_count": 0, "merged_into": "p_bob"},
            ],
        )
    rig.warehouse.upsert_identities([("user_id", "ann", "p_bob")])
    rig.run(timedelta(minutes=61))
    assert rig.sent() == [("p_ann", "m", "t")]
