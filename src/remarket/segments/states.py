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

:class:`ProfileCache` keeps what the store holds for recently seen profiles (entries
and memberships, as committed), so the sink reads only the others.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

import msgspec
from sqlalchemy import Connection, select

from remarket.segments.membership import Transition, chunks
from remarket.segments.values import micros_of, to_datetime
from remarket.storage.state import segment_members, segment_states, segment_timers
from remarket.storage.state.bulk import bulk_insert

__all__ = [
    "COMBINED",
    "Entries",
    "Entry",
    "ProfileCache",
    "Stored",
    "forget",
    "load",
    "save",
    "write_timers",
]

COMBINED: Final = ""
"""The ``segment`` of a profile's combined row."""


class Entry(msgspec.Struct, array_like=True, gc=False):
    """One segment's state of one profile."""

    generation: int
    evaluated_at: int  # epoch microseconds: evaluation time never goes back
    due: int | None  # the next instant it may change with no event (None: never)
    state: bytes


_ENCODER: Final = msgspec.msgpack.Encoder()
_KEY: Final = ("segment", "profile_id")
_DECODER: Final = msgspec.msgpack.Decoder(dict[str, Entry])


Entries = dict[str, dict[str, Entry]]
"""Entries by profile, then by segment."""


@dataclass(slots=True)
class Stored:
    """What the store holds for the profiles of one transaction (absent: nothing)."""

    entries: Entries = field(default_factory=dict)
    # The version of each segment a profile is a member of, by profile.
    members: dict[str, dict[str, int]] = field(default_factory=dict)
    # Profiles that still have per-segment (backfill) rows, to fold into their row.
    loose: set[str] = field(default_factory=set)
    profiles: list[str] = field(default_factory=list)
    """Every profile read (with rows or not)."""

    def entry(self, segment: str, pid: str) -> Entry | None:
        found = self.entries.get(pid)
        return found.get(segment) if found is not None else None

    def member(self, segment: str, pid: str) -> int | None:
        """The version of ``segment`` the profile is a member of (None: not a member)."""
        found = self.members.get(pid)
        return found.get(segment) if found is not None else None


def load(
    conn: Connection, pids: Sequence[str], generations: Mapping[str, int], stored: Stored
) -> None:
    """Add to ``stored`` the states (of the live segments, at their generation) and the
    memberships of ``pids``."""
    # By profile only: with segment IN (...) as well, SQLite probes the primary key
    # (segment, profile_id) once per pair.
    for chunk in chunks(list(pids)):
        rows = conn.execute(
            select(segment_states.c.segment, segment_states.c.profile_id)
            .add_columns(segment_states.c.state)
            .where(segment_states.c.profile_id.in_(chunk))
        ).all()
        loose = _loose(conn, [(s, p) for s, p, _ in rows if s in generations], generations)
        for (segment, pid), entry in loose.items():
            stored.entries.setdefault(pid, {})[segment] = entry
            stored.loose.add(pid)
        for segment, pid, state in rows:
            if segment == COMBINED:
                current = {
                    name: entry
                    for name, entry in _DECODER.decode(state).items()
                    if generations.get(name) == entry.generation
                }
                stored.entries[pid] = stored.entries.get(pid, {}) | current
        for segment, pid, version in conn.execute(
            select(segment_members.c.segment, segment_members.c.profile_id)
            .add_columns(segment_members.c.version)
            .where(segment_members.c.profile_id.in_(chunk))
        ):
            if segment in generations:
                stored.members.setdefault(pid, {})[segment] = version


