"""The interpreter and the definitions: properties over random journeys, exact rules."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from remarket.journeys.interpreter import Plan, Position, advance, next_local_time, split_arm
from remarket.schema.journey import SplitNode, parse_journey
from remarket.schema.segment import DefinitionError

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
_CONDITION = {
    "entry": "t",
    "nodes": [{"id": "t", "type": "trait", "path": "plan", "operator": "eq", "value": "pro"}],
}


def _node(kind: str, node_id: str, after: list[str]) -> dict[str, Any]:
    """A node of ``kind`` whose ways out go to nodes in ``after`` (later ones: acyclic)."""
    pick = after[0] if after else None
    other = after[-1] if after else None
    if kind == "wait":
        return {"id": node_id, "type": "wait", "duration": "1h", "next": pick}
    if kind == "wait_event":
        return {"id": node_id, "type": "wait", "until_event": {"event": "E"}, "timeout": "1d"} | {
            "next": pick,
            "on_timeout": other,
        }
    if kind == "branch":
        return {"id": node_id, "type": "branch", "condition": _CONDITION} | {
            "then": pick,
            "else": other,
        }
    if kind == "split":
        arms = [{"name": "a", "weight": 1, "next": pick}, {"name": "b", "weight": 2, "next": other}]
        return {"id": node_id, "type": "split", "arms": arms}
    if kind == "holdout":
        return {"id": node_id, "type": "holdout", "percent": 20, "next": pick}
    if kind == "send":
        return {"id": node_id, "type": "send", "channel": "email", "template": "t", "next": pick}
    if kind == "trait":
        return {"id": node_id, "type": "update_trait", "trait": "x", "value": 1, "next": pick}
    if kind == "audience":
        return {"id": node_id, "type": "audience", "audience": "a", "op": "add", "next": pick}
    return {"id": node_id, "type": "exit"}


_KINDS = ["wait", "wait_event", "branch", "split", "holdout", "send", "trait", "audience", "exit"]


@st.composite
def journeys(draw: st.DrawFn) -> dict[str, Any]:
    kinds = draw(st.lists(st.sampled_from(_KINDS), min_size=1, max_size=12))
    ids = [f"n{i}" for i in range(len(kinds))]
    nodes = []
    for i, kind in enumerate(kinds):
        later = ids[i + 1 :]
        targets = draw(st.lists(st.sampled_from(later), max_size=2)) if later else []
        nodes.append(_node(kind, ids[i], targets))
    return {"id": "j", "entry": {"type": "event", "event": "E0"}, "start": "n0", "nodes": nodes}


@settings(max_examples=150, deadline=None)
@given(journeys(), st.text(alphabet="abcdef0123456789", min_size=1, max_size=8), st.booleans())
def test_every_walk_ends_or_waits_and_each_node_runs_once(
    data: dict[str, Any], pid: str, answer: bool
) -> None:
    plan = Plan(parse_journey(data))
    position = Position(plan.start)
    now = T0
    reached: list[str] = []
    for _ in range(len(plan.nodes) + 2):
        answers = dict.fromkeys(plan.conditions, answer)
        outcome = advance(plan, f"p_{pid}", position, now, answers=answers)
        assert outcome.needs is None
        reached += [e.node for e in outcome.effects if e.kind == "reached" and e.node]
        if position.status == "exited":
            break
        assert position.phase == "wait" and position.due_at is not None
        # Asked again before it is due, a waiting walk does nothing.
        assert advance(plan, f"p_{pid}", position, now, answers=answers).effects == []
        now = position.due_at
    assert position.status == "exited"
    assert len(reached) == len(set(reached))  # acyclic: no node twice
    again = Position(plan.start)
    first = advance(plan, f"p_{pid}", again, T0, answers=dict.fromkeys(plan.conditions, answer))
    replay = Position(plan.start)
    second = advance(plan, f"p_{pid}", replay, T0, answers=dict.fromkeys(plan.conditions, answer))
    assert first.effects == second.effects and again == replay  # deterministic


def test_a_branch_without_an_answer_asks_for_one() -> None:
    data = {
        "id": "j",
        "entry": {"type": "event", "event": "E"},
        "start": "b",
        "nodes": [_node("branch", "b", ["s"]), _node("send", "s", [])],
    }
    plan = Plan(parse_journey(data))
    position = Position("b")
    outcome = advance(plan, "p_1", position, T0)
    assert outcome.needs == "b" and outcome.effects == [] and position.node == "b"
    outcome = advance(plan, "p_1", position, T0, answers={"b": True})
    assert [e.kind for e in outcome.effects] == ["reached", "reached", "message", "exited"]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=20), min_size=2, max_size=5))
def test_split_follows_the_weights_and_is_stable(weights: list[int]) -> None:
    node = SplitNode.model_validate(
        {
            "id": "s",
            "type": "split",
            "arms": [{"name": f"a{i}", "weight": w} for i, w in enumerate(weights)],
        }
    )
    n = 4000
    counts = Counter(split_arm(node, "j", f"p_{i}") for i in range(n))
    total = sum(weights)
    for i, w in enumerate(weights):
        expected = n * w / total
        assert abs(counts[f"a{i}"] - expected) < 5 * (expected**0.5) + 5
    assert all(split_arm(node, "j", f"p_{i}") == split_arm(node, "j", f"p_{i}") for i in range(50))


@settings(max_examples=200, deadline=None)
@given(
    st.datetimes(
        min_value=datetime(2025, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC)
    ),
    st.sampled_from(["00:00", "02:30", "09:00", "23:59"]),
    st.sampled_from(["Europe/Berlin", "America/New_York", "Asia/Kolkata", None, "Not/AZone"]),
)
def test_next_local_time_is_the_next_such_wall_clock_time(
    now: datetime, hhmm: str, zone: str | None
) -> None:
    due = next_local_time(now, hhmm, zone)
    assert now < due <= now + timedelta(hours=25)
    if zone in ("Asia/Kolkata", None, "Not/AZone"):  # no clock changes
        from zoneinfo import ZoneInfo

        tz = ZoneInfo(zone if zone == "Asia/Kolkata" else "UTC")
        assert due.astimezone(tz).strftime("%H:%M") == hhmm
        assert due - now <= timedelta(hours=24)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d["nodes"].append(dict(d["nodes"][0])), "nodes[3].id"),
        (lambda d: d["nodes"][2].update(next="wait"), "nodes[0]"),
        (lambda d: d["nodes"][0].update(until_time="25:00"), "nodes[0].until_time"),
        (lambda d: d["nodes"][0].update(until_time="09:00"), "nodes[0]"),
        (lambda d: d.update(reentry={"policy": "after"}), "reentry"),
        (lambda d: d.update(start="nope"), "start"),
        (lambda d: d.update(entry={"type": "event"}), "entry.event"),
        (lambda d: d["nodes"][1].update(channel="fax"), "nodes[1].channel"),
    ],
    ids=["duplicate-id", "cycle", "bad-time", "two-wait-kinds", "reentry", "start", "entry",
         "channel"],
)  # fmt: skip
def test_invalid_definitions_name_the_field(change: Any, field: str) -> None:
    data: dict[str, Any] = {
        "id": "j",
        "entry": {"type": "event", "event": "E"},
        "start": "wait",
        "nodes": [
            {"id": "wait", "type": "wait", "duration": "1h", "next": "mail"},
            {"id": "mail", "type": "send", "channel": "email", "template": "t", "next": "mark"},
            {"id": "mark", "type": "update_trait", "trait": "x", "value": True},
        ],
    }
    parse_journey(data)
    change(data)
    with pytest.raises(DefinitionError) as info:
        parse_journey(data)
    assert info.value.field == field, info.value.errors
