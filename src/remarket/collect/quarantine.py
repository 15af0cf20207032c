"""Rejected events kept with their reason, for an operator to list and replay."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sqlalchemy import Engine, func, select, update

from remarket.clock import Clock
from remarket.privacy import AuditLog
from remarket.schema.events import as_utc
from remarket.storage.state import quarantine

__all__ = ["HELD", "QuarantineStore", "Quarantined", "Rejection"]

HELD: Final = frozenset({"velocity_anomaly"})
"""Reasons of valid events the guard held back: quarantined from every endpoint (an
invalid event is refused instead where the request held only it)."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why one event of a request was refused: ``field`` names the input at fault."""

    index: int
    reason: str
    field: str | None
    detail: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Quarantined:
    id: int
    source_id: str
    received_at: datetime
    reason: str
    field: str | None
    detail: str
    payload: bytes
    replayed_at: datetime | None


class QuarantineStore:
    """The quarantine table: written synchronously before a request is acknowledged."""

    def __init__(self, engine: Engine, *, clock: Clock | None = None) -> None:
        self._engine = engine
        self._audit = AuditLog(engine, clock=clock)

    def add(self, source_id: str, received_at: datetime, rejections: Sequence[Rejection]) -> None:
        if not rejections:
            return
        with self._engine.begin() as conn:
            conn.execute(
                quarantine.insert(),
                [
                    {
                        "source_id": source_id,
                        "received_at": received_at,
                        "reason": r.reason,
                        "field": r.field,
                        "detail": r.detail,
                        "payload": r.payload,
                    }
                    for r in rejections
                ],
            )

    def list(
        self, *, pending_only: bool = True, after_id: int = 0, limit: int = 100
    ) -> list[Quarantined]:
        """Entries with id > ``after_id``, oldest first."""
        query = select(quarantine).where(quarantine.c.id > after_id)
        if pending_only:
            query = query.where(quarantine.c.replayed_at.is_(None))
        with self._engine.connect() as conn:
            rows = conn.execute(query.order_by(quarantine.c.id).limit(limit)).all()
        return [
            Quarantined(
                r.id,
                r.source_id,
                # SQLite hands back the stored UTC time without its zone.
                as_utc(r.received_at),
                r.reason,
                r.field,
                r.detail,
                bytes(r.payload),
                as_utc(r.replayed_at) if r.replayed_at is not None else None,
            )
            for r in rows
        ]

    def count_pending(self) -> int:
        with self._engine.connect() as conn:
            query = select(func.count()).where(quarantine.c.replayed_at.is_(None))
            return int(conn.scalar(query) or 0)

    def mark_replayed(self, ids: Sequence[int], at: datetime, *, actor: str = "cli") -> None:
        """Mark entries replayed; the audit log records it, by ``actor``, in the same
        transaction."""
        if not ids:
            return
        with self._engine.begin() as conn:
            conn.execute(update(quarantine).where(quarantine.c.id.in_(ids)).values(replayed_at=at))
            self._audit.append(
                conn,
                actor=actor,
                action="quarantine.replay",
                target="quarantine",
                details={"ids": sorted(ids)},
            )
