"""The segments sink through the state store equals the evaluator, batch and timer alike."""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select

from remarket.clock import ManualClock
from remarket.privacy.erasers import standard_erasers
from remarket.privacy.erasure import Erasure
from remarket.privacy.keyring import Keyring
from remarket.profiles.identity import profile_id_of
from remarket.profiles.store import ProfileStore
from remarket.schema.events import Message, Track, as_utc
from remarket.schema.segment import SegmentDefinition
from remarket.segments.catalog import SegmentCatalog
from remarket.segments.desugar import desugar
from remarket.segments.live import LiveSegments
from remarket.segments.membership import MembershipReader
from remarket.segments.sink import SegmentsSink
from remarket.segments.states import COMBINED
from remarket.storage.state import connect_state, segment_states, segment_timers, upgrade_state
from remarket.storage.warehouse.duckdb import DuckDBWarehouse
from tests.segments.segment_world import (
    BASE,
    REGISTRY,
    World,
    definitions,
    realtime_members,
    worlds,
)


def _as_of(world: World) -> World:
    """The events up to T only (the sink sees what has happened), without scores."""
    kept = [m for m in world.messages if m.timestamp is not None and m.timestamp <= world.at]
    return World(kept, world.at)


@settings(max_examples=40, deadline=None)
@given(
    world=worlds(),
    definition=definitions,
    cuts=st.lists(st.integers(0, 30), max_size=4),
    late=st.booleans(),
)
def test_sink_equals_evaluator(
    world: World, definition: SegmentDefinition, cuts: list[int], late: bool
) -> None:
    """Events in batches (the segment created before them, or backfilled after the first
    batch), then the timers at T: the members are the evaluator's at T."""
    world = _as_of(world)
    expected_core = desugar(definition, resolve=REGISTRY.get)
    with tempfile.TemporaryDirectory() as folder:
        engine = connect_state(f"sqlite:///{Path(folder) / 'state.db'}")
        upgrade_state(engine)
        warehouse = DuckDBWarehouse(None)
        clock = ManualClock(BASE - timedelta(days=1))
        try:
            catalog = SegmentCatalog(engine, clock=clock)
            for used in REGISTRY.values():
                catalog.create(used.model_dump(mode="json"))
            live = LiveSegments(engine, warehouse, clock)
            store = ProfileStore(engine)
            if not late:
                catalog.create(definition.model_dump(mode="json"))
                live.backfill_pending()
            rows = list(enumerate(world.messages, start=1))
            bounds = sorted({0, len(rows), *(min(c, len(rows)) for c in cuts)})
            for k, (lo, hi) in enumerate(itertools.pairwise(bounds)):
                batch = rows[lo:hi]
                store.apply("profiles", batch, hi, expected=lo, mirror=warehouse.upsert_identities)
                warehouse.write_events("test", batch, through=hi, expected=lo)
                latest = max(m.timestamp for _, m in batch if m.timestamp is not None)
                if latest > clock.now():
                    clock.advance(latest - clock.now())
                SegmentsSink(live, chunk=3).apply(batch, hi, lo)  # batches cut in chunks
                if late and k == 0:
                    catalog.create(definition.model_dump(mode="json"))
                    live.backfill_pending()
                live.run_timers()
            if late and not rows:
                catalog.create(definition.model_dump(mode="json"))
                live.backfill_pending()
            clock.advance(world.at - clock.now())
            while live.run_timers():
                pass
            found = {m.profile_id for m in MembershipReader(engine).members("generated", limit=999)}
            with engine.connect() as conn:
                due = conn.scalar(select(segment_timers.c.due_at).order_by("due_at").limit(1))
                loose = conn.scalar(
                    select(segment_states.c.profile_id).where(segment_states.c.segment != COMBINED)
                )
        finally:
            warehouse.close()
            engine.dispose()
    assert due is None or as_utc(due) > world.at  # every due timer has fired
    assert loose is None or late  # the sink writes one row per profile
    assert found == realtime_members(expected_core, world)


def _live_with(
    folder: Path, name: str, node: dict[str, object]
) -> tuple[Engine, DuckDBWarehouse, ManualClock, LiveSegments]:
    """A state store with one live segment of this one node, its sink and its clock."""
    engine = connect_state(f"sqlite:///{folder / 'state.db'}")
    upgrade_state(engine)
    warehouse = DuckDBWarehouse(None)
    clock = ManualClock(BASE)
    definition = {"name": name, "entry": node["id"], "nodes": [node]}
    SegmentCatalog(engine, clock=clock).create(definition)
    live = LiveSegments(engine, warehouse, clock)
    live.backfill_pending()
    return engine, warehouse, clock, live


