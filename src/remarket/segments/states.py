"""Per-profile real-time states in the state store: one row per profile for the sink.

The sink reads and writes every live segment's state of a profile at once, so it keeps
them together in one ``segment_states`` row under the reserved segment name ``""`` (no
segment has an empty name): one row read and one row written per profile and batch,
instead of one per segment. Likewise one ``segment_timers`` row under ``""`` holds the
earliest instant any of the profile's segments may change; each entry keeps its own.
A backfill writes one state and one timer row per (segment, profile) as before; the
sink folds those into the profile's rows the first time it writes them and deletes
them. Each entry carries the generation of its segment (bumped by every backfill), so
entries of an older backfill are ignored.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

import msgspec
from sqlalchemy import Connection, select
from sqlalchemy.dialects import postgresql, sqlite

from remarket.segments.membership import chunks
from remarket.segments.values import micros_of, to_datetime
from remarket.storage.state import segment_members, segment_states, segment_timers

__all__ = ["COMBINED", "Entry", "Stored", "forget", "load", "save", "write_timers"]

COMBINED: Final = ""
"""The ``segment`` of a profile's combined row."""


class Entry(msgspec.Struct, array_like=True, gc=False):
    """One segment's state of one profile."""

    generation: int
    evaluated_at: int  # epoch microseconds: evaluation time never goes back
    due: int | None  # the next instant it may change with no event (None: never)
    state: bytes


_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER: Final = msgspec.msgpack.Decoder(dict[str, Entry])


@dataclass(slots=True)
class Stored:
    """What the store holds for the profiles of one transaction (absent: nothing)."""

    entries: dict[tuple[str, str], Entry] = field(default_factory=dict)
    members: dict[tuple[str, str], int] = field(default_factory=dict)
    # Profiles that still have per-segment (backfill) rows, to fold into their row.
    loose: set[str] = field(default_factory=set)


def load(conn: Connection, pids: Sequence[str], generations: Mapping[str, int]) -> Stored:
    """The states (of the live segments, at their generation) and memberships of ``pids``."""
    stored = Stored()
    wanted = [*generations, COMBINED]
    for chunk in chunks(list(pids)):
        rows = conn.execute(
            select(segment_states.c.segment, segment_states.c.profile_id)
            .add_columns(segment_states.c.state, segment_states.c.evaluated_at)
            .where(segment_states.c.profile_id.in_(chunk), segment_states.c.segment.in_(wanted))
        ).all()
        loose: dict[tuple[str, str], Entry] = {}
        for segment, pid, state, evaluated_at in rows:
            if segment != COMBINED:
                # A backfill row is the state as of its generation (the current one).
                entry = Entry(generations[segment], micros_of(evaluated_at), None, state)
                loose[(segment, pid)] = stored.entries[(segment, pid)] = entry
        if loose:
            pids_loose = sorted({pid for _, pid in loose})
            stored.loose.update(pids_loose)
            for segment, pid, due_at in conn.execute(
                select(segment_timers.c.segment, segment_timers.c.profile_id)
                .add_columns(segment_timers.c.due_at)
                .where(
                    segment_timers.c.profile_id.in_(pids_loose),
                    segment_timers.c.segment != COMBINED,
                )
            ):
                if (segment, pid) in loose:
                    loose[(segment, pid)].due = micros_of(due_at)
        for segment, pid, state, _ in rows:
            if segment == COMBINED:
                for name, entry in _DECODER.decode(state).items():
                    if generations.get(name) == entry.generation:
                        stored.entries[(name, pid)] = entry
        for segment, pid, version in conn.execute(
            select(segment_members.c.segment, segment_members.c.profile_id)
            .add_columns(segment_members.c.version)
            .where(segment_members.c.profile_id.in_(chunk), segment_members.c.segment.in_(wanted))
        ):
            stored.members[(segment, pid)] = version
    return stored


def _earliest(entries: Iterable[Entry]) -> int | None:
    return min((e.due for e in entries if e.due is not None), default=None)


def save(
    conn: Connection,
    stored: Stored,
    changed: Mapping[tuple[str, str], Entry],
    now: datetime,
    *,
    fired: Iterable[str] = (),
) -> None:
    """Write the rows of the profiles with a changed entry (every live entry of each),
    their timer when its instant moved (or ``fired``: it was due), and delete the
    backfill rows folded into them."""
    by_profile: dict[str, dict[str, Entry]] = defaultdict(dict)
    fired = set(fired)
    touched = {pid for _, pid in changed} | stored.loose | fired
    for (segment, pid), entry in stored.entries.items():
        if pid in touched:
            by_profile[pid][segment] = entry
    before = {pid: _earliest(entries.values()) for pid, entries in by_profile.items()}
    for (segment, pid), entry in changed.items():
        by_profile[pid][segment] = entry
    # A fired timer of a profile with no state left goes.
    timers: dict[tuple[str, str], datetime | None] = {
        (COMBINED, pid): None for pid in fired if pid not in by_profile
    }
    for pid, entries in by_profile.items():
        due = _earliest(entries.values())
        if due != before.get(pid) or pid in stored.loose or pid in fired:
            timers[(COMBINED, pid)] = None if due is None else to_datetime(due)
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    stmt = insert(segment_states)
    stmt = stmt.on_conflict_do_update(
        index_elements=[segment_states.c.segment, segment_states.c.profile_id],
        set_={"state": stmt.excluded.state, "evaluated_at": stmt.excluded.evaluated_at},
    )
    if by_profile:
        conn.execute(
            stmt,
            [
                {"segment": COMBINED, "profile_id": pid, "state": _ENCODER.encode(entries)}
                | {"evaluated_at": now}
                for pid, entries in sorted(by_profile.items())
            ],
        )
    for chunk in chunks(sorted(stored.loose)):
        for table in (segment_states, segment_timers):
            conn.execute(
                table.delete().where(table.c.profile_id.in_(chunk), table.c.segment != COMBINED)
            )
    write_timers(conn, timers)


def write_timers(conn: Connection, timers: Mapping[tuple[str, str], datetime | None]) -> None:
    """Set (or, for None, delete) timer rows by (segment, profile)."""
    due = [
        {"segment": s, "profile_id": p, "due_at": at}
        for (s, p), at in timers.items()
        if at is not None
    ]
    by_segment: dict[str, list[str]] = defaultdict(list)
    for (s, p), at in timers.items():
        if at is None:
            by_segment[s].append(p)
    for s, pids in by_segment.items():
        for chunk in chunks(pids):
            conn.execute(
                segment_timers.delete().where(
                    segment_timers.c.segment == s, segment_timers.c.profile_id.in_(chunk)
                )
            )
    if due:
        insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        stmt = insert(segment_timers)
        stmt = stmt.on_conflict_do_update(
            index_elements=[segment_timers.c.segment, segment_timers.c.profile_id],
            set_={"due_at": stmt.excluded.due_at},
        )
        conn.execute(stmt, due)


def forget(conn: Connection, pids: Iterable[str], segments: Iterable[str]) -> None:
    """Delete every state and timer of ``pids`` in ``segments`` (and their combined rows)."""
    names = [*segments, COMBINED]
    for chunk in chunks(sorted(pids)):
        for table in (segment_states, segment_timers):
            conn.execute(
                table.delete().where(table.c.profile_id.in_(chunk), table.c.segment.in_(names))
            )
