"""Guards on every send: consent, suppression, caps, journey limits, pauses, quiet hours;
failures retried with backoff, then dead letters that can be replayed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine

from remarket.channels import delivery, delivery_counts
from remarket.channels.dead_letters import add_suppression, dead_letters, replay_dead_letters
from remarket.privacy import ConsentLedger
from tests.channels.sinks import HttpSink, http_server
from tests.channels.world import World


@pytest.fixture
def sms() -> Iterator[HttpSink]:
    with http_server() as sink:
        yield sink


def _world(engine: Engine, tmp_path: Path, sms: HttpSink, **settings: Any) -> World:
    world = World.make(engine, tmp_path, **settings)
    world.provider(
        "twilio", account_sid="AC1", auth_token="tok", sender="+15550001111", base_url=sms.url
    )
    world.template("welcome", "sms", "Hi {{ profile.name }}")
    return world


@pytest.fixture
def world(state_engine: Engine, tmp_path: Path, sms: HttpSink) -> World:
    return _world(state_engine, tmp_path, sms)


def _sent_to(sms: HttpSink) -> list[str]:
    from urllib.parse import parse_qs

    return [parse_qs(r.body.decode())["To"][0] for r in sms.requests]


def test_consent_withdrawn_means_no_send(world: World, sms: HttpSink) -> None:
    world.profile("p_1", consent=("sms",), phone="+15551230001")
    world.profile("p_2", consent=("sms",), phone="+15551230002")
    world.clock.advance(timedelta(seconds=1))
    ConsentLedger(world.engine, clock=world.clock).set("p_2", {"sms": False}, actor="test")
    world.profile("p_3", consent=("email",), phone="+15551230003")  # not for SMS
    for pid in ("p_1", "p_2", "p_3"):
        world.enqueue(f"k-{pid}", pid, "sms", journey_id="j", node_id="n")

    world.deliver()

    assert _sent_to(sms) == ["+15551230001"], [
        (world.row(f"k-{p}").status, world.row(f"k-{p}").reason, world.row(f"k-{p}").last_error)
        for p in ("p_1", "p_2")
    ]
    assert world.row("k-p_2").status == "skipped"
    assert world.row("k-p_2").reason == "no_consent"
    counts = delivery_counts(world.engine, "j")["n"]
    assert (counts.sent, counts.skipped) == (1, {"no_consent": 2})


def test_suppressed_and_addressless_profiles_are_skipped_with_reasons(
    world: World, sms: HttpSink
) -> None:
    world.profile("p_1", consent=("sms",), phone="+15551230001")
    world.profile("p_2", consent=("sms",))
    add_suppression(world.engine, "p_1", "*", "complaint", now=world.clock.now())
    world.enqueue("a", "p_1", "sms")
    world.enqueue("b", "p_2", "sms")
    world.deliver()
    assert sms.requests == []
    assert (world.row("a").reason, world.row("b").reason) == ("suppressed", "no_address")


def test_quiet_hours_defer_in_the_profiles_time_zone(
    state_engine: Engine, tmp_path: Path, sms: HttpSink
) -> None:
    world = _world(state_engine, tmp_path, sms, channels_quiet_hours=(21, 8))
    world.clock.advance(timedelta(hours=9))  # 21:00 UTC; 22:00 in Berlin, 16:00 in New York
    world.profile("p_ber", consent=("sms",), phone="+4930123456", timezone="Europe/Berlin")
    world.profile("p_ny", consent=("sms",), phone="+12125550100", timezone="America/New_York")
    world.enqueue("ber", "p_ber", "sms")
    world.enqueue("ny", "p_ny", "sms")

    world.deliver()
    assert _sent_to(sms) == ["+12125550100"]
    deferred = world.row("ber")
    assert (deferred.status, deferred.reason) == ("pending", "quiet_hours")

    world.clock.advance(timedelta(hours=9, minutes=59))  # 07:59 in Berlin: still quiet
    world.deliver()
    assert len(sms.requests) == 1
    world.clock.advance(timedelta(minutes=1))  # 08:00 in Berlin
    world.deliver()
    assert _sent_to(sms) == ["+12125550100", "+4930123456"]
    assert world.row("ber").status == "sent"


def test_frequency_caps_per_channel_and_global(
    state_engine: Engine, tmp_path: Path, sms: HttpSink
) -> None:
    world = _world(
        state_engine,
        tmp_path,
        sms,
        channels_caps_per_day={"sms": 2},
        channels_caps_per_week={"*": 3},
    )
    world.profile("p_1", consent=("sms",), phone="+15551230001")
    for i in range(3):
        world.enqueue(f"d0-{i}", "p_1", "sms")
    world.deliver()
    assert len(sms.requests) == 2
    assert world.row("d0-2").reason == "frequency_cap"

    world.clock.advance(timedelta(days=1, seconds=1))
    for i in range(2):
        world.enqueue(f"d1-{i}", "p_1", "sms")
    world.deliver()
    assert len(sms.requests) == 3  # the weekly cap of 3 over all channels
    assert world.row("d1-1").reason == "frequency_cap"

    world.clock.advance(timedelta(days=7))
    world.enqueue("d8", "p_1", "sms")
    world.deliver()
    assert len(sms.requests) == 4


def test_journey_daily_limit_and_pause(world: World, sms: HttpSink) -> None:
    world.limits["j1"] = 2
    for i in range(4):
        world.profile(f"p_{i}", consent=("sms",), phone=f"+1555123000{i}")
        world.enqueue(f"j1-{i}", f"p_{i}", "sms", journey_id="j1", node_id="send")
    world.paused.add("j2")
    world.enqueue("j2-0", "p_0", "sms", journey_id="j2", node_id="send")

    world.deliver()

    assert len(sms.requests) == 2
    counts = delivery_counts(world.engine, "j1")["send"]
    assert (counts.sent, counts.skipped) == (2, {"journey_daily_limit": 2})
    paused = world.row("j2-0")
    assert (paused.status, paused.reason, paused.attempts) == ("pending", "paused", 0)

    world.paused.clear()
    world.clock.advance(timedelta(seconds=1))
    world.deliver()
    assert world.row("j2-0").status == "sent"


def test_journey_daily_limit_holds_when_sends_finish_while_the_count_is_read(
    world: World, sms: HttpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A send recorded and released while another reservation reads the day's count must
    still be counted once: a slow read widens the window a CI run once hit by chance."""
    real = delivery.journey_sent_today

    def slow(conn: Connection, journey_id: str, now: datetime) -> int:
        sent = real(conn, journey_id, now)
        time.sleep(0.05)
        return sent

    monkeypatch.setattr(delivery, "journey_sent_today", slow)
    world.limits["j1"] = 2
    for i in range(6):
        world.profile(f"p_{i}", consent=("sms",), phone=f"+1555123000{i}")
        world.enqueue(f"j1-{i}", f"p_{i}", "sms", journey_id="j1", node_id="send")

    world.deliver()

    assert len(sms.requests) == 2
    counts = delivery_counts(world.engine, "j1")["send"]
    assert (counts.sent, counts.skipped) == (2, {"journey_daily_limit": 4})


