"""What journeys did: counts per journey and node (the funnel), and a profile's history.

Walk counts come from ``journey_steps`` and ``journey_instances``; delivery outcomes
(sent, skipped by reason, failed: given up after retries) from the channels'
:func:`~remarket.channels.counts.delivery_counts`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Engine, func, select

from remarket.channels.counts import delivery_counts
from remarket.schema.events import as_utc
from remarket.storage.state import journey_instances, journey_steps

__all__ = ["Funnel", "NodeCounts", "StepEntry", "funnel", "history"]


@dataclass(slots=True)
class NodeCounts:
    """One node: profiles that reached it, wait there now, left there; its messages."""

    node: str
    entered: int = 0
    waiting: int = 0
    exited: int = 0
    queued: int = 0
    sent: int = 0
    failed: int = 0
    pending: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    arms: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class Funnel:
    journey_id: str
    entered: int
    active: int
    waiting: int
    exited: dict[str, int]
    converted: int
    converted_by_arm: dict[str, int]
    sent: int
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

    entered = converted = 0
    exited: Counter[str] = Counter()
    with engine.connect() as conn:
        steps = conn.execute(
            select(journey_steps.c.node, journey_steps.c.kind, journey_steps.c.reason, func.count())
            .where(journey_steps.c.journey_id == journey_id)
            .group_by(journey_steps.c.node, journey_steps.c.kind, journey_steps.c.reason)
        ).all()
        for node, kind, reason, n in steps:
            n = int(n)
            if kind == "entered" and node is None:
                entered += n
            elif kind == "converted":
                converted += n
            elif kind == "exited":
                exited[reason or "completed"] += n
                if node is not None:
                    at(node).exited += n
            elif node is None:
                continue
            elif kind == "reached":
                at(node).entered += n
            elif kind == "queued":
                at(node).queued += n
            elif kind == "assigned":
                at(node).arms[reason or ""] = at(node).arms.get(reason or "", 0) + n
        active_rows = conn.execute(
            select(journey_instances.c.node, journey_instances.c.phase, func.count())
            .where(
                journey_instances.c.journey_id == journey_id,
                journey_instances.c.status == "active",
            )
            .group_by(journey_instances.c.node, journey_instances.c.phase)
        ).all()
        active = waiting = 0
        for node, phase, n in active_rows:
            active += int(n)
            if phase == "wait" and node is not None:
                waiting += int(n)
                at(node).waiting += int(n)
    skipped: Counter[str] = Counter()
    sent = failed = 0
    for node, delivered in delivery_counts(engine, journey_id).items():
        counts = at(node)
        counts.sent, counts.failed, counts.pending = (
            delivered.sent,
            delivered.dead,
            delivered.pending,
        )
        counts.skipped = dict(delivered.skipped)
        sent += delivered.sent
        failed += delivered.dead
        skipped.update(delivered.skipped)
    by_arm = _conversions_by_arm(engine, journey_id)
    return Funnel(
        journey_id=journey_id,
        entered=entered,
        active=active,
        waiting=waiting,
        exited=dict(exited),
        converted=converted,
        converted_by_arm=by_arm,
        sent=sent,
        failed=failed,
        skipped=dict(skipped),
        nodes=list(nodes.values()),
    )


def _conversions_by_arm(engine: Engine, journey_id: str) -> dict[str, int]:
    """Conversions of profiles by the holdout / split arm they got (``arm@node``)."""
    with engine.connect() as conn:
        arms = conn.execute(
            select(journey_steps.c.instance_id, journey_steps.c.node, journey_steps.c.reason).where(
                journey_steps.c.journey_id == journey_id, journey_steps.c.kind == "assigned"
            )
        ).all()
        if not arms:
            return {}
        converted = set(
            conn.scalars(
                select(journey_steps.c.instance_id).where(
                    journey_steps.c.journey_id == journey_id, journey_steps.c.kind == "converted"
                )
            )
        )
    out: defaultdict[str, int] = defaultdict(int)
    for instance_id, node, arm in arms:
        out[f"{arm}@{node}"] += instance_id in converted
    return dict(out)


def history(engine: Engine, profile_id: str) -> list[StepEntry]:
    """A profile's steps in every journey, oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(journey_steps)
            .where(journey_steps.c.profile_id == profile_id)
            .order_by(journey_steps.c.at, journey_steps.c.id)
        )
        return [
            StepEntry(
                r.journey_id, r.version, r.instance_id, r.node, r.kind, r.reason, as_utc(r.at)
            )
            for r in rows
        ]