class ProfileCache:
    """What the store holds for the profiles used last (entries and memberships of the
    live segments), as of the transactions this process committed; at most
    ``capacity`` profiles, the least recently used dropped first.

    Valid only while nothing else writes them: the owner clears it when the live
    segments change, after an erasure anywhere, when a transaction fails, and one
    process at a time runs the sink and its timers (as for the profile store's cache).
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._rows: OrderedDict[str, tuple[dict[str, Entry], dict[str, int]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rows)

    def clear(self) -> None:
        self._rows.clear()

    def read(self, pids: Iterable[str], stored: Stored) -> list[str]:
        """Put the cached profiles of ``pids`` in ``stored``; the profiles not cached."""
        rows, missing = self._rows, []
        for pid in pids:
            found = rows.get(pid)
            if found is None:
                missing.append(pid)
                continue
            rows.move_to_end(pid)
            entries, members = found
            if entries:
                stored.entries[pid] = entries
            if members:
                stored.members[pid] = members
        return missing

    def keep(
        self,
        pids: Iterable[str],
        stored: Stored,
        changed: Entries,
        transitions: Sequence[Transition],
        gone: Collection[str],
    ) -> None:
        """Remember ``pids`` as written: ``stored`` with the ``changed`` entries and the
        ``transitions``; profiles ``gone`` (merged away) are forgotten."""
        members = {pid: dict(stored.members.get(pid, {})) for pid in pids}
        for t in transitions:
            if t.profile_id not in members:
                continue
            if t.entered:
                members[t.profile_id][t.segment] = t.version
            else:
                members[t.profile_id].pop(t.segment, None)
        rows = self._rows
        for pid, held in members.items():
            if pid in gone:
                rows.pop(pid, None)
                continue
            entries = stored.entries.get(pid, {})
            if pid in changed:
                entries = entries | changed[pid]
            rows[pid] = (entries, held)
            rows.move_to_end(pid)
        while len(rows) > self._capacity:
            rows.popitem(last=False)


def _loose(
    conn: Connection, pairs: Sequence[tuple[str, str]], generations: Mapping[str, int]
) -> dict[tuple[str, str], Entry]:
    """The backfill rows of (segment, profile) ``pairs`` (live segments) with their timers:
    each the state as of its generation (the current one)."""
    loose: dict[tuple[str, str], Entry] = {}
    wanted = set(pairs)
    for chunk in chunks(sorted({pid for _, pid in pairs})):
        for segment, pid, state, evaluated_at in conn.execute(
            select(segment_states.c.segment, segment_states.c.profile_id)
            .add_columns(segment_states.c.state, segment_states.c.evaluated_at)
            .where(segment_states.c.profile_id.in_(chunk))
        ):
            if (segment, pid) in wanted:
                loose[(segment, pid)] = Entry(
                    generations[segment], micros_of(evaluated_at), None, state
                )
        for segment, pid, due_at in conn.execute(
            select(segment_timers.c.segment, segment_timers.c.profile_id)
            .add_columns(segment_timers.c.due_at)
            .where(segment_timers.c.profile_id.in_(chunk))
        ):
            if (segment, pid) in loose:
                loose[(segment, pid)].due = micros_of(due_at)
    return loose


def _earliest(entries: Iterable[Entry]) -> int | None:
    return min([e.due for e in entries if e.due is not None], default=None)


def save(
    conn: Connection,
    stored: Stored,
    changed: Entries,
    now: datetime,
    *,
    fired: Iterable[str] = (),
) -> None:
    """Write the rows of the profiles with a changed entry (every live entry of each),
    their timer when its instant moved (or ``fired``: it was due), and delete the
    backfill rows folded into them."""
    fired = set(fired)
    by_profile: Entries = {}
    timers: dict[tuple[str, str], datetime | None] = {}
    for pid in sorted(changed.keys() | stored.loose | fired):
        before = stored.entries.get(pid, {})
        entries = before | changed[pid] if pid in changed else before
        if not entries:
            # A fired timer of a profile with no state left goes.
            if pid in fired:
                timers[(COMBINED, pid)] = None
            continue
        by_profile[pid] = entries
        due = _earliest(entries.values())
        if pid in stored.loose or pid in fired or due != _earliest(before.values()):
            timers[(COMBINED, pid)] = None if due is None else to_datetime(due)
    bulk_insert(
        conn,
        segment_states,
        [
            {"segment": COMBINED, "profile_id": pid, "state": _ENCODER.encode(entries)}
            | {"evaluated_at": now}
            for pid, entries in by_profile.items()
        ],
        replace_on=_KEY,
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
    bulk_insert(conn, segment_timers, due, replace_on=_KEY)


def forget(conn: Connection, pids: Iterable[str], segments: Iterable[str]) -> None:
    """Delete every state and timer of ``pids`` in ``segments`` (and their combined rows)."""
    names = [*segments, COMBINED]
    for chunk in chunks(sorted(pids)):
        for table in (segment_states, segment_timers):
            conn.execute(
                table.delete().where(table.c.profile_id.in_(chunk), table.c.segment.in_(names))
            )
