"""Profiles in the state store: merges are idempotent, order-independent and match the reference."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, select

from remarket.errors import OffsetConflict
from remarket.profiles import IdentityGraph, ProfileStore, identifiers_of
from remarket.schema.events import Alias, Identify, Message, Track
from remarket.storage.state import (
    consumer_offsets,
    identities,
    metadata,
    profile_traits,
    profiles,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
ANON = [f"a{i}" for i in range(6)]
USERS = [f"u{i}" for i in range(4)]
EMAILS = ["ann@example.com", "bob@example.com", "ANN@example.com "]


@pytest.fixture
def engine(state_engine: Engine) -> Engine:
    return state_engine


def reset(engine: Engine) -> None:
    with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(delete(table))


@st.composite
def messages(draw: st.DrawFn) -> list[Message]:
    count = draw(st.integers(1, 25))
    out: list[Message] = []
    for n in range(count):
        kind = draw(st.sampled_from(["track", "identify", "alias"]))
        ts = T0 + timedelta(minutes=draw(st.integers(0, 5)))  # few values: ties happen
        anon = draw(st.sampled_from([None, *ANON]))
        user = draw(st.sampled_from([None, *USERS]))
        if anon is None and user is None:
            anon = ANON[0]
        common: dict[str, Any] = {"message_id": f"m{n:03d}", "timestamp": ts}
        if kind == "track":
            out.append(Track(event="Viewed", anonymous_id=anon, user_id=user, **common))
        elif kind == "identify":
            traits: dict[str, Any] = {"plan": draw(st.sampled_from(["free", "pro", None]))}
            if draw(st.booleans()):
                traits["email"] = draw(st.sampled_from(EMAILS))
            raw = msgspec.Raw(msgspec.json.encode(traits))
            out.append(Identify(anonymous_id=anon, user_id=user, traits=raw, **common))
        else:
            previous = draw(st.sampled_from(ANON + USERS))
            out.append(Alias(previous_id=previous, user_id=draw(st.sampled_from(USERS)), **common))
    return out


def apply_in_batches(engine: Engine, rows: list[Message], seed: int) -> ProfileStore:
    store = ProfileStore(engine)
    rng = random.Random(seed)
    offset = 0
    while offset < len(rows):
        size = rng.randint(1, 6)
        chunk = [(offset + i + 1, m) for i, m in enumerate(rows[offset : offset + size])]
        offset += len(chunk)
        store.apply("profiles", chunk, offset, expected=offset - len(chunk))
    return store


def live_state(engine: Engine) -> dict[str, Any]:
    """Everything about live profiles; merged-away rows depend on history, not on the person."""
    with engine.connect() as conn:
        live = conn.execute(
            select(
                profiles.c.profile_id,
                profiles.c.event_count,
                profiles.c.first_seen,
                profiles.c.last_seen,
            )
            .where(profiles.c.merged_into.is_(None))
            .order_by(profiles.c.profile_id)
        ).all()
        ids = conn.execute(select(identities).order_by(identities.c.kind, identities.c.value)).all()
        traits = conn.execute(
            select(
                profile_traits.c.profile_id, profile_traits.c.key, profile_traits.c.value
            ).order_by(profile_traits.c.profile_id, profile_traits.c.key)
        ).all()
    return {
        "profiles": [tuple(r) for r in live],
        "ids": [tuple(r) for r in ids],
        "traits": [tuple(r) for r in traits],
    }


def reference(
    rows: list[Message],
) -> tuple[IdentityGraph, dict[str, int], dict[tuple[str, str], Any]]:
    graph = IdentityGraph()
    for m in rows:
        graph.link(identifiers_of(m))
    counts: dict[str, int] = {}
    best: dict[tuple[str, str], tuple[datetime, str, Any]] = {}
    for m in rows:
        pid = graph.profile_of(identifiers_of(m)[0])
        counts[pid] = counts.get(pid, 0) + 1
        if isinstance(m, Identify):
            for key, value in msgspec.json.decode(m.traits).items():
                assert m.timestamp is not None and m.message_id is not None
                candidate = (m.timestamp, m.message_id, value)
                if (pid, key) not in best or candidate[:2] > best[(pid, key)][:2]:
                    best[(pid, key)] = candidate
    return graph, counts, {k: v[2] for k, v in best.items()}


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=messages(), seed=st.integers(0, 1000))
def test_any_order_and_batching_gives_the_same_profiles(
    engine: Engine, rows: list[Message], seed: int
) -> None:
    reset(engine)
    apply_in_batches(engine, rows, seed)
    first = live_state(engine)
    reset(engine)
    shuffled = rows[:]
    random.Random(seed).shuffle(shuffled)
    apply_in_batches(engine, shuffled, seed + 1)
    assert live_state(engine) == first


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=messages(), seed=st.integers(0, 1000))
def test_profiles_match_the_reference_identity_graph(
    engine: Engine, rows: list[Message], seed: int
) -> None:
    reset(engine)
    store = apply_in_batches(engine, rows, seed)
    graph, counts, traits = reference(rows)
    state = live_state(engine)
    assert {(k, v): pid for k, v, pid in state["ids"]} == {
        i: graph.profile_of(i) for i in graph.identifiers()
    }
    assert {pid: n for pid, n, _, _ in state["profiles"]} == counts
    assert {(pid, key): value for pid, key, value in state["traits"]} == traits
    for pid in counts:
        view = store.get(pid)
        assert view is not None and view.event_count == counts[pid]


def test_applying_advances_the_offset_atomically(engine: Engine) -> None:
    store = ProfileStore(engine)
    store.apply(
        "profiles",
        [(1, Track(event="A", anonymous_id="a", message_id="m1", timestamp=T0))],
        5,
        expected=0,
    )
    assert store.committed("profiles") == 5
    with engine.connect() as conn:
        assert conn.scalar(select(consumer_offsets.c.offset)) == 5


def test_a_failed_batch_changes_nothing(engine: Engine) -> None:
    store = ProfileStore(engine)
    good = Track(event="A", anonymous_id="a", message_id="m1", timestamp=T0)
    bad = Track(event="B", anonymous_id="b", message_id="m2", timestamp=None)  # no timestamp
    with pytest.raises(ValueError, match="no timestamp"):
        store.apply("profiles", [(1, good), (2, bad)], 2, expected=0)
    assert store.committed("profiles") == 0
    assert store.count() == 0
    store.apply("profiles", [(1, good)], 1, expected=0)
    assert store.count() == 1


def test_a_merged_profile_id_resolves_to_the_survivor(engine: Engine) -> None:
    store = ProfileStore(engine)
    store.apply(
        "p",
        [(1, Track(event="A", anonymous_id="a1", message_id="m1", timestamp=T0))],
        1,
        expected=0,
    )
    early = store.find(("anonymous_id", "a1"))
    store.apply(
        "p",
        [(2, Track(event="A", anonymous_id="a2", message_id="m2", timestamp=T0))],
        2,
        expected=1,
    )
    store.apply(
        "p",
        [(3, Identify(anonymous_id="a1", user_id="u", message_id="m3", timestamp=T0))],
        3,
        expected=2,
    )
    store.apply(
        "p",
        [(4, Identify(anonymous_id="a2", user_id="u", message_id="m4", timestamp=T0))],
        4,
        expected=3,
    )
    assert early is not None
    survivor = store.find(("user_id", "u"))
    assert store.resolve(early) == survivor
    view = store.get(survivor or "")
    assert view is not None and view.event_count == 4
    assert store.count() == 1


def test_two_workers_on_one_consumer_never_apply_a_batch_twice(engine: Engine) -> None:
    first, second = ProfileStore(engine), ProfileStore(engine)
    batch = [(1, Track(event="A", anonymous_id="a", message_id="m1", timestamp=T0))]
    first.apply("profiles", batch, 1, expected=0)
    with pytest.raises(OffsetConflict):
        second.apply("profiles", batch, 1, expected=0)
    view = first.get(first.find(("anonymous_id", "a")) or "")
    assert view is not None and view.event_count == 1


def test_a_restarted_store_finds_the_identities_stored_before(engine: Engine) -> None:
    ProfileStore(engine).apply(
        "profiles",
        [(1, Track(event="A", anonymous_id="a1", message_id="m1", timestamp=T0))],
        1,
        expected=0,
    )
    restarted = ProfileStore(engine)
    restarted.apply(
        "profiles",
        [(2, Identify(anonymous_id="a1", user_id="u1", message_id="m2", timestamp=T0))],
        2,
        expected=1,
    )
    profile = restarted.find(("anonymous_id", "a1"))
    assert profile is not None and restarted.find(("user_id", "u1")) == profile
    view = restarted.get(profile)
    assert view is not None and view.event_count == 2
    assert restarted.count() == 1


def test_an_erased_identifier_that_comes_back_makes_a_new_profile(engine: Engine) -> None:
    store = ProfileStore(engine)
    first = [(1, Track(event="A", anonymous_id="a1", message_id="m1", timestamp=T0))]
    store.apply("profiles", first, 1, expected=0)
    with engine.begin() as conn:  # what erasure does to these tables
        conn.execute(delete(identities))
        conn.execute(delete(profiles))
    store.forget()
    again = [(2, Track(event="B", anonymous_id="a1", message_id="m2", timestamp=T0))]
    store.apply("profiles", again, 2, expected=1)
    view = store.get(store.find(("anonymous_id", "a1")) or "")
    assert view is not None and view.event_count == 1


def test_the_mirror_gets_repointed_rows_then_new_rows(engine: Engine) -> None:
    store = ProfileStore(engine)
    calls: list[list[tuple[str, str, str]]] = []
    store.apply(
        "profiles",
        [
            (1, Track(event="A", anonymous_id="a1", message_id="m1", timestamp=T0)),
            (2, Track(event="A", anonymous_id="a2", message_id="m2", timestamp=T0)),
        ],
        2,
        expected=0,
        mirror=calls.append,
    )
    assert [sorted(rows) for rows in calls] == [
        [
            ("anonymous_id", "a1", store.find(("anonymous_id", "a1")) or ""),
            ("anonymous_id", "a2", store.find(("anonymous_id", "a2")) or ""),
        ]
    ]
    calls.clear()
    link = Identify(anonymous_id="a1", user_id="u", message_id="m3", timestamp=T0)
    link2 = Identify(anonymous_id="a2", user_id="u", message_id="m4", timestamp=T0)
    store.apply("profiles", [(3, link), (4, link2)], 4, expected=2, mirror=calls.append)
    survivor = store.find(("user_id", "u"))
    moved, added = calls
    # One of the two visitor profiles is merged into the other (or both into the user's).
    assert moved and all(pid == survivor for _, _, pid in moved)
    assert added == [("user_id", "u", survivor)]
    with engine.connect() as conn:
        stored = set(conn.execute(select(identities)).all())
    assert {tuple(r) for r in moved + added} <= stored
