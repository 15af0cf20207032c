"""Delivery counts per journey node: sent, skipped by reason, failed, waiting."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine, func, select

from remarket.channels.outbox import RESENT
from remarket.storage.state import channel_outbox

__all__ = ["NodeCounts", "delivery_counts"]


@dataclass(slots=True)
class NodeCounts:
    """What became of one node's messages. ``failed_attempts`` counts every failed send
    (a message retried twice then sent counts 2 there and 1 in ``sent``); ``dead`` are
    the messages that gave up (dead letters); ``resent`` are the sent messages that were
    in doubt (a deliverer died while sending them), so the provider may have had them
    twice (counted in ``sent`` too)."""

    sent: int = 0
    resent: int = 0
    pending: int = 0
    dead: int = 0
    failed_attempts: int = 0
    skipped: dict[str, int] = field(default_factory=dict)


def delivery_counts(
    engine: Engine, journey_id: str, *, version: int | None = None
) -> dict[str, NodeCounts]:
    """Counts per node id of ``journey_id`` (of one ``version`` if given).

    >>> from datetime import UTC, datetime
    >>> from remarket.storage.state import connect_state, upgrade_state
    >>> from remarket.channels.outbox import OutboxMessage, enqueue
    >>> engine = connect_state("sqlite://"); upgrade_state(engine)
    >>> with engine.begin() as conn:
    ...     enqueue(conn, OutboxMessage("k", "p_1", "webhook", None, {}, "j1", 1, "n1"),
    ...             now=datetime.now(UTC))
    True
    >>> delivery_counts(engine, "j1")["n1"].pending
    1
    """
    c = channel_outbox.c
    query = (
        select(c.node_id, c.status, c.reason, func.count(), func.coalesce(func.sum(c.failures), 0))
        .where(c.journey_id == journey_id)
        .group_by(c.node_id, c.status, c.reason)
    )
    if version is not None:
        query = query.where(c.journey_version == version)
    counts: dict[str, NodeCounts] = {}
    with engine.connect() as conn:
        for node, status, reason, n, failures in conn.execute(query):
            entry = counts.setdefault(node or "", NodeCounts())
            entry.failed_attempts += int(failures)
            if status == "sent":
                entry.sent += n
                if reason == RESENT:
                    entry.resent += n
            elif status == "pending":
                entry.pending += n
            elif status == "dead":
                entry.dead += n
            else:
                entry.skipped[reason or "unknown"] = entry.skipped.get(reason or "unknown", 0) + n
    return counts
