"""Audience removals queued by erasure: what is queued when, what it holds, what becomes
of it (delivered and gone, or a dead letter that stays pending), and that a crash in the
middle of an erasure cannot lose it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, update

from remarket.channels.audiences import AudienceStore
from remarket.channels.dead_letters import add_suppression, dead_letters, replay_dead_letters
from remarket.channels.removals import AudienceRemovals
from remarket.privacy import ConsentLedger
from remarket.privacy.erasers import PERSONAL_TABLES, TableEraser
from remarket.privacy.erasure import Erasure, ErasureRegistry, Identifier, Subject
from remarket.privacy.keyring import Keyring
from remarket.schema.events import as_utc
from remarket.storage.state import channel_outbox
from tests.channels.sinks import HttpSink, http_server
from tests.channels.world import World

ANN = {"email": "Ann@Example.com", "phone": "+44 20 7946 0018"}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


ANN_ROW = [sha("ann@example.com"), sha("442079460018")]


@pytest.fixture
def sink() -> Iterator[HttpSink]:
    with http_server() as server:
        yield server


@pytest.fixture
def world(state_engine: Engine, tmp_path: Path, sink: HttpSink) -> World:
    world = World.make(state_engine, tmp_path, channels_max_attempts=2)
    world.segment("buyers")
    world.provider("meta", access_token="t", base_url=sink.url)
    AudienceStore(world.engine).create(
        "vip", segment="buyers", platform="meta", external_id="42", now=world.clock.now()
    )
    return world


def _erasure(world: World, *first: _Crash) -> Erasure:
    registry = ErasureRegistry(first)
    for table in PERSONAL_TABLES:
        registry.register(TableEraser(world.engine, table))
    registry.inform(AudienceRemovals(world.engine))
    return Erasure(
        world.engine,
        Keyring(world.engine, clock=world.clock),
        registry,
        pii_fields=("email", "phone"),
        clock=world.clock,
    )


def _member(world: World, pid: str, **traits: Any) -> None:
    world.profile(pid, consent=("advertising",), **(traits or ANN))
    world.move("buyers", pid, True)
    AudienceStore(world.engine).sync(now=world.clock.now())


def _removals(world: World) -> list[Any]:
    with world.engine.connect() as conn:
        rows = conn.execute(select(channel_outbox).order_by(channel_outbox.c.id))
        return [r for r in rows if r.variables.get("cause") == "erasure"]


def _erase(world: World, pid: str, *first: _Crash) -> tuple[Erasure, Subject]:
    erasure = _erasure(world, *first)
    subject = erasure.subject([pid])
    erasure.erase(subject, "test")
    return erasure, subject


def test_a_removal_holds_hashes_only_and_goes_once_delivered(world: World, sink: HttpSink) -> None:
    _member(world, "p_ann")
    _member(world, "p_bob", email="bob@example.com")
    world.deliver()
    erasure, subject = _erase(world, "p_ann")

    [row] = _removals(world)
    assert row.status == "pending" and row.profile_id.startswith("erased:")
    assert row.variables["hashed"] == {"schema": ["EMAIL", "PHONE"], "row": ANN_ROW}
    text = json.dumps([row.profile_id, row.idempotency_key, row.variables])
    assert "p_ann" not in text and "ann@" not in text.lower() and "7946" not in text
    assert sum(erasure.residue(subject).values()) == 0
    assert erasure.pending(subject) == {"audiences": 1}

    world.deliver()
    removal = sink.requests[-1]
    assert removal.method == "DELETE"
    assert removal.json()["payload"] == {"schema": ["EMAIL", "PHONE"], "data": [ANN_ROW]}
    assert _removals(world) == [] and erasure.pending(subject) == {"audiences": 0}
    # A second erasure of the same person (nothing left of them) queues nothing.
    assert _erasure(world).erase(subject, "test").counts["queued.audiences"] == 0


def test_an_add_not_yet_sent_is_withdrawn_instead(world: World, sink: HttpSink) -> None:
    _member(world, "p_ann")  # the add is queued, no deliverer has it yet
    # Withdrawn at once, before any store is swept (here: a crash before the first).
    with pytest.raises(RuntimeError, match="killed"):
        _erase(world, "p_ann", _Crash())
    world.deliver()
    assert sink.requests == []  # neither the add nor a removal ever reaches Meta
    erasure, subject = _erase(world, "p_ann")
    assert _removals(world) == [] and erasure.pending(subject) == {"audiences": 0}


def test_an_add_in_flight_is_followed_by_a_removal_after_its_lease(
    world: World, sink: HttpSink
) -> None:
    _member(world, "p_ann")
    lease_until = world.clock.now() + timedelta(seconds=60)
    with world.engine.begin() as conn:  # a deliverer has claimed the add and is sending it
        conn.execute(update(channel_outbox).values(lease_until=lease_until))
    _erase(world, "p_ann")
    [row] = _removals(world)
    assert as_utc(row.due_at) == lease_until
    world.deliver()
    assert sink.requests == []  # not before the add's lease ends
    world.clock.advance(timedelta(seconds=61))
    world.deliver()
    assert [r.method for r in sink.requests] == ["DELETE"]


def test_a_dead_lettered_removal_stays_pending_until_replayed(world: World, sink: HttpSink) -> None:
    _member(world, "p_ann")
    world.deliver()
    sink.respond = lambda _r: (400, {"error": "invalid audience"})  # permanent: dead at once
    erasure, subject = _erase(world, "p_ann")
    world.deliver()
    [dead] = dead_letters(world.engine)
    assert dead.reason == "rejected" and dead.profile_id.startswith("erased:")
    # Hashes only, but not done: reported as pending (never as residue) until it goes out.
    assert erasure.pending(subject) == {"audiences": 1}
    assert sum(erasure.residue(subject).values()) == 0

    sink.respond = lambda _r: (200, {})
    assert replay_dead_letters(world.engine, [dead.id], now=world.clock.now()) == 1
    world.deliver()
    assert [r.method for r in sink.requests][-1] == "DELETE"
    assert erasure.pending(subject) == {"audiences": 0} and _removals(world) == []


def test_removals_pass_every_guard(world: World, sink: HttpSink) -> None:
    _member(world, "p_ann")
    world.deliver()
    # Suppressed on every channel and advertising consent withdrawn: still removed.
    add_suppression(world.engine, "p_ann", "*", "complaint", now=world.clock.now())
    world.clock.advance(timedelta(seconds=1))
    ConsentLedger(world.engine, clock=world.clock).set("p_ann", {"advertising": False}, actor="t")
    AudienceStore(world.engine).sync(now=world.clock.now())
    world.deliver()
    assert [r.method for r in sink.requests] == ["POST", "DELETE"]
    _erase(world, "p_ann")
    world.deliver()
    assert [r.method for r in sink.requests] == ["POST", "DELETE", "DELETE"]


class _Crash:
    """A store whose eraser dies: the process crashes in the middle of the erasure."""

    name = "crash"

    def erase(self, profile_ids: Collection[str], identities: Collection[Identifier]) -> int:
        raise RuntimeError("killed")

    def residue(self, profile_ids: Collection[str], identities: Collection[Identifier]) -> int:
        return 0


def test_a_crash_during_the_erasure_leaves_the_removal_queued(world: World, sink: HttpSink) -> None:
    _member(world, "p_ann")
    world.deliver()
    with pytest.raises(RuntimeError, match="killed"):
        _erase(world, "p_ann", _Crash())  # keys gone, then the crash: never acknowledged
    assert len(_removals(world)) == 1
    # The erasure run again computes the same removal: queued once.
    erasure, subject = _erase(world, "p_ann")
    assert len(_removals(world)) == 1 and erasure.pending(subject) == {"audiences": 1}
    world.deliver()
    assert [r.method for r in sink.requests] == ["POST", "DELETE"]
