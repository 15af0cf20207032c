"""Events remarket itself publishes into the log, through ``segment_outbox``.

Segment transitions, journey trait updates and consent-ledger changes are written to
``segment_outbox`` (:func:`identify_rows` builds the identify ones) in the transaction
that decides them; the segment worker's publisher appends them to the log once (their
messageIds are deterministic). Each names its profile by one of the profile's
identifiers (:func:`senders`), as a client would, so that every consumer of the log
resolves it like any other event. Erasure deletes a person's pending rows by
``profile_id``; in the log they are sealed like collected events.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any, Final

import msgspec
from sqlalchemy import Connection, select

from remarket.schema.events import Identify, encode_message
from remarket.storage.state.tables import identities

__all__ = [
    "ANONYMOUS_ID",
    "USER_ID",
    "chunks",
    "identify_rows",
    "senders",
]

_log = logging.getLogger(__name__)

ANONYMOUS_ID: Final = "anonymous_id"
USER_ID: Final = "user_id"
"""The identity kinds events carry (``identities.kind``)."""

_CHUNK: Final = 500


def chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    """``items`` in slices of ``size`` (for IN lists that must stay short)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def senders(conn: Connection, profile_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """An identifier per profile to publish its events under: its user id, else its
    anonymous id (the smallest, when it has several). Profiles without either are absent.
    """
    found: dict[str, tuple[str, str]] = {}
    for chunk in chunks(sorted(set(profile_ids))):
        # Only by profile: with a condition on kind too, SQLite scans the primary key
        # (kind, value), i.e. every identity, instead of the profile_id index.
        rows = conn.execute(
            select(identities.c.profile_id, identities.c.kind, identities.c.value).where(
                identities.c.profile_id.in_(chunk)
            )
        )
        for pid, kind, value in rows:
            if kind not in (USER_ID, ANONYMOUS_ID):
                continue
            # A user id before an anonymous id, then the smallest value.
            best = found.get(pid)
            if best is None or (kind != USER_ID, value) < (best[0] != USER_ID, best[1]):
                found[pid] = (kind, value)
    return found


def identify_rows(
    conn: Connection,
    items: Sequence[tuple[str, str, Any, datetime]],
    *,
    source_id: str,
    contexts: Sequence[Any] | None = None,
) -> list[dict[str, Any]]:
    """``segment_outbox`` rows: one identify event per ``(profile_id, message_id, traits,
    at)``, with ``contexts[i]`` (JSON-able) as the i-th event's context if given.

    Profiles with no identifier to publish under are left out (logged).
    """
    who = senders(conn, [item[0] for item in items])
    rows: list[dict[str, Any]] = []
    for index, (profile_id, message_id, traits, at) in enumerate(items):
        sender = who.get(profile_id)
        if sender is None:
            _log.warning("profile %s has no identifier to publish %s under", profile_id, message_id)
            continue
        kind, value = sender
        context = msgspec.json.encode(contexts[index]) if contexts is not None else b"{}"
        message = Identify(
            traits=msgspec.Raw(msgspec.json.encode(traits)),
            context=msgspec.Raw(context),
            message_id=message_id,
            user_id=value if kind == USER_ID else None,
            anonymous_id=value if kind == ANONYMOUS_ID else None,
            timestamp=at,
            received_at=at,
            source_id=source_id,
        )
        rows.append(
            {"message_id": message_id, "profile_id": profile_id}
            | {"payload": encode_message(message), "created_at": at}
        )
    return rows
