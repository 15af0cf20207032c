"""Erasure's notice to the ad platforms: a person's removal from every audience they were
uploaded to, queued in the channel outbox as the platform's hashed identifiers only."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Connection, Engine, and_, delete, or_, select

from remarket.channels.audiences import DEFAULT_COUNTRY_CODE, generation, hashed_identifiers
from remarket.channels.outbox import OutboxMessage, enqueue_many
from remarket.privacy.erasure import Subject
from remarket.schema.events import as_utc
from remarket.storage.state import (
    channel_audiences,
    channel_outbox,
    channel_providers,
    profile_traits,
)
from remarket.storage.state.published import chunks

__all__ = ["ERASED", "ERASURE", "AudienceRemovals", "is_erasure_removal"]

ERASURE: Final = "erasure"
"""The ``cause`` of an audience removal queued by erasure."""
ERASED: Final = "erased:"
"""How such a removal's ``profile_id`` starts (then the erasure's profile hash, cut to
fit): it names no profile, so the person's rows swept by erasure never include it."""
_UNFINISHED: Final = ("pending", "dead")


def is_erasure_removal(variables: Mapping[str, Any]) -> bool:
    """Whether an audience row's ``variables`` are an erasure's removal.

    >>> is_erasure_removal({"audience": "vip", "op": "remove", "cause": "erasure"})
    True
    """
    return variables.get("op") == "remove" and variables.get("cause") == ERASURE


class AudienceRemovals:
    """The ad audiences as a :class:`~remarket.privacy.erasure.Recipient` of erasures.

    For each audience the person was uploaded to (an ``add`` sent, or in flight: claimed
    by a deliverer now), one removal per identity of theirs, due when no add of theirs
    can still be in flight. Adds not yet claimed are withdrawn instead: they never reach
    the platform. Membership of the audience's segment alone uploaded nothing, so it
    removes nothing (a removal would hand the platform hashes it never had).

    The removal holds the platform-normalised SHA-256 identifiers (as the add did), the
    audience id, and the keyed hashes of the person's profile ids (so a later check
    finds it as pending); a sent or skipped one is deleted, a dead letter stays (and
    counts as pending) until replayed.
    """

    name = "audiences"

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def queue(
        self,
        conn: Connection,
        subject: Subject,
        *,
        profile_hash: str,
        tags: Collection[str],
        now: datetime,
    ) -> int:
        pids = sorted(subject.profile_ids)
        self._withdraw(conn, pids, now)
        due = self._uploaded(conn, pids, now)
        if not due:
            return 0
        identities = self._identities(conn, pids)
        audiences = conn.execute(
            select(channel_audiences).where(channel_audiences.c.id.in_(sorted(due)))
        ).all()
        messages: list[OutboxMessage] = []
        for audience in audiences:
            country_code = self._country_code(conn, audience.platform)
            for email, phone in identities:
                hashed = hashed_identifiers(audience.platform, email, phone, country_code)
                if not any(hashed.values()):
                    continue
                digest = hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()
                messages.append(
                    OutboxMessage(
                        f"{generation(audience.id, audience.created_at)}:e:{digest[:32]}",
                        f"{ERASED}{profile_hash[:32]}",
                        "audience",
                        None,
                        {
                            "audience": audience.id,
                            "op": "remove",
                            "cause": ERASURE,
                            "hashed": hashed,
                            "tags": sorted(tags),
                        },
                        due_at=due[audience.id],
                    )
                )
        return enqueue_many(conn, messages, now=now)

    def pending(self, tags: Collection[str]) -> int:
        wanted = set(tags)
        c = channel_outbox.c
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(c.variables).where(
                    c.channel == "audience",
                    c.profile_id.startswith(ERASED, autoescape=True),
                    c.status.in_(_UNFINISHED),
                )
            )
            return sum(1 for (variables,) in rows if wanted & set(variables.get("tags", ())))

    @staticmethod
    def _withdraw(conn: Connection, pids: list[str], now: datetime) -> None:
        """Delete the person's adds no deliverer holds: they will never be sent."""
        c = channel_outbox.c
        for chunk in chunks(pids):
            ids = [
                row.id
                for row in conn.execute(
                    select(c.id, c.variables).where(
                        c.profile_id.in_(chunk), c.channel == "audience", c.status == "pending"
                    )
                )
                if row.variables.get("op") == "add"
            ]
            if ids:
                conn.execute(
                    delete(channel_outbox).where(
                        c.id.in_(ids),
                        c.status == "pending",
                        or_(c.lease_until.is_(None), c.lease_until <= now),
                    )
                )

    @staticmethod
    def _uploaded(conn: Connection, pids: list[str], now: datetime) -> dict[str, datetime]:
        """Audience id → when its removal is due: now, or when the lease of an add still
        in flight ends (by then it was sent or given up, and the removal comes after)."""
        c = channel_outbox.c
        due: dict[str, datetime] = {}
        for chunk in chunks(pids):
            rows = conn.execute(
                select(c.variables, c.lease_until).where(
                    c.profile_id.in_(chunk),
                    c.channel == "audience",
                    or_(c.status == "sent", and_(c.status == "pending", c.lease_until > now)),
                )
            )
            for variables, lease_until in rows:
                if variables.get("op") != "add":
                    continue
                audience = str(variables.get("audience"))
                until = as_utc(lease_until) if lease_until is not None else now
                due[audience] = max(due.get(audience, now), until)
        return due

    @staticmethod
    def _identities(conn: Connection, pids: list[str]) -> list[tuple[str | None, str | None]]:
        """The distinct (e-mail, phone) of the person's profiles."""
        found: dict[str, dict[str, str]] = {}
        for chunk in chunks(pids):
            rows = conn.execute(
                select(
                    profile_traits.c.profile_id, profile_traits.c.key, profile_traits.c.value
                ).where(
                    profile_traits.c.profile_id.in_(chunk),
                    profile_traits.c.key.in_(("email", "phone")),
                )
            )
            for pid, key, value in rows:
                if isinstance(value, str) and value.strip():
                    found.setdefault(pid, {})[key] = value
        return sorted({(t.get("email"), t.get("phone")) for t in found.values()}, key=str)

    @staticmethod
    def _country_code(conn: Connection, platform: str) -> str:
        """The country code the platform's provider hashes phone numbers with (the newest
        enabled one's: the one the deliverer uses)."""
        config = conn.scalar(
            select(channel_providers.c.config)
            .where(
                channel_providers.c.channel == "audience",
                channel_providers.c.kind == platform,
                channel_providers.c.enabled.is_(True),
            )
            .order_by(channel_providers.c.created_at.desc(), channel_providers.c.id.desc())
            .limit(1)
        )
        code = config.get("country_code") if isinstance(config, dict) else None
        return str(code) if code else DEFAULT_COUNTRY_CODE
