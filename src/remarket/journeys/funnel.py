"""What journeys did: counts per journey and node (the funnel), and a profile's history.

Entered, waiting, exited (by reason and node) and converted come from
``journey_instances``, nodes reached and entries refused from ``journey_steps``;
delivery outcomes (sent, resent, skipped by reason, failed: given up after retries) from the
channels' :func:`~remarket.channels.counts.delivery_counts`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal, get_args

from sqlalchemy import Engine, func, select

from remarket.channels.counts import delivery_counts
from remarket.schema.events import as_utc
from remarket.storage.state import journey_assignments, journey_instances, journey_steps

__all__ = ["ENTRY_SKIPS", "EntrySkip", "Funnel", "NodeCounts", "StepEntry", "funnel", "history"]

EntrySkip = Literal["paused", "already_active", "reentry_never", "reentry_wait", "max_concurrent"]
ENTRY_SKIPS: Final[tuple[EntrySkip, ...]] = get_args(EntrySkip)
"""Why a profile could not enter: the journey was paused; it was walking the journey
already; the re-entry policy is ``never``, or its ``after`` has not passed since the
last entry; ``max_concurrent`` profiles were in it. Stored as the ``kind`` of a step
(node None) on the walk the entry would have started. A message's daily limit is a
delivery skip (``journey_daily_limit``), counted with the node's messages."""


@dataclass(slots=True)
class NodeCounts:
    """One node: profiles that reached it, wait there now, left there; its messages."""

    node: str
    entered: int = 0
    waiting: int = 0
    exited: int = 0
    converted: int = 0
    queued: int = 0
    sent: int = 0
    resent: int = 0
    failed: int = 0
    pending: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    arms: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class Funnel:
    journey_id: str
    entered: int
    not_entered: dict[str, int]
    """Profiles that could not enter, by reason (each once per reason)."""
    active: int
    waiting: int
    exited: dict[str, int]
    converted: int
    converted_by_arm: dict[str, int]
    sent: int
    resent: int
    """Of ``sent``, the messages in doubt after a crash and sent again: the provider may
    have had them twice (under one idempotency key)."""
    failed: int
    skipped: dict[str, int]
    nodes: list[NodeCounts]


@dataclass(frozen=True, slots=True)
class StepEntry:
    journey_id: str
    version: int
    instance_id: str
    node: str | None
    kind: str
    reason: str | None
    at: datetime


def funnel(engine: Engine, journey_id: str, node_order: list[str]) -> Funnel:
    """The counts of a journey, nodes in ``node_order`` (then any others seen)."""
    nodes: dict[str, NodeCounts] = {n: NodeCounts(n) for n in node_order}

    def at(node: str) -> NodeCounts:
        return nodes.setdefault(node, NodeCounts(node))

    entered = converted = active = waiting = 0
    exited: Counter[str] = Counter()
    i, st = journey_instances.c, journey_steps.c
    with engine.connect() as conn:
        reached = conn.execute(
            select(st.node, func.count())
            .where(st.journey_id == journey_id, st.kind == "reached")
            .group_by(st.node)
        )
        for node, n in reached:
            at(node).entered = int(n)
        # Per node: walks through it that converted (a conversion counts at every node
        # the walk reached, so each node says how many of its profiles converted).
        wins = conn.execute(
            select(st.node, func.count(func.distinct(st.instance_id)))
            .join(journey_instances, i.id == st.instance_id)
            .where(st.journey_id == journey_id, st.kind == "reached", i.converted_at.is_not(None))
            .group_by(st.node)
        )
        for node, n in wins:
            at(node).converted = int(n)
        refused = conn.execute(
            select(st.kind, func.count(func.distinct(st.profile_id)))
            .where(st.journey_id == journey_id, st.kind.in_(ENTRY_SKIPS))
            .group_by(st.kind)
        )
        not_entered = {kind: int(n) for kind, n in refused}
        walks = conn.execute(
            select(i.status, i.reason, i.node, i.phase, func.count(), func.count(i.converted_at))
            .where(i.journey_id == journey_id)
            .group_by(i.status, i.reason, i.node, i.phase)
        )
        for status, reason, node, phase, n, wins in walks:
            n = int(n)
            entered += n
            converted += int(wins)
            if status == "active":
                active += n
                if phase == "wait" and node is not None:
                    waiting += n
                    at(node).waiting += n
            else:
                exited[reason or "completed"] += n
                if node is not None:
                    at(node).exited += n
    skipped: Counter[str] = Counter()
    sent = resent = failed = 0
    for node, delivered in delivery_counts(engine, journey_id).items():
        counts = at(node)
        counts.sent, counts.resent, counts.failed, counts.pending = (
            delivered.sent,
            delivered.resent,
            delivered.dead,
            delivered.pending,
        )
        counts.skipped = dict(delivered.skipped)
        counts.queued = counts.sent + counts.failed + counts.pending + sum(counts.skipped.values())
        sent += delivered.sent
        resent += delivered.resent
        failed += delivered.dead
        skipped.update(delivered.skipped)
    arms, by_arm = _arms(engine, journey_id)
    for node, counts_by_arm in arms.items():
        at(node).arms = counts_by_arm
    return Funnel(
        journey_id=journey_id,
        entered=entered,
        not_entered=not_entered,
        active=active,
        waiting=waiting,
        exited=dict(exited),
        converted=converted,
        converted_by_arm=by_arm,
        sent=sent,
        resent=resent,
        failed=failed,
        skipped=dict(skipped),
        nodes=list(nodes.values()),
    )


