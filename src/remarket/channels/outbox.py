"""The channel outbox: messages to send, enqueued in the caller's transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite

from remarket.schema.events import as_utc
from remarket.storage.state import channel_outbox

__all__ = ["CHANNELS", "RESENT", "OutboxMessage", "enqueue", "enqueue_many"]

CHANNELS: Final = ("email", "sms", "push", "webhook", "audience")
RESENT: Final = "resent"
"""The reason of a sent row that was in doubt (``in_doubt``: a deliverer died while
sending it): the provider may have it twice, under the same idempotency key."""


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """One effect to deliver: a message to a profile, a webhook call, an audience change.

    ``variables`` are the extra template variables (email, sms, push), the webhook body,
    or the audience operation ``{"audience": id, "op": "add" | "remove"}``. ``due_at``:
    not before then (None: at once).

    >>> OutboxMessage("k1", "p_1", "email", "welcome", {}).channel
    'email'
    """

    idempotency_key: str
    profile_id: str
    channel: str
    template_id: str | None
    variables: dict[str, Any]
    journey_id: str | None = None
    journey_version: int | None = None
    node_id: str | None = None
    trigger: dict[str, Any] | None = None
    due_at: datetime | None = None

    def __post_init__(self) -> None:
        if self.channel not in CHANNELS:
            raise ValueError(f"channel must be one of {list(CHANNELS)}, got {self.channel!r}")
        if not self.idempotency_key or len(self.idempotency_key) > 200:
            raise ValueError("idempotency_key must have 1 to 200 characters")
        if self.channel in ("email", "sms", "push") and not self.template_id:
            raise ValueError(f"a {self.channel} message needs a template_id")
        if self.channel == "audience" and self.variables.get("op") not in ("add", "remove"):
            raise ValueError('an audience message needs variables {"audience": id, "op": ...}')


def _row(message: OutboxMessage, now: datetime) -> dict[str, Any]:
    return {
        "idempotency_key": message.idempotency_key,
        "profile_id": message.profile_id,
        "channel": message.channel,
        "template_id": message.template_id,
        "variables": message.variables,
        "journey_id": message.journey_id,
        "journey_version": message.journey_version,
        "node_id": message.node_id,
        "trigger": message.trigger,
        "status": "pending",
        "attempts": 0,
        "failures": 0,
        "due_at": max(now, as_utc(message.due_at)) if message.due_at else now,
        "created_at": now,
    }


def enqueue_many(conn: Connection, messages: list[OutboxMessage], *, now: datetime) -> int:
    """Insert ``messages`` in the caller's transaction; returns how many were new (a key
    already in the outbox is skipped, so re-running a step enqueues nothing twice)."""
    if not messages:
        return 0
    now = as_utc(now)
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    # One statement for the whole list (SQLAlchemy's "insertmanyvalues": multi-row
    # VALUES pages); RETURNING names the rows that were new, which rowcount cannot for
    # an executemany that skipped conflicts.
    stmt = (
        insert(channel_outbox)
        .on_conflict_do_nothing(index_elements=[channel_outbox.c.idempotency_key])
        .returning(channel_outbox.c.id)
    )
    return len(conn.execute(stmt, [_row(message, now) for message in messages]).all())


def enqueue(conn: Connection, message: OutboxMessage, *, now: datetime) -> bool:
    """Insert in the caller's transaction (atomic with the journey's step); False if the
    key exists.

    >>> from datetime import UTC
    >>> from remarket.storage.state import connect_state, upgrade_state
    >>> engine = connect_state("sqlite://"); upgrade_state(engine)
    >>> m, t = OutboxMessage("welcome:p_1", "p_1", "email", "welcome", {}), datetime.now(UTC)
    >>> with engine.begin() as conn:
    ...     enqueue(conn, m, now=t), enqueue(conn, m, now=t)
    (True, False)
    """
    return enqueue_many(conn, [message], now=now) == 1
