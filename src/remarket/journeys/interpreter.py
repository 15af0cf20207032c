"""Walking a journey: where a profile goes next and which effects that has (pure).

:func:`advance` moves one profile's :class:`Position` through the nodes of a
:class:`Plan` until it waits, leaves, or reaches a branch whose condition it has no
answer for yet (the caller evaluates conditions for many profiles in one query and
calls again). It does no I/O: the runtime persists positions and effects in one
transaction, the dry run only records them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from remarket.schema.journey import (
    AudienceNode,
    BranchNode,
    ExitNode,
    HoldoutNode,
    JourneyDefinition,
    SendNode,
    SplitNode,
    UpdateTraitNode,
    WaitNode,
    WebhookNode,
)
from remarket.schema.segment import duration_seconds
from remarket.segments.desugar import CoreSegment, SegmentResolver, desugar
from remarket.segments.realtime import bucket_of

__all__ = [
    "Effect",
    "Outcome",
    "Phase",
    "Plan",
    "Position",
    "advance",
    "next_local_time",
    "split_arm",
]

Phase = Literal["arrive", "wait", "woken"]
EffectKind = Literal["reached", "waiting", "message", "trait", "assign", "exited"]
_UTC: Final = ZoneInfo("UTC")


@dataclass(slots=True)
class Position:
    """Where one profile is in one journey; mutated by :func:`advance`.

    ``phase`` says what to do at ``node``: ``arrive`` run it, ``wait`` wait for
    ``due_at`` (or ``wait_event``), ``woken`` the awaited event came.
    """

    node: str | None
    phase: Phase = "arrive"
    due_at: datetime | None = None
    wait_event: str | None = None
    status: Literal["active", "exited"] = "active"
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Effect:
    """Something that happened at a node: reached, waiting, a message (send, webhook,
    audience), a trait to set, an experiment assignment, or leaving the journey."""

    kind: EffectKind
    node: str | None
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Outcome:
    effects: list[Effect] = field(default_factory=list)
    needs: str | None = None
    """A branch node whose condition must be answered before the profile can go on."""


class Plan:
    """A journey version ready to walk: nodes by id, branch conditions in core form.

    >>> from remarket.schema.journey import parse_journey
    >>> plan = Plan(parse_journey({"id": "j", "entry": {"type": "event", "event": "E"},
    ...     "start": "x", "nodes": [{"id": "x", "type": "exit"}]}))
    >>> plan.start
    'x'
    """

    def __init__(
        self, definition: JourneyDefinition, *, resolve: SegmentResolver | None = None
    ) -> None:
        self.definition = definition
        self.id = definition.id
        self.version = definition.version
        self.start = definition.start
        self.nodes: dict[str, Any] = {node.id: node for node in definition.nodes}
        self.conditions: dict[str, CoreSegment] = {
            node.id: desugar(node.condition.as_segment(f"{self.id}/{node.id}"), resolve=resolve)
            for node in definition.nodes
            if isinstance(node, BranchNode)
        }
        self.uses_time_of_day = any(
            isinstance(n, WaitNode) and n.until_time is not None for n in definition.nodes
        )


def split_arm(node: SplitNode, journey_id: str, profile_id: str) -> str:
    """The arm a profile gets: stable for (journey, node, profile), by weight.

    >>> from remarket.schema.journey import SplitNode
    >>> s = SplitNode(id="s", type="split", arms=[{"name": "a", "weight": 1},
    ...     {"name": "b", "weight": 1}])
    >>> split_arm(s, "j", "p_1") == split_arm(s, "j", "p_1")
    True
    """
    total = sum(arm.weight for arm in node.arms)
    key = f"{journey_id}:{node.id}:{profile_id}".encode()
    point = int(hashlib.md5(key, usedforsecurity=False).hexdigest()[:12], 16) % total
    for arm in node.arms:
        if point < arm.weight:
            return arm.name
        point -= arm.weight
    raise AssertionError("unreachable: point < total weight")


def next_local_time(now: datetime, hhmm: str, zone: str | None) -> datetime:
    """The first instant strictly after ``now`` whose local time in ``zone`` is ``hhmm``
    (UTC when the zone is missing or unknown). On a day when that local time does not
    exist (clocks spring forward), it is the instant the offset before the change gives.

    >>> from datetime import UTC
    >>> next_local_time(datetime(2026, 1, 1, 10, tzinfo=UTC), "09:00", "Europe/Berlin")
    datetime.datetime(2026, 1, 2, 8, 0, tzinfo=datetime.timezone.utc)
    """
    tz = _zone(zone)
    local = now.astimezone(tz)
    hours, minutes = (int(part) for part in hhmm.split(":"))
    target = time(hours, minutes)
    day = local.date()
    for _ in range(3):
        candidate = datetime.combine(day, target, tzinfo=tz)
        utc = candidate.astimezone(now.tzinfo)
        if utc > now:
            return utc
        day += timedelta(days=1)
    raise AssertionError("unreachable: a local time recurs within three days")


def _zone(name: str | None) -> ZoneInfo:
    if not name:
        return _UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return _UTC


def _leave(position: Position, outcome: Outcome, node: str | None, reason: str) -> None:
    position.status, position.reason = "exited", reason
    position.node, position.due_at, position.wait_event = node, None, None
    outcome.effects.append(Effect("exited", node, {"reason": reason}))


def _wait_until(node: WaitNode, now: datetime, zone: str | None) -> datetime:
    if node.duration is not None:
        return now + timedelta(seconds=duration_seconds(node.duration))
    if node.until_time is not None:
        return next_local_time(now, node.until_time, zone)
    assert node.timeout is not None
    return now + timedelta(seconds=duration_seconds(node.timeout))


def _message(node: Any, profile_id: str) -> dict[str, Any]:
    if isinstance(node, SendNode):
        return {"channel": node.channel, "template": node.template, "variables": node.variables}
    if isinstance(node, WebhookNode):
        body = {**node.body, "profile_id": profile_id}
        return {"channel": "webhook", "template": None, "variables": {"url": node.url} | body}
    assert isinstance(node, AudienceNode)
    variables = {"audience": node.audience, "op": node.op}
    return {"channel": "audience", "template": None, "variables": variables}


def advance(
    plan: Plan,
    profile_id: str,
    position: Position,
    now: datetime,
    *,
    answers: Mapping[str, bool] | None = None,
    zone: str | None = None,
) -> Outcome:
    """Move the profile on from ``position`` at ``now``; its effects, in order.

    ``answers`` holds branch conditions already evaluated for this profile (by node
    id); ``zone`` is the profile's time zone. Called for a waiting position whose time
    has not come, it does nothing.
    """
    outcome = Outcome()
    answers = answers or {}
    last = position.node  # where a walk that runs out of nodes left
    for _ in range(len(plan.nodes) + 1):
        if position.status != "active":
            return outcome
        if position.node is None:
            _leave(position, outcome, last, "completed")
            return outcome
        last = position.node
        node = plan.nodes.get(position.node)
        if node is None:  # cannot happen for a validated plan; never loop on it
            _leave(position, outcome, position.node, "unknown_node")
            return outcome
        if isinstance(node, WaitNode):
            if position.phase == "arrive":
                outcome.effects.append(Effect("reached", node.id))
                position.phase = "wait"
                position.due_at = _wait_until(node, now, zone)
                position.wait_event = node.until_event.event if node.until_event else None
                outcome.effects.append(Effect("waiting", node.id, {"until": position.due_at}))
                return outcome
            if position.phase == "wait" and (position.due_at is None or position.due_at > now):
                return outcome
            timed_out = position.phase == "wait" and node.until_event is not None
            following = node.on_timeout if timed_out and node.on_timeout else node.next
            position.due_at, position.wait_event = None, None
            _goto(position, following)
            continue
        if position.phase != "arrive":  # only waits are waited at
            position.phase = "arrive"
        if isinstance(node, BranchNode):
            if node.id not in answers:
                outcome.needs = node.id
                return outcome
            outcome.effects.append(Effect("reached", node.id, {"result": answers[node.id]}))
            _goto(position, node.then if answers[node.id] else node.otherwise)
            continue
        outcome.effects.append(Effect("reached", node.id))
        if isinstance(node, ExitNode):
            _leave(position, outcome, node.id, "completed")
            return outcome
        if isinstance(node, SplitNode):
            arm = split_arm(node, plan.id, profile_id)
            outcome.effects.append(Effect("assign", node.id, {"arm": arm}))
            _goto(position, next(a.next for a in node.arms if a.name == arm))
            continue
        if isinstance(node, HoldoutNode):
            held = bucket_of(profile_id, f"{plan.id}:{node.id}") < node.percent
            arm = "holdout" if held else "treatment"
            outcome.effects.append(Effect("assign", node.id, {"arm": arm}))
            if held:
                _leave(position, outcome, node.id, "holdout")
                return outcome
            _goto(position, node.next)
            continue
        if isinstance(node, UpdateTraitNode):
            outcome.effects.append(
                Effect("trait", node.id, {"trait": node.trait} | {"value": node.value})
            )
            _goto(position, node.next)
            continue
        outcome.effects.append(Effect("message", node.id, _message(node, profile_id)))
        _goto(position, node.next)
    raise AssertionError("unreachable: a validated journey graph is acyclic")


def _goto(position: Position, node: str | None) -> None:
    position.node, position.phase = node, "arrive"
