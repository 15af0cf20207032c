"""Dead letters (messages that gave up) and suppressions: list, replay, add, remove."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from remarket.schema.events import as_utc
from remarket.storage.state import channel_outbox, channel_suppressions

__all__ = [
    "DeadLetter",
    "Suppression",
    "add_suppression",
    "dead_letters",
    "remove_suppression",
    "replay_dead_letters",
    "suppressions",
]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    idempotency_key: str
    profile_id: str
    channel: str
    journey_id: str | None
    node_id: str | None
    reason: str | None
    attempts: int
    last_error: str | None
    finished_at: datetime | None


def dead_letters(engine: Engine, *, limit: int = 100, after: int = 0) -> list[DeadLetter]:
    """Dead letters by id, ``limit`` from after id ``after``."""
    c = channel_outbox.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(channel_outbox)
            .where(c.status == "dead", c.id > after)
            .order_by(c.id)
            .limit(limit)
        )
        return [
            DeadLetter(
                r.id,
                r.idempotency_key,
                r.profile_id,
                r.channel,
                r.journey_id,
                r.node_id,
                r.reason,
                r.attempts,
                r.last_error,
                as_utc(r.finished_at) if r.finished_at else None,
            )
            for r in rows
        ]


def replay_dead_letters(engine: Engine, ids: Sequence[int] | None, *, now: datetime) -> int:
    """Put dead letters (all if ``ids`` is None) back in the outbox, due now, with fresh
    attempts; their idempotency keys are kept, so a replay cannot add a second message
    (it passes the guards again: a person who has opted out since is skipped)."""
    c = channel_outbox.c
    query = update(channel_outbox).where(c.status == "dead")
    if ids is not None:
        query = query.where(c.id.in_(list(ids)))
    with engine.begin() as conn:
        return conn.execute(
            query.values(
                status="pending",
                reason="replayed",
                attempts=0,
                due_at=now,
                lease_until=None,
                finished_at=None,
            )
        ).rowcount


@dataclass(frozen=True, slots=True)
class Suppression:
    profile_id: str
    channel: str
    reason: str
    created_at: datetime


def suppressions(engine: Engine, *, profile_id: str | None = None) -> list[Suppression]:
    query = select(channel_suppressions).order_by(
        channel_suppressions.c.profile_id, channel_suppressions.c.channel
    )
    if profile_id is not None:
        query = query.where(channel_suppressions.c.profile_id == profile_id)
    with engine.connect() as conn:
        return [
            Suppression(r.profile_id, r.channel, r.reason, as_utc(r.created_at))
            for r in conn.execute(query)
        ]


def add_suppression(
    engine: Engine, profile_id: str, channel: str, reason: str, *, now: datetime
) -> None:
    """Suppress ``channel`` (``"*"``: every channel) for the profile; idempotent."""
    insert: Any = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
    with engine.begin() as conn:
        conn.execute(
            insert(channel_suppressions)
            .values(profile_id=profile_id, channel=channel, reason=reason, created_at=now)
            .on_conflict_do_nothing()
        )


def remove_suppression(engine: Engine, profile_id: str, channel: str) -> bool:
    with engine.begin() as conn:
        return bool(
            conn.execute(
                delete(channel_suppressions).where(
                    channel_suppressions.c.profile_id == profile_id,
                    channel_suppressions.c.channel == channel,
                )
            ).rowcount
        )
