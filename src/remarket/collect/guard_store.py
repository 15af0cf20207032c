"""The guard's tables: block lists, counters per day and kind, anomaly reports."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite

from remarket.errors import ConflictError, InvalidInput, NotFound
from remarket.schema.events import as_utc
from remarket.storage.state import guard_anomalies, guard_blocks, guard_counters

__all__ = ["Anomaly", "Block", "GuardStore", "normalise_network"]


@dataclass(frozen=True, slots=True)
class Block:
    id: int
    network: str
    reason: str
    created_at: datetime
    created_by: str


@dataclass(frozen=True, slots=True)
class Anomaly:
    """A velocity spike: ``subject`` (a userId/anonymousId, or an IP) over ``threshold``
    events in the window starting at ``window_start``."""

    id: int
    kind: str
    subject: str
    source_id: str
    window_start: datetime
    baseline: int
    threshold: int
    detected_at: datetime


def normalise_network(text: str) -> str:
    """A network in canonical CIDR form; a bare address is a /32 or /128.

    >>> normalise_network("203.0.113.7/24"), normalise_network("2001:DB8::1")
    ('203.0.113.0/24', '2001:db8::1/128')
    """
    try:
        return str(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError as exc:
        raise InvalidInput(
            f"not an IPv4 or IPv6 address or network: {text!r}", field="network"
        ) from exc


class GuardStore:
    """Reads and writes the guard tables; every collector process shares them."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    # -- block lists -------------------------------------------------------------

    def blocks(self) -> list[Block]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(guard_blocks).order_by(guard_blocks.c.id)).all()
        return [Block(r.id, r.network, r.reason, as_utc(r.created_at), r.created_by) for r in rows]

    def add_block(self, network: str, reason: str, *, actor: str, at: datetime) -> Block:
        cidr = normalise_network(network)
        with self._engine.begin() as conn:
            taken = conn.scalar(select(guard_blocks.c.id).where(guard_blocks.c.network == cidr))
            if taken is not None:
                raise ConflictError(f"{cidr} is blocked already (id {taken})", field="network")
            new_id = conn.execute(
                guard_blocks.insert().values(
                    network=cidr, reason=reason, created_at=at, created_by=actor
                )
            ).inserted_primary_key
        assert new_id is not None
        return Block(int(new_id[0]), cidr, reason, at, actor)

    def remove_block(self, block_id: int) -> None:
        with self._engine.begin() as conn:
            gone = conn.execute(delete(guard_blocks).where(guard_blocks.c.id == block_id))
        if gone.rowcount == 0:
            raise NotFound(f"no block with id {block_id}", field="id")

    # -- counters and anomalies --------------------------------------------------

    def record(
        self,
        day: str,
        counts: Mapping[tuple[str, str], int],
        anomalies: Sequence[dict[str, Any]],
    ) -> None:
        """Add ``counts`` ((source_id, kind) -> n) to ``day`` and store anomaly reports."""
        with self._engine.begin() as conn:
            if counts:
                stmt = self._insert(guard_counters)
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=[
                            guard_counters.c.day,
                            guard_counters.c.source_id,
                            guard_counters.c.kind,
                        ],
                        set_={"count": guard_counters.c.count + stmt.excluded["count"]},
                    ),
                    [
                        {"day": day, "source_id": source, "kind": kind, "count": n}
                        for (source, kind), n in sorted(counts.items())
                    ],
                )
            if anomalies:
                conn.execute(guard_anomalies.insert(), list(anomalies))

    def counters(self, since_day: str | None = None) -> list[tuple[str, str, str, int]]:
        """``(day, source_id, kind, count)`` rows, newest day first."""
        query = select(
            guard_counters.c.day,
            guard_counters.c.source_id,
            guard_counters.c.kind,
            guard_counters.c.count,
        )
        if since_day is not None:
            query = query.where(guard_counters.c.day >= since_day)
        order = (guard_counters.c.day.desc(), guard_counters.c.source_id, guard_counters.c.kind)
        with self._engine.connect() as conn:
            return [(r[0], r[1], r[2], int(r[3])) for r in conn.execute(query.order_by(*order))]

    def totals(self) -> dict[str, int]:
        """Every kind's count over all days and sources."""
        query = select(guard_counters.c.kind, func.sum(guard_counters.c.count)).group_by(
            guard_counters.c.kind
        )
        with self._engine.connect() as conn:
            return {kind: int(n) for kind, n in conn.execute(query)}

    def anomalies(self, *, after_id: int = 0, limit: int = 100) -> list[Anomaly]:
        """Reports with id > ``after_id``, oldest first."""
        query = (
            select(guard_anomalies)
            .where(guard_anomalies.c.id > after_id)
            .order_by(guard_anomalies.c.id)
            .limit(limit)
        )
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            Anomaly(
                r.id,
                r.kind,
                r.subject,
                r.source_id,
                as_utc(r.window_start),
                r.baseline,
                r.threshold,
                as_utc(r.detected_at),
            )
            for r in rows
        ]
