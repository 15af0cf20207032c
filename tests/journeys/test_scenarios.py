"""Journeys end to end through the HTTP API on a manual clock, mail to a real SMTP server."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from remarket.channels import OutboxMessage, enqueue
from remarket.clock import ManualClock
from remarket.profiles.identity import ANONYMOUS_ID, USER_ID, profile_id_of
from remarket.storage.state import channel_outbox
from tests.journeys.smtp import Inbox, smtp_server
from tests.journeys.world import CART_ABANDONMENT, JourneyWorld, journey_world

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # a Monday, noon UTC


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    with smtp_server() as server:
        yield server


def _customer(world: JourneyWorld, user: str, **traits: Any) -> None:
    consent = {"email": True}
    world.send(
        {
            "type": "identify",
            "userId": user,
            "traits": {"email": f"{user}@example.com", "consent": consent} | traits,
        }
    )


def _cart(world: JourneyWorld, user: str) -> None:
    world.send({"type": "track", "userId": user, "event": "Product Added"})


def _recipients(sink: Inbox) -> list[str]:
    return sink.recipients()


def test_cart_without_order_gets_one_email_after_an_hour(
    tmp_path: Path, smtp: tuple[Inbox, int]
) -> None:
    sink, port = smtp
    with journey_world(tmp_path / "var", ManualClock(T0)) as world:
        world.email_provider(port)
        world.put_journey(CART_ABANDONMENT)
        _customer(world, "ann")
        _cart(world, "ann")
        world.settle()
        world.advance(timedelta(minutes=59))
        _cart(world, "ann")  # a second cart while waiting: refused, counted
        world.settle()
        world.deliver()
        assert world.outbox() == [] and _recipients(sink) == []
        world.advance(timedelta(minutes=2))
        world.settle()
        world.deliver()
        assert _recipients(sink) == ["ann@example.com"]
        assert b"Subject: Your cart" in sink.raw()[0]
        funnel = world.funnel("cart-abandonment")
        assert funnel["entered"] == 1 and funnel["exited"] == {"completed": 1}
        assert funnel["not_entered"] == {"already_active": 1}
        mail = next(n for n in funnel["nodes"] if n["node"] == "mail")
        assert (mail["entered"], mail["queued"], mail["sent"], mail["resent"]) == (1, 1, 1, 0)
        assert funnel["resent"] == 0
        # Nothing more, however long we wait.
        world.advance(timedelta(days=2))
        world.settle()
        world.deliver()
        assert _recipients(sink) == ["ann@example.com"]


def test_order_within_the_hour_sends_nothing(tmp_path: Path, smtp: tuple[Inbox, int]) -> None:
    sink, port = smtp
    with journey_world(tmp_path / "var", ManualClock(T0)) as world:
        world.email_provider(port)
        world.put_journey(CART_ABANDONMENT)
        _customer(world, "bob")
        _cart(world, "bob")
        world.settle()
        world.advance(timedelta(minutes=30))
        world.send({"type": "track", "userId": "bob", "event": "Order Completed"})
        world.settle()
        world.advance(timedelta(hours=2))
        world.settle()
        world.deliver()
        assert world.outbox() == [] and _recipients(sink) == []
        funnel = world.funnel("cart-abandonment")
        assert funnel["exited"] == {"exit_event": 1}
        assert funnel["converted"] == 1


def test_restart_in_the_middle_of_waits_loses_none_and_fires_none_twice(
    tmp_path: Path, smtp: tuple[Inbox, int]
) -> None:
    sink, port = smtp
    clock = ManualClock(T0)
    data = tmp_path / "var"
    with journey_world(data, clock) as world:
        world.email_provider(port)
        world.put_journey(CART_ABANDONMENT)
        _customer(world, "ann")
        _customer(world, "bob")
        _cart(world, "ann")
        world.settle()
        world.advance(timedelta(minutes=30))
        _cart(world, "bob")
        world.settle()
    # Down while ann's wait falls due; bob's is still ahead.
    clock.advance(timedelta(minutes=40))
    with journey_world(data, clock) as world:
        world.settle()
        world.deliver()
        assert _recipients(sink) == ["ann@example.com"]
        world.advance(timedelta(minutes=25))
        world.settle()
        world.deliver()
        assert _recipients(sink) == ["ann@example.com", "bob@example.com"]
    clock.advance(timedelta(hours=3))
    with journey_world(data, clock) as world:
        world.settle()
        world.deliver()
        assert len(world.outbox()) == 2
        assert _recipients(sink) == ["ann@example.com", "bob@example.com"]
        assert world.funnel("cart-abandonment")["exited"] == {"completed": 2}


def test_consent_withdrawn_mid_journey_skips_the_message(
    tmp_path: Path, smtp: tuple[Inbox, int]
) -> None:
    sink, port = smtp
    with journey_world(tmp_path / "var", ManualClock(T0)) as world:
        world.email_provider(port)
        world.put_journey(CART_ABANDONMENT)
        _customer(world, "cy")
        _cart(world, "cy")
        world.settle()
        world.advance(timedelta(minutes=20))
        world.send({"type": "identify", "userId": "cy", "traits": {"consent": {"email": False}}})
        world.settle()
        world.advance(timedelta(minutes=41))
        world.settle()
        world.deliver()
        assert _recipients(sink) == []
        funnel = world.funnel("cart-abandonment")
        assert funnel["sent"] == 0 and funnel["skipped"] == {"no_consent": 1}


def test_quiet_hours_defer_the_message_to_the_morning(
    tmp_path: Path, smtp: tuple[Inbox, int]
) -> None:
    sink, port = smtp
    evening = datetime(2026, 3, 2, 19, 30, tzinfo=UTC)  # 20:30 in Berlin
    clock = ManualClock(evening)
    with journey_world(tmp_path / "var", clock, channels_quiet_hours=(21, 8)) as world:
        world.email_provider(port)
        world.put_journey(CART_ABANDONMENT)
        _customer(world, "dee", timezone="Europe/Berlin")
        _cart(world, "dee")
        world.settle()
        world.advance(timedelta(hours=1, minutes=1))  # 21:31 in Berlin: quiet
        world.settle()
        world.deliver()
        assert len(world.outbox()) == 1 and _recipients(sink) == []
        world.advance(datetime(2026, 3, 3, 6, 59, tzinfo=UTC) - clock.now())  # 07:59 Berlin
        world.deliver()
        assert _recipients(sink) == []
        world.advance(timedelta(minutes=2))  # 08:01 Berlin
        world.deliver()
        assert _recipients(sink) == ["dee@example.com"]


def test_pause_stops_sends_within_a_second_and_resume_goes_on(
    tmp_path: Path, smtp: tuple[Inbox, int]
) -> None:
    sink, port = smtp
    clock = ManualClock(datetime(2026, 3, 2, 20, 0, tzinfo=UTC))
    # Quiet hours hold the queued message until 08:00, so it is queued, not yet sent,
    # when the journey is paused.
    with journey_world(tmp_path / "var", clock, channels_quiet_hours=(21, 8)) as world:
        world.email_provider(port)
        world.put_journey(CART_ABANDONMENT)
        _customer(world, "eve")
        _cart(world, "eve")
        world.settle()
        world.advance(timedelta(hours=1, minutes=1))
        world.settle()
        world.deliver()
        assert len(world.outbox()) == 1 and _recipients(sink) == []
        world.move("cart-abandonment", "pause")
        time.sleep(0.3)  # the pause reaches every deliverer within 0.25 s
        world.advance(datetime(2026, 3, 3, 8, 1, tzinfo=UTC) - clock.now())
        world.deliver()
        time.sleep(0.5)  # the server's own deliverer had its chance too
        assert _recipients(sink) == []
        world.move("cart-abandonment", "activate")
        time.sleep(0.3)
        world.advance(timedelta(seconds=1))  # the deliverer re-checks a paused row after 0.5 s
        world.deliver()
        assert _recipients(sink) == ["eve@example.com"]


def test_editing_an_active_journey_keeps_profiles_in_flight_on_their_version(
    tmp_path: Path,
) -> None:
    with journey_world(tmp_path / "var", ManualClock(T0)) as world:
        world.put_journey(CART_ABANDONMENT)
        _cart(world, "fay")
        world.settle()
        edited = copy.deepcopy(CART_ABANDONMENT)
        edited["nodes"][2]["template"] = "cart-reminder-2"
        body = world.put_journey(edited)
        assert body["version"] == 2 and body["status"] == "active"
        world.advance(timedelta(minutes=10))
        _cart(world, "gus")
        world.settle()
        world.advance(timedelta(hours=1))
        world.settle()
        sent = {(m["journey_version"], m["template_id"]) for m in world.outbox()}
        assert sent == {(1, "cart-reminder"), (2, "cart-reminder-2")}


def test_invalid_definition_is_422_naming_the_node_path(tmp_path: Path) -> None:
    with journey_world(tmp_path / "var", ManualClock(T0)) as world:
        bad = copy.deepcopy(CART_ABANDONMENT)
        bad["nodes"][1]["condition"]["nodes"][0]["operator"] = "sometimes"
        response = world.server.client.post("/v1/journeys", json=bad, headers=world.server.admin)
        assert response.status_code == 422
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["field"] == "nodes[1].condition.nodes[0].operator"
        bad = copy.deepcopy(CART_ABANDONMENT)
        bad["nodes"][0]["next"] = "nowhere"
        response = world.server.client.post("/v1/journeys", json=bad, headers=world.server.admin)
        assert response.status_code == 422 and response.json()["field"] == "nodes[0].next"


def _dry_run(world: JourneyWorld, journey_id: str, start: datetime) -> dict[str, Any]:
    response = world.server.client.post(
        f"/v1/journeys/{journey_id}/dry-run",
        json={"start": start.isoformat(), "end": world.clock.now().isoformat()},
        headers=world.server.admin,
    )
    assert response.status_code == 200, response.json()
    body: dict[str, Any] = response.json()
    return body


def _sent_before(world: JourneyWorld, key: str, profile_id: str, journey_id: str) -> None:
    """An e-mail a journey really sent now (in the outbox)."""
    with world.runtime.engine.begin() as conn:
        message = OutboxMessage(key, profile_id, "email", "cart-reminder", {}, journey_id)
        enqueue(conn, message, now=world.clock.now())
        conn.execute(
            update(channel_outbox)
            .where(channel_outbox.c.idempotency_key == key)
            .values(status="sent", finished_at=world.clock.now())
        )


REMINDER: dict[str, Any] = {
    "id": "reminder",
    "entry": {"type": "event", "event": "Product Added"},
    "reentry": {"policy": "after", "after": "2h"},
    "max_concurrent": 2,
    "start": "wait",
    "nodes": [
        {"id": "wait", "type": "wait", "duration": "1h", "next": "mail"},
        {"id": "mail", "type": "send", "channel": "email", "template": "cart-reminder"},
    ],
}


def test_dry_run_reports_refused_entries_as_the_runtime_records_them(tmp_path: Path) -> None:
    with journey_world(tmp_path / "var", ManualClock(T0)) as world:
        world.put_journey(REMINDER)
        for user in ("ann", "bob", "cy"):
            _customer(world, user)
        for minute, user in [(0, "ann"), (5, "bob"), (10, "ann"), (20, "cy"), (90, "ann")]:
            world.advance(T0 + timedelta(minutes=minute) - world.clock.now())
            world.settle()  # the timers due by now fire first
            _cart(world, user)
            world.settle()
        for minute, user in [(90, "cy"), (130, "ann")]:
            world.advance(T0 + timedelta(minutes=minute) - world.clock.now())
            world.settle()
            _cart(world, user)
            world.settle()
        world.advance(timedelta(hours=2))
        world.settle()

        report = _dry_run(world, "reminder", T0 - timedelta(minutes=1))
        ann, bob, cy = (world.profile(user_id=u) for u in ("ann", "bob", "cy"))
        at = {m: T0 + timedelta(minutes=m) for m in (0, 5, 10, 20, 90, 130)}
        entrants = [(p, datetime.fromisoformat(t)) for p, t in report["entrants"]]
        assert entrants == [(ann, at[0]), (bob, at[5]), (cy, at[90]), (ann, at[130])]
        refusals = [
            (r["profile_id"], datetime.fromisoformat(r["at"]), r["reason"])
            for r in report["refusals"]
        ]
        assert refusals == [
            (ann, at[10], "already_active"),  # walking the journey
            (cy, at[20], "max_concurrent"),  # ann and bob were in it
            (ann, at[90], "reentry_wait"),  # 2 h since her entry have not passed
        ]
        live = world.funnel("reminder")
        assert (
            report["not_entered"]
            == live["not_entered"]
            == {
                "already_active": 1,
                "max_concurrent": 1,
                "reentry_wait": 1,
            }
        )
        assert report["entered"] == live["entered"] == 4


PROMO: dict[str, Any] = REMINDER | {
    "id": "promo",
    "reentry": {"policy": "after", "after": "1h"},
    "max_concurrent": None,
    "daily_limit": 2,
}


def test_dry_run_blocks_by_consent_then_address_caps_and_daily_limit(tmp_path: Path) -> None:
    caps = {"channels_caps_per_day": {"email": 1}}
    with journey_world(tmp_path / "var", ManualClock(T0), **caps) as world:
        world.put_journey(PROMO, activate=False)
        for user in ("ann", "bob", "eve", "fay"):
            _customer(world, user)
        world.send({"type": "identify", "userId": "cy", "traits": {"consent": {"email": True}}})
        world.send({"type": "identify", "userId": "dan", "traits": {"email": "dan@x.example"}})
        for user in ("ann", "bob", "cy", "dan", "eve", "fay"):
            _cart(world, user)
        world.settle()
        ann, bob, cy, dan, eve, fay = (
            world.profile(user_id=u) for u in ("ann", "bob", "cy", "dan", "eve", "fay")
        )
        world.advance(timedelta(minutes=30))
        # Sent for real: another journey's e-mail to ann counts towards her cap; this
        # journey's own to bob does not (the dry run stands in for it).
        _sent_before(world, "other:ann", ann, "other")
        _sent_before(world, "promo:bob", bob, "promo")
        world.advance(timedelta(minutes=90))
        # After their messages' time: dan consents, eve withdraws; bob carts again.
        world.send({"type": "identify", "userId": "dan", "traits": {"consent": {"email": True}}})
        world.send({"type": "identify", "userId": "eve", "traits": {"consent": {"email": False}}})
        _cart(world, "bob")
        world.advance(timedelta(hours=2))
        world.settle()

        report = _dry_run(world, "promo", T0 - timedelta(minutes=1))
        hour = T0 + timedelta(hours=1)
        blocked = {
            (m["profile_id"], datetime.fromisoformat(m["at"])): m["blocked"]
            for m in report["messages"]
        }
        assert blocked == {
            (ann, hour): "frequency_cap",  # the other journey's e-mail half an hour before
            (bob, hour): None,
            (cy, hour): "no_address",
            (dan, hour): "no_consent",  # not yet given then
            (eve, hour): None,  # not yet withdrawn then
            (fay, hour): "journey_daily_limit",  # bob's and eve's were the day's 2
            (bob, hour + timedelta(hours=2)): "frequency_cap",  # the run's own at 13:00
        }
        assert report["would_send"] == 2
        assert report["blocked"] == {
            "frequency_cap": 2,
            "no_address": 1,
            "no_consent": 1,
            "journey_daily_limit": 1,
        }
        assert report["not_entered"] == {} and report["entered"] == 7
        assert {m["idempotency_key"] for m in world.outbox()} == {"other:ann", "promo:bob"}


def test_dry_run_reports_entries_sends_and_blocks_and_sends_nothing(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    with journey_world(tmp_path / "var", clock) as world:
        draft = world.put_journey(CART_ABANDONMENT, activate=False)
        assert draft["status"] == "draft"
        _customer(world, "ann")
        _customer(world, "bob")
        world.send({"type": "identify", "userId": "cy", "traits": {"email": "cy@example.com"}})
        for user in ("ann", "bob", "cy"):
            _cart(world, user)
        world.advance(timedelta(minutes=30))
        world.send({"type": "track", "userId": "ann", "event": "Order Completed"})
        world.advance(timedelta(days=1))
        world.settle()
        report = _dry_run(world, "cart-abandonment", T0 - timedelta(hours=1))
        assert report["entered"] == 3 and report["not_entered"] == {}
        assert report["exited"] == {"exit_event": 1, "completed": 2}
        assert report["converted"] == 1
        by_profile = {m["profile_id"]: m for m in report["messages"]}
        bob, cy = world.profile(user_id="bob"), world.profile(user_id="cy")
        assert set(by_profile) == {bob, cy}
        assert by_profile[bob]["blocked"] is None
        assert by_profile[bob]["at"].startswith("2026-03-02T13:00:00")
        assert by_profile[cy]["blocked"] == "no_consent"
        assert report["would_send"] == 1 and report["blocked"] == {"no_consent": 1}
        assert world.outbox() == []  # nothing sent, nothing queued


def test_profile_history_and_schema(tmp_path: Path) -> None:
    with journey_world(tmp_path / "var", ManualClock(T0)) as world:
        world.put_journey(CART_ABANDONMENT)
        _cart(world, "ann")
        world.settle()
        world.advance(timedelta(hours=2))
        world.settle()
        pid = world.profile(user_id="ann")
        response = world.server.client.get(
            f"/v1/profiles/{pid}/journeys", headers=world.server.admin
        )
        steps = [(s["kind"], s["node"]) for s in response.json()["steps"]]
        assert steps == [
            ("entered", None),
            ("reached", "wait"),
            ("reached", "ordered"),
            ("reached", "mail"),
            ("exited", "mail"),
        ]
        schema = world.server.client.get("/v1/schema/journey", headers=world.server.admin).json()
        assert schema["title"] == "Journey definition" and "nodes" in schema["properties"]
        audit = world.server.client.get("/v1/audit", headers=world.server.admin).json()
        actions = [e["action"] for e in audit["entries"]]
        assert "journey.create" in actions and "journey.activate" in actions


def test_entering_a_segment_enters_the_journey(tmp_path: Path) -> None:
    with journey_world(tmp_path / "var", ManualClock(T0)) as world:
        world.save(
            {
                "name": "big-carts",
                "entry": "c",
                "nodes": [
                    {"id": "c", "type": "performed", "event": "Product Added",
                     "where": [{"path": "price", "operator": "gt", "value": 100}]}
                ],
            }
        )  # fmt: skip
        world.put_journey(
            {
                "id": "vip",
                "entry": {"type": "segment_entered", "segment": "big-carts"},
                "start": "mail",
                "nodes": [{"id": "mail", "type": "send", "channel": "email", "template": "vip"}],
            }
        )
        world.settle()
        world.send({"type": "track", "userId": "ann", "event": "Product Added",
                    "properties": {"price": 250}})  # fmt: skip
        world.send({"type": "track", "userId": "bob", "event": "Product Added",
                    "properties": {"price": 20}})  # fmt: skip
        world.settle()
        world.settle()
        ann = world.profile(user_id="ann")
        assert [(m["profile_id"], m["template_id"]) for m in world.outbox()] == [(ann, "vip")]


def test_daily_limit_skips_the_journeys_messages_beyond_it(
    tmp_path: Path, smtp: tuple[Inbox, int]
) -> None:
    sink, port = smtp
    with journey_world(tmp_path / "var", ManualClock(T0)) as world:
        world.email_provider(port)
        world.put_journey(CART_ABANDONMENT | {"daily_limit": 1})
        for user in ("ann", "bob"):
            _customer(world, user)
            _cart(world, user)
        world.settle()
        world.advance(timedelta(hours=1, minutes=1))
        world.settle()
        world.deliver()
        assert len(_recipients(sink)) == 1
        funnel = world.funnel("cart-abandonment")
        assert funnel["sent"] == 1 and funnel["skipped"] == {"journey_daily_limit": 1}


def test_an_order_after_logging_in_ends_the_anonymous_cart_walk(tmp_path: Path) -> None:
    anonymous = "a-1"
    # A user whose profile id sorts first, so the merge keeps the user's profile and the
    # walk stays under the anonymous one's id.
    user = next(
        f"u{i}"
        for i in range(1000)
        if profile_id_of((USER_ID, f"u{i}")) < profile_id_of((ANONYMOUS_ID, anonymous))
    )
    with journey_world(tmp_path / "var", ManualClock(T0)) as world:
        world.put_journey(CART_ABANDONMENT)
        world.send({"type": "track", "anonymousId": anonymous, "event": "Product Added"})
        world.settle()
        world.advance(timedelta(minutes=10))
        world.send({"type": "identify", "anonymousId": anonymous, "userId": user})
        world.send({"type": "track", "userId": user, "event": "Order Completed"})
        world.settle()
        world.advance(timedelta(hours=2))
        world.settle()
        assert world.outbox() == []
        funnel = world.funnel("cart-abandonment")
        assert funnel["exited"] == {"exit_event": 1} and funnel["converted"] == 1