def test_failures_back_off_then_dead_letter_then_replay_sends_once(
    state_engine: Engine, tmp_path: Path, sms: HttpSink
) -> None:
    world = _world(state_engine, tmp_path, sms, channels_max_attempts=3, channels_backoff_s=10)
    sms.respond = lambda _r: (503, {"message": "busy"})
    world.profile("p_1", consent=("sms",), phone="+15551230001")
    world.enqueue("k", "p_1", "sms")

    world.deliver()
    first = world.row("k")
    assert (first.status, first.reason, first.failures) == ("pending", "retrying", 1)
    delay = (
        first.due_at.replace(tzinfo=None) - world.clock.now().replace(tzinfo=None)
    ).total_seconds()
    assert 5 <= delay <= 10  # half the first step at least, all of it at most
    world.clock.advance(timedelta(seconds=10))
    world.deliver()
    second = world.row("k")
    delay = (
        second.due_at.replace(tzinfo=None) - world.clock.now().replace(tzinfo=None)
    ).total_seconds()
    assert 10 <= delay <= 20
    world.clock.advance(timedelta(seconds=20))
    world.deliver()
    assert (world.row("k").status, world.row("k").reason) == ("dead", "attempts_exhausted")
    assert len(sms.requests) == 3
    [letter] = dead_letters(world.engine)
    assert letter.idempotency_key == "k" and "503" in (letter.last_error or "")

    sms.respond = lambda _r: (201, {"sid": "SM1"})
    assert replay_dead_letters(world.engine, [letter.id], now=world.clock.now()) == 1
    world.deliver()
    world.deliver()
    assert world.row("k").status == "sent"
    assert len(sms.requests) == 4
    assert dead_letters(world.engine) == []


def test_a_permanent_rejection_is_a_dead_letter_at_once(world: World, sms: HttpSink) -> None:
    sms.respond = lambda _r: (400, {"code": 21211, "message": "invalid To"})
    world.profile("p_1", consent=("sms",), phone="+15551230001")
    world.enqueue("k", "p_1", "sms")
    world.deliver()
    assert (world.row("k").status, world.row("k").reason) == ("dead", "rejected")