def test_a_batch_is_applied_in_chunks_each_moving_the_offset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure in the second chunk keeps the first: the offset stops at its last record,
    and applying the rest from there ends where the whole batch would have."""
    node = {"id": "v", "type": "performed", "event": "Product Viewed", "times": 1}
    engine, warehouse, _, live = _live_with(tmp_path, "viewers", node)
    rows = [
        (
            n,
            Track(
                event="Product Viewed",
                anonymous_id=f"a{n}",
                message_id=f"m{n}",
                properties=msgspec.Raw(b"{}"),
                timestamp=BASE,
                received_at=BASE,
            ),
        )
        for n in range(1, 8)
    ]
    ProfileStore(engine).apply("profiles", rows, 9, expected=0, mirror=warehouse.upsert_identities)
    applied = live.apply
    calls: list[int] = []

    def second_fails(batch: Sequence[tuple[int, Message]], through: int, expected: int) -> None:
        calls.append(through)
        if len(calls) == 2:
            raise RuntimeError("crash")
        applied(batch, through, expected)

    monkeypatch.setattr(live, "apply", second_fails)
    with pytest.raises(RuntimeError):
        SegmentsSink(live, chunk=3).apply(rows, 9, 0)
    assert calls == [3, 6]
    assert live.committed() == 3
    monkeypatch.setattr(live, "apply", applied)
    SegmentsSink(live, chunk=3).apply(rows[3:], 9, 3)
    assert live.committed() == 9
    members = MembershipReader(engine).members("viewers", limit=99)
    engine.dispose()
    warehouse.close()
    assert {m.profile_id for m in members} == {
        profile_id_of(("anonymous_id", f"a{n}")) for n in range(1, 8)
    }


def test_a_backfill_timer_fires_into_the_profile_row(tmp_path: Path) -> None:
    """A view backfilled before its 2 h pass: the backfill's timer makes the profile enter
    later, and the profile's own timer takes over (here: the 7 d lookback's end)."""
    engine = connect_state(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade_state(engine)
    warehouse = DuckDBWarehouse(None)
    clock = ManualClock(BASE)
    catalog = SegmentCatalog(engine, clock=clock)
    live = LiveSegments(engine, warehouse, clock)
    view = Track(
        event="Product Viewed",
        anonymous_id="a0",
        message_id="m0",
        properties=msgspec.Raw(b"{}"),
        timestamp=BASE,
        received_at=BASE,
    )
    ProfileStore(engine).apply(
        "profiles", [(1, view)], 1, expected=0, mirror=warehouse.upsert_identities
    )
    warehouse.write_events("test", [(1, view)], through=1, expected=0)
    live.apply([(1, view)], 1, 0)
    node = {"id": "b", "type": "browse_abandoned", "within": "2h", "lookback": "7d"}
    catalog.create({"name": "browsers", "entry": "b", "nodes": [node]})
    assert live.backfill_pending() == ["browsers"]
    reader = MembershipReader(engine)
    assert reader.size("browsers") == 0
    clock.advance(timedelta(days=1))
    assert live.run_timers() == 1
    assert [m.since for m in reader.members("browsers", limit=10)] == [BASE + timedelta(days=1)]
    with engine.connect() as conn:
        timers = conn.execute(select(segment_timers.c.segment, segment_timers.c.due_at)).all()
    engine.dispose()
    warehouse.close()
    assert [(s, as_utc(at)) for s, at in timers] == [(COMBINED, BASE + timedelta(days=7))]


def test_an_erased_profile_starts_again_from_nothing(tmp_path: Path) -> None:
    """The sink caches what the store holds for the profiles it saw: after an erasure,
    the person's next events (same ids, so the same profile id) start from nothing."""
    node = {"id": "o", "type": "performed", "event": "Order Completed", "times": 2}
    engine, warehouse, clock, live = _live_with(tmp_path, "twice", node)
    store = ProfileStore(engine)

    def order(offset: int, visitor: str) -> None:
        message = Track(
            event="Order Completed",
            anonymous_id=visitor,
            message_id=f"m{offset}",
            properties=msgspec.Raw(b"{}"),
            timestamp=clock.now(),
            received_at=clock.now(),
        )
        batch = [(offset, message)]
        store.apply("profiles", batch, offset, expected=offset - 1)
        live.apply(batch, offset, offset - 1)

    order(1, "a0")
    order(2, "b0")
    keyring = Keyring(engine, clock=clock)
    erasure = Erasure(
        engine, keyring, standard_erasers(engine, keyring, warehouse), pii_fields=(), clock=clock
    )
    erasure.erase(erasure.subject(identifiers=[("anonymous_id", "a0")]), "test")
    store.forget()  # as the workers do after an erasure (the profile store caches too)
    order(3, "a0")
    order(4, "b0")
    members = MembershipReader(engine).members("twice", limit=10)
    engine.dispose()
    warehouse.close()
    assert [m.profile_id for m in members] == [profile_id_of(("anonymous_id", "b0"))]
