"""Real-time evaluator: window edges, late events, zones, timers, merges and state size."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings

from remarket.schema.events import Identify, Message, Track
from remarket.schema.segment import parse_segment
from remarket.segments.compile import compile_segment
from remarket.segments.desugar import desugar
from remarket.segments.matchers import view_of
from remarket.segments.realtime import RealtimeSegment
from remarket.segments.values import micros_of
from remarket.storage.warehouse.duckdb import DuckDBWarehouse
from tests.segments.segment_world import REGISTRY, World, definitions, realtime_states, worlds

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _segment(node: dict[str, Any]) -> RealtimeSegment:
    return RealtimeSegment(
        desugar(parse_segment({"name": "s", "entry": "a", "nodes": [{**node, "id": "a"}]}))
    )


def _track(name: str, at: datetime, n: int, **props: Any) -> Track:
    raw = msgspec.Raw(json.dumps(props).encode())
    return Track(
        event=name, properties=raw, timestamp=at, message_id=f"m{n}", user_id="u", received_at=at
    )


def _run(seg: RealtimeSegment, messages: list[Message]) -> list[Any]:
    state = seg.new_state()
    now = min(m.timestamp for m in messages if m.timestamp is not None)
    for m in messages:
        assert m.timestamp is not None
        now = max(now, m.timestamp)
        seg.apply(state, view_of(m), now)
    return state


def _duckdb_agrees(seg: RealtimeSegment, messages: list[Message], at: datetime) -> bool:
    wh = DuckDBWarehouse(None)
    try:
        wh.write_events("t", list(enumerate(messages, 1)), through=len(messages), expected=0)
        wh.upsert_identities([("user_id", "u", "p")])
        return bool(wh.query(compile_segment(seg.segment, at)))
    finally:
        wh.close()


EDGES = [
    # (name, node, event offsets from T0 in minutes, evaluate at minutes, member?)
    ("last-1h-event-at-start-excluded", {"window": {"last": "1h"}}, [0], 60, False),
    ("last-1h-event-just-inside", {"window": {"last": "1h"}}, [1], 60, True),
    ("last-1h-event-at-T-included", {"window": {"last": "1h"}}, [60], 60, True),
    (
        "absolute-start-excluded",
        {"window": {"start": "2026-03-01T00:00:00Z", "end": "2026-03-01T01:00:00Z"}},
        [0],
        120,
        False,
    ),
    (
        "absolute-end-included",
        {"window": {"start": "2026-03-01T00:00:00Z", "end": "2026-03-01T01:00:00Z"}},
        [60],
        120,
        True,
    ),
    ("at-least-2-late-event", {"times": 2, "window": {"last": "1d"}}, [50, 10], 60, True),
    ("exactly-1-but-2", {"operator": "exactly", "times": 1}, [5, 10], 60, False),
    ("never-after-window", {"operator": "never", "window": {"last": "30m"}}, [0], 30, True),
]


@pytest.mark.parametrize(
    ("node", "offsets", "at", "member"),
    [(n, o, a, m) for _, n, o, a, m in EDGES],
    ids=[e[0] for e in EDGES],
)
def test_window_edges(node: dict[str, Any], offsets: list[int], at: int, member: bool) -> None:
    seg = _segment({"type": "performed", "event": "E", **node})
    messages: list[Message] = [
        _track("E", T0 + timedelta(minutes=m), i) for i, m in enumerate(offsets)
    ]
    state = _run(seg, messages)
    when = T0 + timedelta(minutes=at)
    assert seg.is_member(state, "p", when) is member
    assert _duckdb_agrees(seg, messages, when) is member


@pytest.mark.parametrize(
    "zone",
    [UTC, timezone(timedelta(hours=9)), timezone(timedelta(hours=-3, minutes=-30))],
    ids=["utc", "plus9", "minus3h30"],
)
def test_event_zone_does_not_matter(zone: timezone) -> None:
    seg = _segment({"type": "performed", "event": "E", "window": {"last": "1h"}})
    state = _run(seg, [_track("E", (T0 + timedelta(minutes=1)).astimezone(zone), 0)])
    assert seg.is_member(state, "p", T0 + timedelta(minutes=60))
    assert not seg.is_member(state, "p", T0 + timedelta(minutes=61))


def test_cart_abandonment_timer_fires_an_hour_after_the_cart() -> None:
    seg = _segment({"type": "cart_abandoned", "within": "1h", "lookback": "7d"})
    state = _run(seg, [_track("Product Added", T0, 0)])
    assert not seg.is_member(state, "p", T0 + timedelta(minutes=59))
    assert seg.next_change(state, T0) == T0 + timedelta(hours=1)
    assert seg.is_member(state, "p", T0 + timedelta(hours=1))
    assert seg.next_change(state, T0 + timedelta(hours=1)) == T0 + timedelta(days=7)
    assert not seg.is_member(state, "p", T0 + timedelta(days=7))


def test_order_within_the_hour_is_not_abandonment() -> None:
    seg = _segment({"type": "cart_abandoned"})
    messages: list[Message] = [
        _track("Order Completed", T0 + timedelta(minutes=60), 1),
        _track("Product Added", T0, 0),
    ]
    assert not seg.is_member(_run(seg, messages), "p", T0 + timedelta(hours=2))


def test_trait_last_write_wins_by_timestamp_then_message_id() -> None:
    seg = _segment({"type": "trait", "path": "plan", "operator": "eq", "value": "pro"})

    def identify(plan: str, at: datetime, mid: str) -> Identify:
        raw = msgspec.Raw(json.dumps({"plan": plan}).encode())
        return Identify(traits=raw, timestamp=at, message_id=mid, user_id="u", received_at=at)

    late_old = [identify("pro", T0 + timedelta(hours=1), "m1"), identify("free", T0, "m2")]
    assert seg.is_member(_run(seg, list(late_old)), "p", T0 + timedelta(hours=2))
    tie = [identify("pro", T0, "m9"), identify("free", T0, "m1")]
    assert seg.is_member(_run(seg, list(tie)), "p", T0)


@pytest.mark.parametrize(
    "node",
    [
        {"type": "performed", "event": "E", "times": 2, "window": {"last": "1d"}},
        {
            "type": "aggregate",
            "event": "E",
            "function": "sum",
            "property": "v",
            "window": {"last": "1d"},
            "operator": "gte",
            "value": 3,
        },
        {
            "type": "aggregate",
            "event": "E",
            "function": "count_distinct",
            "property": "v",
            "operator": "gte",
            "value": 2,
        },
        {"type": "sequence", "first": {"event": "E"}, "then": {"event": "F"}, "within": "1h"},
        {"type": "last_performed", "event": "E", "operator": "within_last", "value": "1h"},
    ],
    ids=["performed", "sum-window", "count-distinct", "sequence", "last-performed"],
)
def test_merge_equals_one_profile(node: dict[str, Any]) -> None:
    seg = _segment(node)
    events: list[Message] = [
        _track("E", T0, 0, v=1),
        _track("F", T0 + timedelta(minutes=30), 1, v=2),
        _track("E", T0 + timedelta(minutes=40), 2, v=2),
    ]
    at = T0 + timedelta(minutes=50)
    whole = _run(seg, events)
    merged = seg.merge(_run(seg, events[:1]), _run(seg, events[1:]))
    assert seg.is_member(merged, "p", at) == seg.is_member(whole, "p", at)
    assert seg.encode(merged) == seg.encode(whole)


def test_state_size_of_a_typical_profile() -> None:
    seg = _segment({"type": "category_interest", "category": "shoes"})
    events: list[Message] = [
        _track("Product Viewed", T0 + timedelta(hours=i), i, category="shoes") for i in range(50)
    ]
    state = _run(seg, events)
    # Bounded: N+1 timestamps per window count however many events the profile sent.
    assert len(seg.encode(state)) < 64


def _recent(event: str, hours: int, operator: str = "at_least") -> dict[str, Any]:
    """``event`` at least once (or, with "at_most", never) in the last ``hours``."""
    times = 1 if operator == "at_least" else 0
    return {"type": "performed", "event": event, "operator": operator, "times": times} | {
        "window": {"last": f"{hours}h"}
    }


_NEVER_1H, _NEVER_2H = _recent("E", 1, "at_most"), _recent("F", 2, "at_most")
_EVER_G = {"type": "performed", "event": "G"}
DECISIONS = [
    # (name, entry node type, the two parts, member at T0, hours to the decided edge)
    ("and-true-first-part-to-expire", "and", [_recent("E", 1), _recent("F", 2)], True, 1),
    ("or-true-until-its-true-part-moves", "or", [_recent("E", 1), _recent("F", 2)], True, 1),
    ("and-false-until-its-false-part-moves", "and", [_NEVER_1H, _NEVER_2H], False, 1),
    ("and-false-not-moved-by-a-true-part", "and", [_recent("E", 1), _NEVER_2H], False, 2),
    ("and-false-part-without-edge", "and", [_recent("E", 1), _EVER_G], False, None),
    ("or-false-first-part-to-change", "or", [{"type": "not", "child": "x"}, _NEVER_2H], False, 1),
]


@pytest.mark.parametrize(
    ("node_type", "parts", "member", "hours"),
    [pytest.param(*case[1:], id=case[0]) for case in DECISIONS],
)
def test_decided_edge_is_the_first_that_can_move_the_entry(
    node_type: str, parts: list[dict[str, Any]], member: bool, hours: int | None
) -> None:
    """E and F at T0: the membership at T0 and the first instant it may change."""
    nodes = [{"id": "r", "type": node_type, "children": ["a", "b"]}]
    nodes += [{**part, "id": i} for i, part in zip("ab", parts, strict=True)]
    nodes.append({**_recent("E", 1), "id": "x"})
    seg = RealtimeSegment(desugar(parse_segment({"name": "s", "entry": "r", "nodes": nodes})))
    state = _run(seg, [_track("E", T0, 0), _track("F", T0, 1)])
    edge = seg.decide_at(state, "p", micros_of(T0))
    assert edge == (member, None if hours is None else micros_of(T0 + timedelta(hours=hours)))


@settings(max_examples=150, deadline=None)
@given(world=worlds(), definition=definitions)
def test_membership_holds_until_the_decided_edge(world: World, definition: Any) -> None:
    """decide_at: the membership at T, unchanged (with no event) until the instant it
    gives, which is never before the first edge of any leaf (next_change_at). Membership
    can only change at a leaf's edge, so it is checked at each of them up to there."""
    seg, states = realtime_states(desugar(definition, resolve=REGISTRY.get), world)
    at = micros_of(world.at)
    for pid, state in states.items():
        member, edge = seg.decide_at(state, pid, at)
        assert member == seg.member_at(state, pid, at)
        t: int | None = seg.next_change_at(state, at)
        assert edge is None or (t is not None and at < t <= edge)
        while t is not None and (edge is None or t < edge):
            assert seg.member_at(state, pid, t) == member
            t = seg.next_change_at(state, t)
