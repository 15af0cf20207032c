"""Real-time segment membership: events, timers and backfills, each in one transaction.

:class:`LiveSegments` keeps, for every live segment and profile, the real-time state
(``segment_states``), the membership (``segment_members``) and a timer for the next
instant the membership may change with no new event (``segment_timers``). Three things
move it, always under one lock and inside a state-store transaction that holds the
sink's offset row, so they never interleave (in this process or across processes):

- :meth:`apply`, the log sink: each batch's events by profile → states → transitions,
  committed with the fenced offset;
- :meth:`run_timers`: profiles whose timer is due are re-checked at now;
- :meth:`backfill_pending`: a new or edited segment is computed from the warehouse
  (members by SQL, states by replay) and goes live.

Events published for transitions (``Segment Entered`` / ``Segment Exited``) come back
through the log; they only reach segments that read events of those names. When a
profile has been merged into another, the states of both are combined under the
survivor and the merged-away profile leaves its segments. A segment that fails for one
profile is recorded in ``segment_errors``; the other profiles go on.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final

import msgspec
from prometheus_client import Counter
from sqlalchemy import Connection, Engine, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from remarket.clock import Clock, SystemClock
from remarket.errors import OffsetConflict
from remarket.profiles.identity import Identifier, identifiers_of
from remarket.schema.events import Identify, Message, Track
from remarket.segments.backfill import Reads, reads_of, replay_states, sql_members
from remarket.segments.catalog import SegmentCatalog
from remarket.segments.leaves import ProfileState
from remarket.segments.matchers import EventTest, EventView, MatcherPool, view_of
from remarket.segments.membership import (
    CONSUMER,
    PUBLISHER_SOURCE,
    Transition,
    chunks,
    hold_offset,
    write_transitions,
)
from remarket.segments.realtime import RealtimeSegment
from remarket.segments.states import (
    COMBINED,
    Entries,
    Entry,
    ProfileCache,
    Stored,
    write_timers,
)
from remarket.segments.states import forget as forget_states
from remarket.segments.states import load as load_states
from remarket.segments.states import save as save_states
from remarket.segments.values import micros_of, to_datetime
from remarket.storage.state import (
    identities,
    profiles,
    segment_errors,
    segment_members,
    segment_states,
    segment_timers,
    segments,
)
from remarket.storage.state.offsets import claim_offset, committed_offset
from remarket.storage.state.reads import any_row
from remarket.storage.state.tables import erasures
from remarket.storage.state.turns import write_turn
from remarket.storage.warehouse import Warehouse

__all__ = ["SEGMENT_ERRORS", "SEGMENT_TRANSITIONS", "LiveSegments"]

_log = logging.getLogger(__name__)

_NOTHING: Final[Mapping[str, Any]] = MappingProxyType({})

SEGMENT_TRANSITIONS: Final = Counter(
    "remarket_segment_transitions", "Profiles entering or exiting segments.", ["kind"]
)
SEGMENT_ERRORS: Final = Counter(
    "remarket_segment_errors", "Segment evaluations that failed for one profile.", ["segment"]
)


@dataclass(slots=True)
class _Segment:
    name: str
    version: int
    evaluator: RealtimeSegment
    reads: Reads
    generation: int
    empty: ProfileState = field(default_factory=list)
    """The state of a profile with no events: a profile without a stored state has it."""
    empty_bytes: bytes = b""


@dataclass(slots=True)
class _Work:
    """What one transaction changes, gathered before it is written."""

    entries: Entries = field(default_factory=dict)
    decided: dict[str, set[str]] = field(default_factory=dict)
    """The segments decided for each profile (by its events, a merge or a timer)."""
    fired: set[str] = field(default_factory=set)
    """Profiles whose timer was due: it is written again (or deleted) in any case."""
    transitions: list[Transition] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)


class LiveSegments:
    """Maintains the memberships of live segments; the segments sink of the workers.

    Not tied to the log: :meth:`apply` takes decoded ``(offset, message)`` rows.
    """

    name = CONSUMER

    def __init__(
        self,
        engine: Engine,
        warehouse: Warehouse,
        clock: Clock | None = None,
        *,
        cache_size: int = 50_000,
    ) -> None:
        self._engine = engine
        self._warehouse = warehouse
        self._clock = clock or SystemClock()
        self._catalog = SegmentCatalog(engine, clock=self._clock)
        self._lock = threading.Lock()
        self._key: tuple[tuple[str, int, int], ...] | None = None
        self._live: dict[str, _Segment] = {}
        self._tests: dict[str | None, list[tuple[EventTest, list[_Segment]]]] = {}
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        # What the store holds for the profiles used last; see ProfileCache for when it
        # is dropped.
        self._cache = ProfileCache(cache_size)
        self._erasures: tuple[object, ...] | None = None

    def committed(self) -> int:
        with self._engine.connect() as conn:
            return committed_offset(conn, CONSUMER)

    # -- the live set --------------------------------------------------------------

    def _refresh(self, conn: Connection) -> dict[str, _Segment]:
        """The live segments, compiled again only when one went live or away."""
        rows = conn.execute(
            select(segments.c.name, segments.c.live_version, segments.c.generation)
            .where(segments.c.deleted_at.is_(None), segments.c.live_version.is_not(None))
            .order_by(segments.c.name)
        ).all()
        key = tuple((r.name, r.live_version, r.generation) for r in rows)
        erased = tuple(
            conn.execute(select(func.max(erasures.c.id), func.max(erasures.c.completed_at))).one()
        )
        if key != self._key or erased != self._erasures:
            # Entries and memberships cached for other segments (or generations), or of
            # an erased person, are no longer what the store holds.
            self._cache.clear()
            self._erasures = erased
        if key != self._key:
            live: dict[str, _Segment] = {}
            pool = MatcherPool()
            for name, version, generation in key:
                definition = self._catalog.definition(name, version)
                if definition is None:
                    continue
                core = self._catalog.compile(definition)
                evaluator = RealtimeSegment(core, pool=pool)
                empty = evaluator.new_state()
                live[name] = _Segment(
                    name,
                    version,
                    evaluator,
                    reads_of(core),
                    generation,
                    empty,
                    evaluator.encode(empty),
                )
            self._live, self._key = live, key
            # The tests an event must pass to change a segment's state, by track event
            # name (None: identify); a test the pool shares is run once per event.
            tests: dict[str | None, dict[int, tuple[EventTest, list[_Segment]]]] = defaultdict(dict)
            for segment in live.values():
                for name, test in segment.evaluator.triggers():
                    tests[name].setdefault(id(test), (test, []))[1].append(segment)
            self._tests = {name: list(found.values()) for name, found in tests.items()}
        return self._live

    # -- the sink ------------------------------------------------------------------

    def apply(self, rows: Sequence[tuple[int, Message]], through: int, expected: int) -> None:
        """Apply a batch and move the offset from ``expected`` to ``through`` (fenced)."""
        with (
            self._lock,
            write_turn(self._engine),
            self._dropping_cache_on_failure(),
            self._engine.begin() as conn,
        ):
            claim_offset(conn, CONSUMER, through, expected)
            live = self._refresh(conn)
            if not live:
                return
            events, touched = self._events_by_profile(conn, rows)
            if not touched:
                return
            merged = self._merged_into(conn, touched)
            everyone = sorted(set(touched) | {old for olds in merged.values() for old in olds})
            stored = self._load(conn, everyone, live)
            clock = self._clock.now()
            now = micros_of(clock)
            work = _Work()
            for pid in touched:
                olds = merged.get(pid, ())
                # Only the segments whose tests one of the profile's events passes can
                # change (time alone is the timers' job), unless profiles merged into it.
                affected = self._affected(events.get(pid, ()))
                if olds:
                    for segment in live.values():
                        fresh = affected[segment.name][1] if segment.name in affected else []
                        self._evaluate(segment, pid, fresh, olds, now, stored, work)
                    continue
                for segment, fresh in affected.values():
                    self._evaluate(segment, pid, fresh, olds, now, stored, work)
            self._enter_empty(touched, live, stored, now, work)
            work.gone = sorted({old for olds in merged.values() for old in olds})
            self._write(conn, work, stored, live, clock)

    def _affected(self, views: Sequence[EventView]) -> dict[str, tuple[_Segment, list[EventView]]]:
        """The segments whose state these events (oldest first) may change, by name, each
        with the events that may change it, in order."""
        found: dict[str, tuple[_Segment, list[EventView]]] = {}
        for view in views:
            for test, readers in self._tests.get(view.event, ()):
                if not test(view):
                    continue
                for segment in readers:
                    entry = found.get(segment.name)
                    if entry is None:
                        found[segment.name] = (segment, [view])
                    elif entry[1][-1] is not view:
                        entry[1].append(view)
        return found

    def _enter_empty(
        self,
        touched: Sequence[str],
        live: dict[str, _Segment],
        stored: Stored,
        now: int,
        work: _Work,
    ) -> None:
        """Decide the touched profiles no segment state exists for and no event changed:
        their state is the empty one, so they are members iff an empty state is (e.g.
        "never ordered"). Nothing is stored for them."""
        members: dict[str, list[str]] = defaultdict(list)
        for pid in touched:
            for name in stored.members.get(pid, ()):
                members[name].append(pid)
        for segment in live.values():
            name, evaluator, empty = segment.name, segment.evaluator, segment.empty
            # Mostly the empty state is a member or not whatever the profile id.
            same = evaluator.member_for_all(empty, now)
            # If it is not, only members can change (they leave).
            for pid in members.get(name, ()) if same is False else touched:
                if name in work.decided.get(pid, _NOTHING) or name in stored.entries.get(
                    pid, _NOTHING
                ):
                    continue
                was = name in stored.members.get(pid, _NOTHING)
                if same is not None and same == was:
                    continue
                member = evaluator.member_at(empty, pid, now) if same is None else same
                if member != was:
                    work.transitions.append(
                        Transition(name, segment.version, pid, member, to_datetime(now))
                    )

    def _events_by_profile(
        self, conn: Connection, rows: Sequence[tuple[int, Message]]
    ) -> tuple[dict[str, list[EventView]], list[str]]:
        """Views of the events some live segment reads, by profile; and the profiles
        the batch touched. Published transitions touch nothing unless a segment reads them
        (else every transition would come back as activity)."""
        tests = self._tests
        seen: list[tuple[Message, bool, list[Identifier]]] = []
        for _, message in rows:
            if isinstance(message, Identify):
                read = None in tests
            elif isinstance(message, Track):
                read = message.event is not None and message.event in tests
            else:
                read = False
            if read or message.source_id != PUBLISHER_SOURCE:
                seen.append((message, read, identifiers_of(message)))
        owners = self._profiles_of(conn, {i for _, _, ids in seen for i in ids})
        events: dict[str, list[EventView]] = defaultdict(list)
        touched: set[str] = set()
        for message, read, ids in seen:
            for identifier in ids:
                pid = owners.get(identifier)
                if pid is not None:
                    break
            else:
                continue
            touched.add(pid)
            if read:
                events[pid].append(view_of(message))
        for views in events.values():
            views.sort(key=lambda v: v.at)
        return events, sorted(touched)

    @staticmethod
    def _profiles_of(conn: Connection, wanted: set[Identifier]) -> dict[Identifier, str]:
        found: dict[Identifier, str] = {}
        for chunk in chunks(sorted(wanted)):
            rows = conn.execute(
                select(identities.c.kind, identities.c.value, identities.c.profile_id).where(
                    identities.c.kind.in_({k for k, _ in chunk}),
                    identities.c.value.in_({v for _, v in chunk}),
                )
            )
            for kind, value, pid in rows:
                if (kind, value) in wanted:
                    found[(kind, value)] = pid
        return found

    @staticmethod
    def _merged_into(conn: Connection, touched: Sequence[str]) -> dict[str, list[str]]:
        """Profiles merged into the touched ones that still hold segment rows."""
        merged: dict[str, list[str]] = defaultdict(list)
        for chunk in chunks(list(touched)):
            rows = conn.execute(
                select(profiles.c.profile_id, profiles.c.merged_into).where(
                    profiles.c.merged_into.in_(chunk)
                )
            ).all()
            olds = [old for old, _ in rows]
            holding: set[str] = set()
            for inner in chunks(olds):
                for table in (segment_states, segment_members):
                    holding |= set(
                        conn.scalars(
                            select(table.c.profile_id).where(table.c.profile_id.in_(inner))
                        )
                    )
            for old, new in rows:
                if old in holding:
                    merged[new].append(old)
        return merged

    def _load(self, conn: Connection, pids: Sequence[str], live: dict[str, _Segment]) -> Stored:
        stored = Stored(profiles=list(pids))
        missing = self._cache.read(pids, stored)
        generations = {name: seg.generation for name, seg in live.items()}
        load_states(conn, missing, generations, stored)
        return stored

    @contextmanager
    def _dropping_cache_on_failure(self) -> Iterator[None]:
        # The cache may hold what a rolled-back transaction wrote.
        try:
            yield
        except BaseException:
            self._cache.clear()
            raise

    def _evaluate(
        self,
        segment: _Segment,
        pid: str,
        views: Sequence[EventView],
        olds: Sequence[str],
        now: int,
        stored: Stored,
        work: _Work,
    ) -> None:
        """Fold a profile's new events (and merged-away profiles) into its state; decide.

        Times are epoch microseconds. Only what changed is written: the state when its
        bytes (or the time it is evaluated at, if an event is ahead of the clock) moved,
        the timer when its instant did. Nothing is decided if the events left the state as
        it was and no window edge has passed since it was last decided.
        """
        name, evaluator = segment.name, segment.evaluator
        held = stored.entries.get(pid, _NOTHING)
        members = stored.members.get(pid, _NOTHING)
        decided = work.decided.setdefault(pid, set())
        try:
            before = held.get(name)
            state = evaluator.decode(before.state) if before else evaluator.new_state()
            at = max(now, before.evaluated_at) if before else now
            for old in olds:
                other = stored.entry(name, old)
                if other is not None:
                    state = evaluator.merge(state, evaluator.decode(other.state))
                    at = max(at, other.evaluated_at)
            moved = bool(olds)
            for view in views:
                at = max(at, view.at)
                moved = evaluator.apply_at(state, view, at) or moved
            # Membership holds from the last decision until its due instant.
            if not moved and (before is None or before.due is None or at < before.due):
                return
            member, upcoming = evaluator.decide_at(state, pid, at)
            encoded = evaluator.encode(state)
        except Exception as exc:
            _log.exception("segment %s failed for profile %s", name, pid)
            SEGMENT_ERRORS.labels(name).inc()
            work.errors.append(
                {"segment": name, "version": segment.version, "profile_id": pid}
                | {"detail": f"{type(exc).__name__}: {exc}", "at": to_datetime(now)}
            )
            # A failing profile must not spin the timers.
            if before is not None:
                work.entries.setdefault(pid, {})[name] = msgspec.structs.replace(before, due=None)
            decided.add(name)
            return
        decided.add(name)
        for old in olds:
            version = stored.member(name, old)
            if version is not None:
                work.transitions.append(Transition(name, version, old, False, to_datetime(at)))
        if member != (name in members):
            work.transitions.append(Transition(name, segment.version, pid, member, to_datetime(at)))
        # Evaluation time matters beyond the clock only: later evaluations start at
        # max(now, evaluated_at) and the clock does not go back.
        if before is None:
            changed = encoded != segment.empty_bytes  # no entry is the empty state
            due = None
        else:
            changed = encoded != before.state
            due = before.due
        if changed or at > now or olds or upcoming != due:
            work.entries.setdefault(pid, {})[name] = Entry(
                segment.generation, at, upcoming, encoded
            )

    def _write(
        self,
        conn: Connection,
        work: _Work,
        stored: Stored,
        live: dict[str, _Segment],
        now: datetime,
    ) -> None:
        forget_states(conn, work.gone, live)
        gone = set(work.gone)
        stored.loose -= gone
        changed = {pid: entries for pid, entries in work.entries.items() if pid not in gone}
        save_states(conn, stored, changed, now, fired=work.fired)
        write_transitions(conn, work.transitions)
        self._cache.keep(stored.profiles, stored, changed, work.transitions, gone)
        for t in work.transitions:
            SEGMENT_TRANSITIONS.labels("entered" if t.entered else "exited").inc()
        if work.errors:
            conn.execute(segment_errors.insert(), work.errors)

    # -- timers --------------------------------------------------------------------

    def run_timers(self, limit: int = 1000) -> int:
        """Re-check the profiles whose timer is due at the clock's now; how many."""
        due_at = segment_timers.c.due_at <= self._clock.now()
        if not any_row(self._engine, select(segment_timers.c.segment).where(due_at)):
            return 0
        with (
            self._lock,
            write_turn(self._engine),
            self._dropping_cache_on_failure(),
            self._engine.begin() as conn,
        ):
            hold_offset(conn)
            live = self._refresh(conn)
            now = self._clock.now()
            due = conn.execute(
                select(segment_timers.c.segment, segment_timers.c.profile_id)
                .where(segment_timers.c.due_at <= now)
                .order_by(segment_timers.c.due_at)
                .limit(limit)
            ).all()
            if not due:
                return 0
            # A profile's own timer ("") may be due for any of its segments; a backfill's
            # timer (a segment name) for that segment; timers of gone segments are dropped.
            pids = sorted({p for s, p in due if s == COMBINED or s in live})
            stored = self._load(conn, pids, live)
            # Once fired (and read by the load), a backfill's timer is folded into the
            # profile's own.
            write_timers(conn, {(s, p): None for s, p in due if s != COMBINED})
            at = micros_of(now)
            work = _Work(fired=set(pids))
            for s, p in due:
                for segment in live.values() if s == COMBINED else [live.get(s)]:
                    entry = stored.entry(segment.name, p) if segment else None
                    if segment and entry is not None and entry.due is not None and entry.due <= at:
                        self._evaluate(segment, p, (), (), at, stored, work)
            self._write(conn, work, stored, live, now)
            return len(due)

    # -- backfill ------------------------------------------------------------------

    def backfill_pending(self) -> list[str]:
        """Backfill every segment waiting for it (those it uses first); their names."""
        with self._engine.connect() as conn:
            pending = list(
                conn.scalars(
                    select(segments.c.name)
                    .where(segments.c.deleted_at.is_(None), segments.c.pending.is_(True))
                    .order_by(segments.c.name)
                )
            )
        done: list[str] = []
        for name in self._dependencies_first(pending):
            try:
                if self.backfill(name):
                    done.append(name)
            except OffsetConflict:
                _log.info("segment %s: the sink moved on during backfill; retrying", name)
        return done

    def _dependencies_first(self, names: list[str]) -> list[str]:
        uses: dict[str, set[str]] = {}
        for name in names:
            info = self._catalog.get(name)
            if info is not None:
                uses[name] = set(self._catalog.compile(info.definition).references)
        ordered: list[str] = []
        while uses:
            ready = sorted(n for n, deps in uses.items() if not deps & set(uses))
            ready = ready or sorted(uses)[:1]
            for n in ready:
                ordered.append(n)
                del uses[n]
        return ordered

    def backfill(self, name: str) -> bool:
        """Compute a segment's current version from the warehouse and make it live.

        Members come from SQL as of now; states from replaying the events the sink has
        applied. Profiles entering or leaving (against the previous version) get their
        transitions; the others stay members, now of the new version. False if the
        segment is gone.
        """
        with self._lock:
            info = self._catalog.get(name)
            if info is None:
                return False
            through = self.committed()
            now = self._clock.now()
            core = self._catalog.compile(info.definition)
            evaluator = RealtimeSegment(core)
            found = sql_members(self._warehouse, core, now)
            replayed = list(replay_states(self._warehouse, evaluator, through, now))
            with self._engine.begin() as conn:
                if hold_offset(conn) != through:
                    raise OffsetConflict(f"segments sink moved past {through}", field="expected")
                self._install(conn, info.name, info.version, evaluator, found, replayed, now)
        return True

    def _install(
        self,
        conn: Connection,
        name: str,
        version: int,
        evaluator: RealtimeSegment,
        found: set[str],
        replayed: list[tuple[str, ProfileState, datetime]],
        now: datetime,
    ) -> None:
        for table in (segment_states, segment_timers):
            conn.execute(table.delete().where(table.c.segment == name))
        states = [
            {"segment": name, "profile_id": pid, "state": evaluator.encode(state)}
            | {"evaluated_at": at}
            for pid, state, at in replayed
        ]
        for chunk in chunks(states, 1000):
            conn.execute(segment_states.insert(), list(chunk))
        timers = [
            {"segment": name, "profile_id": pid, "due_at": due}
            for pid, state, at in replayed
            if (due := evaluator.next_change(state, at)) is not None
        ]
        for chunk in chunks(timers, 1000):
            conn.execute(segment_timers.insert(), list(chunk))
        before = set(
            conn.scalars(
                select(segment_members.c.profile_id).where(segment_members.c.segment == name)
            )
        )
        transitions = [Transition(name, version, p, True, now) for p in sorted(found - before)]
        transitions += [Transition(name, version, p, False, now) for p in sorted(before - found)]
        conn.execute(
            update(segment_members).where(segment_members.c.segment == name).values(version=version)
        )
        write_transitions(conn, transitions)
        conn.execute(
            update(segments)
            .where(segments.c.name == name)
            .values(live_version=version, pending=False, generation=segments.c.generation + 1)
        )
