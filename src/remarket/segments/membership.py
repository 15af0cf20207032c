"""Segment memberships in the state store: transitions written once, and read back.

Every change of membership is a :class:`Transition`. :func:`write_transitions` records
it in one go, inside the caller's transaction: the ``segment_members`` row, a numbered
``segment_history`` row and a ``Segment Entered`` / ``Segment Exited`` track event in
``segment_outbox``, whose messageId derives from (segment, profile, number), so a
republished copy is dropped by the log's de-duplication.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

import msgspec
from sqlalchemy import Connection, Engine, func, select, update

from remarket.profiles.identity import ANONYMOUS_ID, USER_ID
from remarket.schema.events import Track, as_utc, encode_message
from remarket.storage.state import (
    consumer_offsets,
    segment_history,
    segment_members,
    segment_outbox,
)
from remarket.storage.state.bulk import bulk_insert
from remarket.storage.state.offsets import committed_offset
from remarket.storage.state.published import chunks, senders

__all__ = [
    "CONSUMER",
    "ENTERED",
    "EXITED",
    "PUBLISHER_SOURCE",
    "HistoryEntry",
    "Member",
    "MembershipReader",
    "Transition",
    "chunks",
    "hold_offset",
    "write_transitions",
]

CONSUMER: Final = "segments"
"""The log consumer name of the real-time segment sink (its offset fences every write)."""

ENTERED: Final = "Segment Entered"
EXITED: Final = "Segment Exited"
PUBLISHER_SOURCE: Final = "segments"
"""The ``source_id`` of published transitions (no real source has this id)."""

_BUCKETS: Final = {"minute": 60, "hour": 3600, "day": 86_400}


@dataclass(frozen=True, slots=True)
class Transition:
    """A profile entering or leaving (one version of) a segment at a time."""

    segment: str
    version: int
    profile_id: str
    entered: bool
    at: datetime


@dataclass(frozen=True, slots=True)
class Member:
    profile_id: str
    version: int
    since: datetime


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    segment: str
    version: int
    profile_id: str
    kind: Literal["entered", "exited"]
    at: datetime
    seq: int


def hold_offset(conn: Connection, consumer: str = CONSUMER) -> int:
    """Lock the sink's offset row (so the sink waits for this transaction); its offset.

    Timers, backfills and deletions start with it: they read and write the same states
    and memberships as the sink, in this process or another.
    """
    conn.execute(
        update(consumer_offsets)
        .where(consumer_offsets.c.consumer == consumer)
        .values(offset=consumer_offsets.c.offset)
    )
    return committed_offset(conn, consumer)


def message_id_of(segment: str, profile_id: str, seq: int) -> str:
    """The deterministic messageId of a profile's ``seq``-th transition in a segment."""
    digest = hashlib.blake2b(f"{segment}\x1f{profile_id}\x1f{seq}".encode(), digest_size=16)
    return f"segment-{digest.hexdigest()}"


def _last_seqs(conn: Connection, pairs: set[tuple[str, str]]) -> dict[tuple[str, str], int]:
    last: dict[tuple[str, str], int] = {}
    profiles = sorted({pid for _, pid in pairs})
    for chunk in chunks(profiles):
        rows = conn.execute(
            select(
                segment_history.c.segment,
                segment_history.c.profile_id,
                func.max(segment_history.c.seq),
            )
            .where(segment_history.c.profile_id.in_(chunk))
            .group_by(segment_history.c.segment, segment_history.c.profile_id)
        )
        for segment, pid, seq in rows:
            if (segment, pid) in pairs:
                last[(segment, pid)] = int(seq)
    return last