def _arms(engine: Engine, journey_id: str) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """Assignments per node and arm, and conversions by ``arm@node`` (of the profiles
    that converted in any of their walks after the assignment's journey)."""
    a, i = journey_assignments.c, journey_instances.c
    arms: dict[str, dict[str, int]] = defaultdict(dict)
    converted: dict[str, int] = {}
    with engine.connect() as conn:
        rows = conn.execute(
            select(a.node, a.arm, func.count())
            .where(a.journey_id == journey_id)
            .group_by(a.node, a.arm)
        )
        for node, arm, n in rows:
            arms[node][arm] = int(n)
            converted.setdefault(f"{arm}@{node}", 0)
        wins = conn.execute(
            select(a.node, a.arm, func.count(func.distinct(a.profile_id)))
            .join(
                journey_instances, (i.journey_id == a.journey_id) & (i.profile_id == a.profile_id)
            )
            .where(a.journey_id == journey_id, i.converted_at.is_not(None))
            .group_by(a.node, a.arm)
        )
        for node, arm, n in wins:
            converted[f"{arm}@{node}"] = int(n)
    return dict(arms), converted


def history(engine: Engine, profile_id: str) -> list[StepEntry]:
    """A profile's steps in every journey, oldest first: entered, the nodes reached,
    converted, exited (with the reason); entries refused are ``skipped`` steps with
    their reason."""
    out: list[StepEntry] = []
    with engine.connect() as conn:
        walks = conn.execute(
            select(journey_instances).where(journey_instances.c.profile_id == profile_id)
        )
        for w in walks:
            out.append(
                StepEntry(
                    w.journey_id, w.version, w.id, None, "entered", None, as_utc(w.entered_at)
                )
            )
            if w.converted_at is not None:
                at = as_utc(w.converted_at)
                out.append(StepEntry(w.journey_id, w.version, w.id, None, "converted", None, at))
            if w.exited_at is not None:
                at = as_utc(w.exited_at)
                out.append(StepEntry(w.journey_id, w.version, w.id, w.node, "exited", w.reason, at))
        steps = conn.execute(
            select(journey_steps)
            .where(journey_steps.c.profile_id == profile_id)
            .order_by(journey_steps.c.at, journey_steps.c.id)
        )
        out += [
            StepEntry(r.journey_id, r.version, r.instance_id, r.node, r.kind, None, as_utc(r.at))
            if r.kind not in ENTRY_SKIPS
            else StepEntry(
                r.journey_id, r.version, r.instance_id, None, "skipped", r.kind, as_utc(r.at)
            )
            for r in steps
        ]
    order = {"entered": 0, "reached": 1, "converted": 2, "exited": 3}
    # Stable: steps of one instant keep the order they were written in.
    return sorted(out, key=lambda s: (s.at, s.instance_id, order.get(s.kind, 1)))