def write_transitions(conn: Connection, transitions: Sequence[Transition]) -> None:
    """Record transitions (members, numbered history, outbox) in the caller's transaction."""
    if not transitions:
        return
    last = _last_seqs(conn, {(t.segment, t.profile_id) for t in transitions})
    who = senders(conn, [t.profile_id for t in transitions])
    history: list[dict[str, Any]] = []
    outbox: list[dict[str, Any]] = []
    entered: list[dict[str, Any]] = []
    exited: dict[str, list[str]] = defaultdict(list)
    for t in transitions:
        seq = last.get((t.segment, t.profile_id), 0) + 1
        last[(t.segment, t.profile_id)] = seq
        kind = "entered" if t.entered else "exited"
        history.append(
            {"segment": t.segment, "version": t.version, "profile_id": t.profile_id}
            | {"kind": kind, "at": t.at, "seq": seq}
        )
        if t.entered:
            entered.append(
                {"segment": t.segment, "profile_id": t.profile_id, "version": t.version}
                | {"since": t.at}
            )
        else:
            exited[t.segment].append(t.profile_id)
        sender = who.get(t.profile_id)
        if sender is not None:
            message_id = message_id_of(t.segment, t.profile_id, seq)
            payload = _event(t, sender, message_id)
            outbox.append(
                {"message_id": message_id, "profile_id": t.profile_id, "payload": payload}
                | {"created_at": t.at}
            )
    for segment, pids in exited.items():
        for chunk in chunks(pids):
            conn.execute(
                segment_members.delete().where(
                    segment_members.c.segment == segment, segment_members.c.profile_id.in_(chunk)
                )
            )
    bulk_insert(conn, segment_members, entered)
    bulk_insert(conn, segment_history, history)
    bulk_insert(conn, segment_outbox, outbox)


def _event(t: Transition, sender: tuple[str, str], message_id: str) -> bytes:
    kind, value = sender
    properties = {"segment": t.segment, "version": t.version, "profile_id": t.profile_id}
    message = Track(
        event=ENTERED if t.entered else EXITED,
        properties=msgspec.Raw(msgspec.json.encode(properties)),
        message_id=message_id,
        user_id=value if kind == USER_ID else None,
        anonymous_id=value if kind == ANONYMOUS_ID else None,
        timestamp=t.at,
        received_at=t.at,
        source_id=PUBLISHER_SOURCE,
    )
    return encode_message(message)


def _history(row: Any) -> HistoryEntry:
    return HistoryEntry(row.segment, row.version, row.profile_id, row.kind, as_utc(row.at), row.seq)


class MembershipReader:
    """Who is in a segment, since when, and how that changed (read-only).

    >>> from remarket.storage.state import connect_state, upgrade_state
    >>> engine = connect_state("sqlite://"); upgrade_state(engine)
    >>> MembershipReader(engine).size("buyers")
    0
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def size(self, segment: str) -> int:
        with self._engine.connect() as conn:
            return int(
                conn.scalar(
                    select(func.count())
                    .select_from(segment_members)
                    .where(segment_members.c.segment == segment)
                )
                or 0
            )

    def members(self, segment: str, *, limit: int, after: str | None = None) -> list[Member]:
        """Members ordered by profile id, starting after the profile id ``after``."""
        query = select(segment_members).where(segment_members.c.segment == segment)
        if after is not None:
            query = query.where(segment_members.c.profile_id > after)
        query = query.order_by(segment_members.c.profile_id).limit(limit)
        with self._engine.connect() as conn:
            return [Member(r.profile_id, r.version, as_utc(r.since)) for r in conn.execute(query)]

    def memberships(self, profile_id: str) -> list[tuple[str, Member]]:
        """The segments a profile is in now: ``(segment, member)``."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(segment_members)
                .where(segment_members.c.profile_id == profile_id)
                .order_by(segment_members.c.segment)
            )
            return [(r.segment, Member(r.profile_id, r.version, as_utc(r.since))) for r in rows]

    def history(self, profile_id: str) -> list[HistoryEntry]:
        """A profile's transitions, oldest first."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(segment_history)
                .where(segment_history.c.profile_id == profile_id)
                .order_by(segment_history.c.at, segment_history.c.id)
            )
            return [_history(r) for r in rows]

    def size_over_time(
        self, segment: str, bucket: str, since: datetime | None = None
    ) -> list[tuple[datetime, int]]:
        """The size at the end of each ``bucket`` (minute, hour, day) in which it changed."""
        seconds = _BUCKETS[bucket]
        query = (
            select(segment_history.c.at, segment_history.c.kind)
            .where(segment_history.c.segment == segment)
            .order_by(segment_history.c.at, segment_history.c.id)
        )
        points: dict[datetime, int] = {}
        size = 0
        with self._engine.connect() as conn:
            for at, kind in conn.execute(query):
                size += 1 if kind == "entered" else -1
                epoch = int(as_utc(at).timestamp()) // seconds * seconds
                points[datetime.fromtimestamp(epoch, UTC)] = size
        return [(at, n) for at, n in points.items() if since is None or at >= since]
