"""The durable journey runtime: the log sink, the timers and the schedules.

Every profile's walk through a journey is a row of ``journey_instances`` (its node,
phase and timer ``due_at``). Three things move it, each in one state-store transaction
that first locks the journeys sink's offset row (so they never interleave, in this
process or another):

- :meth:`JourneyRuntime.apply`, the log sink: events enter profiles (entry event, or a
  published ``Segment Entered``) and walk them to their first wait or branch, end walks
  (``exit_when``), wake ``until_event`` waits (due now) and record conversions;
- :meth:`JourneyRuntime.run_due`: instances whose timer is due are walked on with
  :func:`~remarket.journeys.interpreter.advance`; their effects are committed with the
  new position: messages into the channel outbox (idempotency key
  ``journey:version:profile:node:seq``), trait updates as identify events into the
  log outbox, assignments and steps. A crash before the commit loses nothing (the timer
  is still due), after it repeats nothing (the timer moved);
- :meth:`JourneyRuntime.run_schedules`: schedule entries whose run is due.

A wait that fell due while the server was down fires once when it starts: timers are
rows, compared with the clock's now. A paused journey's instances stay where they are
until it is active again.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

import msgspec
from sqlalchemy import Connection, Engine, func, select, update

from remarket.channels.outbox import OutboxMessage, enqueue_many
from remarket.clock import Clock, SystemClock
from remarket.journeys.catalog import CONSUMER, JourneyCatalog
from remarket.journeys.conditions import members_among
from remarket.journeys.funnel import EntrySkip
from remarket.journeys.interpreter import Effect, Plan, Position, advance
from remarket.profiles.identity import Identifier, identifiers_of
from remarket.schema.events import Message, Track, as_utc
from remarket.schema.journey import (
    EventEntry,
    JourneyDefinition,
    ScheduleEntry,
    SegmentEntry,
    WaitNode,
)
from remarket.schema.segment import PropertyFilter, duration_seconds
from remarket.segments.membership import ENTERED, chunks, hold_offset
from remarket.segments.values import matches, text_at
from remarket.storage.state import (
    identities,
    journey_assignments,
    journey_instances,
    journey_steps,
    journeys,
    profile_traits,
    profiles,
    segment_members,
    segment_outbox,
)
from remarket.storage.state.bulk import bulk_insert, bulk_update
from remarket.storage.state.offsets import claim_offset, committed_offset
from remarket.storage.state.published import identify_rows
from remarket.storage.state.reads import any_row
from remarket.storage.warehouse import Warehouse

__all__ = [
    "PUBLISHER_SOURCE",
    "JourneyRuntime",
    "entry_refusal",
    "filters_hold",
    "instance_id_of",
]

_log = logging.getLogger(__name__)

PUBLISHER_SOURCE: Final = "journeys"
"""The ``source_id`` of identify events a journey publishes (``update_trait``)."""

_OBJECT: Final = msgspec.json.Decoder(dict[str, Any])
_PAUSE_TTL_S: Final = 0.25
_LIMIT_TTL_S: Final = 1.0


def filters_hold(where: Iterable[PropertyFilter], properties: Mapping[str, Any]) -> bool:
    """Whether event properties pass every filter (the segment DSL's semantics)."""
    return all(
        matches(f.operator, f.value, text_at(properties, f.path.split(".")), 0) for f in where
    )


def instance_id_of(journey_id: str, profile_id: str, seq: int) -> str:
    return f"{journey_id}:{profile_id}:{seq}"


@dataclass(slots=True)
class _Live:
    id: str
    status: str
    version: int
    plan: Plan


@dataclass(slots=True)
class _Changes:
    """What one transaction writes, gathered first."""

    inserted: list[dict[str, Any]] = field(default_factory=list)
    updated: dict[str, dict[str, Any]] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)
    messages: list[OutboxMessage] = field(default_factory=list)
    traits: list[tuple[str, str, str, str, Any]] = field(default_factory=list)
    assignments: list[dict[str, Any]] = field(default_factory=list)
    refused: set[tuple[str, str, str]] = field(default_factory=set)

    def step(self, row: Mapping[str, Any], node: str | None, kind: str, at: datetime) -> None:
        self.steps.append(
            {"journey_id": row["journey_id"], "version": row["version"]}
            | {"profile_id": row["profile_id"], "instance_id": row["id"], "node": node}
            | {"kind": kind, "at": at}
        )

    def refuse(self, journey: _Live, pid: str, seq: int, reason: EntrySkip, at: datetime) -> None:
        """Record that ``pid`` could not enter (a step of kind ``reason``, on the walk
        it would have been); once per profile, journey and reason in one transaction."""
        if (journey.id, pid, reason) in self.refused:
            return
        self.refused.add((journey.id, pid, reason))
        row = {"journey_id": journey.id, "version": journey.version, "profile_id": pid}
        self.step(row | {"id": instance_id_of(journey.id, pid, seq)}, None, reason, at)


class JourneyRuntime:
    """Runs journeys for profiles: the journeys sink of the workers and their timers.

    ``warehouse`` answers branch conditions (by SQL, for many profiles at once).
    """

    name = CONSUMER

    def __init__(self, engine: Engine, warehouse: Warehouse, clock: Clock | None = None) -> None:
        self._engine = engine
        self._warehouse = warehouse
        self._clock = clock or SystemClock()
        self.catalog = JourneyCatalog(engine, clock=self._clock)
        self._lock = threading.Lock()
        self._plans: dict[tuple[str, int], Plan] = {}
        self._stopped: tuple[float, frozenset[str]] = (-1.0, frozenset())
        self._limits: dict[str, tuple[float, int | None]] = {}

    def committed(self) -> int:
        with self._engine.connect() as conn:
            return committed_offset(conn, CONSUMER)

    # -- plans -----------------------------------------------------------------------

    def plan(self, journey_id: str, version: int) -> Plan | None:
        key = (journey_id, version)
        plan = self._plans.get(key)
        if plan is None:
            definition = self.catalog.definition(journey_id, version)
            if definition is None:
                return None
            plan = self._plans[key] = self.catalog.plan(definition)
        return plan

    def _live(self, conn: Connection) -> list[_Live]:
        rows = conn.execute(
            select(journeys.c.id, journeys.c.status, journeys.c.version).where(
                journeys.c.status.in_(("active", "paused"))
            )
        ).all()
        out = []
        for r in rows:
            plan = self.plan(r.id, r.version)
            if plan is not None:
                out.append(_Live(r.id, r.status, r.version, plan))
        return out

    def daily_limit(self, journey_id: str) -> int | None:
        """The journey's ``daily_limit`` (its newest version's, at most 1 s old), for the
        deliverer, which asks before every message."""
        at, limit = self._limits.get(journey_id, (-1.0, None))
        if time.monotonic() - at <= _LIMIT_TTL_S:
            return limit
        with self._engine.connect() as conn:
            version = conn.scalar(select(journeys.c.version).where(journeys.c.id == journey_id))
        plan = self.plan(journey_id, version) if version is not None else None
        limit = plan.definition.daily_limit if plan is not None else None
        self._limits[journey_id] = (time.monotonic(), limit)
        return limit

    def is_paused(self, journey_id: str) -> bool:
        """Whether a journey's sends must stop (paused or archived); at most 0.25 s old,
        so the kill switch takes effect within a second."""
        at, stopped = self._stopped
        if time.monotonic() - at > _PAUSE_TTL_S:
            with self._engine.connect() as conn:
                stopped = frozenset(
                    conn.scalars(
                        select(journeys.c.id).where(journeys.c.status.in_(("paused", "archived")))
                    )
                )
            self._stopped = (time.monotonic(), stopped)
        return journey_id in stopped

    # -- the sink --------------------------------------------------------------------

    def apply(self, rows: Sequence[tuple[int, Message]], through: int, expected: int) -> None:
        """Apply a batch of the log and move the offset from ``expected`` to ``through``."""
        with self._lock, self._engine.begin() as conn:
            claim_offset(conn, CONSUMER, through, expected)
            live = self._live(conn)
            if not live:
                return
            names = {ENTERED}
            for j in live:
                names |= j.plan.definition.events_read()
                if isinstance(j.plan.definition.entry, EventEntry):
                    names.add(j.plan.definition.entry.event)
            names |= self._in_flight_events(conn, live)
            tracks = [m for _, m in rows if isinstance(m, Track) and m.event in names]
            if tracks:
                self._apply_events(conn, live, tracks)

    def _in_flight_events(self, conn: Connection, live: list[_Live]) -> set[str]:
        """Events older versions still in flight wait for."""
        names: set[str] = set()
        rows = conn.execute(
            select(journey_instances.c.journey_id, journey_instances.c.version)
            .where(journey_instances.c.status == "active")
            .group_by(journey_instances.c.journey_id, journey_instances.c.version)
        ).all()
        current = {(j.id, j.version) for j in live}
        for journey_id, version in rows:
            if (journey_id, version) not in current:
                plan = self.plan(journey_id, version)
                if plan is not None:
                    names |= plan.definition.events_read()
        return names

    def _apply_events(self, conn: Connection, live: list[_Live], tracks: list[Track]) -> None:
        now = self._clock.now()
        decoded: list[tuple[Track, dict[str, Any], list[Identifier]]] = []
        for message in tracks:
            properties = _OBJECT.decode(message.properties)
            decoded.append((message, properties, identifiers_of(message)))
        owners = _owners(conn, {i for _, _, ids in decoded for i in ids})
        by_profile: list[tuple[str, Track, dict[str, Any]]] = []
        for message, properties, ids in decoded:
            pid = properties.get("profile_id") if message.event == ENTERED else None
            if not isinstance(pid, str):
                pid = next((owners[i] for i in ids if i in owners), None)
            if pid is not None:
                by_profile.append((pid, message, properties))
        if not by_profile:
            return
        pids = sorted({pid for pid, _, _ in by_profile})
        instances = _instances_of(conn, pids)
        active = _active_counts(conn, [j.id for j in live if j.plan.definition.max_concurrent])
        changes = _Changes()
        for pid, message, properties in by_profile:
            at = as_utc(message.timestamp) if message.timestamp else now
            mine = instances.get(pid, [])
            for row in mine:
                self._on_event(row, message.event, properties, at, now, changes)
            for journey in live:
                if _enters(journey, message.event, properties):
                    trigger = {"event": message.event, "properties": properties}
                    self._enter(journey, pid, mine, trigger, now, active, changes)
        self._write(conn, changes, now)

    def _on_event(
        self,
        row: dict[str, Any],
        event: str,
        properties: Mapping[str, Any],
        at: datetime,
        now: datetime,
        changes: _Changes,
    ) -> None:
        plan = self.plan(row["journey_id"], row["version"])
        if plan is None:
            return
        definition = plan.definition
        goal = definition.goal
        if (
            goal is not None
            and row["converted_at"] is None
            and event == goal.event
            and filters_hold(goal.where, properties)
            and as_utc(row["entered_at"])
            <= at
            <= as_utc(row["entered_at"]) + timedelta(seconds=duration_seconds(goal.within))
        ):
            row["converted_at"] = at
            _dirty(changes, row)["converted_at"] = at
        if row["status"] != "active":
            return
        if any(
            s.event == event and filters_hold(s.where, properties) for s in definition.exit_when
        ):
            values: dict[str, Any] = {"status": "exited", "reason": "exit_event", "due_at": None}
            row.update(values)
            _dirty(changes, row).update(values | {"exited_at": now, "updated_at": now})
            return
        node = plan.nodes.get(row["node"] or "")
        if (
            row["phase"] == "wait"
            and isinstance(node, WaitNode)
            and node.until_event is not None
            and node.until_event.event == event
            and filters_hold(node.until_event.where, properties)
        ):
            values = {"phase": "woken", "due_at": now}
            row.update(values)
            _dirty(changes, row).update(values | {"updated_at": now})

    def _enter(
        self,
        journey: _Live,
        pid: str,
        mine: list[dict[str, Any]],
        trigger: dict[str, Any] | None,
        now: datetime,
        active: dict[str, int],
        changes: _Changes,
    ) -> bool:
        definition = journey.plan.definition
        past = [r for r in mine if r["journey_id"] == journey.id]
        seq = max((r["seq"] for r in past), default=0) + 1
        reason = (
            entry_refusal(
                definition,
                [as_utc(r["entered_at"]) for r in past],
                any(r["status"] == "active" for r in past),
                active.get(journey.id, 0),
                now,
            )
            if journey.status == "active"
            else "paused"
        )
        if reason is not None:
            changes.refuse(journey, pid, seq, reason, now)
            return False
        row = {
            "id": instance_id_of(journey.id, pid, seq),
            "journey_id": journey.id,
            "version": journey.version,
            "profile_id": pid,
            "seq": seq,
            "node": definition.start,
            "phase": "arrive",
            "status": "active",
            "reason": None,
            "due_at": now,
            "wait_event": None,
            "trigger": trigger,
            "entered_at": now,
            "updated_at": now,
            "exited_at": None,
            "converted_at": None,
        }
        mine.append(row)
        changes.inserted.append(row)
        active[journey.id] = active.get(journey.id, 0) + 1
        if not journey.plan.uses_time_of_day:
            # Walk on to the first wait or branch in this transaction: the timers would
            # do the same at once, at the cost of reading the row back. A time-of-day
            # wait needs the profile's time zone, which the timers read.
            position = Position(definition.start, "arrive", now)
            outcome = advance(journey.plan, pid, position, now)
            self._record(row, position, outcome.effects, now, changes)
            if outcome.needs is not None:
                row["due_at"] = _dirty(changes, row)["due_at"] = now
        return True

    # -- timers ----------------------------------------------------------------------

    def run_due(self, limit: int = 2000) -> int:
        """Walk on every instance whose timer is due (up to ``limit``); how many."""
        due = (journey_instances.c.status == "active") & (
            journey_instances.c.due_at <= self._clock.now()
        )
        if not any_row(self._engine, select(journey_instances.c.id).where(due)):
            return 0
        with self._lock, self._engine.begin() as conn:
            hold_offset(conn, CONSUMER)
            now = self._clock.now()
            rows = [
                dict(r._mapping)
                for r in conn.execute(
                    select(journey_instances)
                    .join(journeys, journeys.c.id == journey_instances.c.journey_id)
                    .where(
                        journey_instances.c.status == "active",
                        journey_instances.c.due_at <= now,
                        journeys.c.status == "active",
                    )
                    .order_by(journey_instances.c.due_at)
                    .limit(limit)
                )
            ]
            if not rows:
                return 0
            changes = _Changes()
            self._walk(conn, rows, now, changes)
            self._write(conn, changes, now)
            return len(rows)

    def _walk(
        self, conn: Connection, rows: list[dict[str, Any]], now: datetime, changes: _Changes
    ) -> None:
        plans = {
            (r["journey_id"], r["version"]): self.plan(r["journey_id"], r["version"]) for r in rows
        }
        zones = _zones(
            conn,
            [
                r["profile_id"]
                for r in rows
                if (p := plans[(r["journey_id"], r["version"])]) and p.uses_time_of_day
            ],
        )
        answers: dict[str, dict[str, bool]] = defaultdict(dict)
        pending = rows
        while pending:
            asks: dict[tuple[str, int, str], list[dict[str, Any]]] = defaultdict(list)
            for row in pending:
                plan = plans[(row["journey_id"], row["version"])]
                if plan is None:
                    continue
                position = Position(
                    row["node"], row["phase"], _utc(row["due_at"]), row["wait_event"]
                )
                outcome = advance(
                    plan, row["profile_id"], position, now,
                    answers=answers[row["id"]], zone=zones.get(row["profile_id"]),
                )  # fmt: skip
                self._record(row, position, outcome.effects, now, changes)
                if outcome.needs is not None:
                    asks[(plan.id, plan.version, outcome.needs)].append(row)
            pending = []
            for (journey_id, version, node), waiting in asks.items():
                plan = plans[(journey_id, version)]
                assert plan is not None
                # Asked of the person as they are now: a merged profile's events are
                # under the profile it was merged into.
                live = _survivors(conn, [r["profile_id"] for r in waiting])
                held = members_among(
                    self._warehouse, plan.conditions[node], list(live.values()), now
                )
                for row in waiting:
                    answers[row["id"]][node] = live[row["profile_id"]] in held
                pending.extend(waiting)

    def _record(
        self,
        row: dict[str, Any],
        position: Position,
        effects: list[Effect],
        now: datetime,
        changes: _Changes,
    ) -> None:
        values: dict[str, Any] = {
            "node": position.node,
            "phase": position.phase,
            "status": position.status,
            "reason": position.reason,
            "due_at": position.due_at if position.phase == "wait" else None,
            "wait_event": position.wait_event,
            "updated_at": now,
        }
        if position.status == "exited":
            values["exited_at"] = now
        row.update(values)
        _dirty(changes, row).update(values)
        # Steps record the nodes reached; entering, leaving and converting are on the
        # instance row, messages, traits and assignments where they land (outbox, log
        # outbox, assignments).
        for effect in effects:
            if effect.kind == "reached":
                changes.step(row, effect.node, "reached", now)
            elif effect.kind == "message":
                data = effect.data
                changes.messages.append(
                    OutboxMessage(
                        idempotency_key=f"{row['journey_id']}:{row['version']}:{row['profile_id']}"
                        f":{effect.node}:{row['seq']}",
                        profile_id=row["profile_id"],
                        channel=data["channel"],
                        template_id=data["template"],
                        variables=dict(data["variables"]),
                        journey_id=row["journey_id"],
                        journey_version=row["version"],
                        node_id=effect.node,
                        trigger=row["trigger"],
                    )
                )
            elif effect.kind == "trait":
                assert effect.node is not None
                trait, value = effect.data["trait"], effect.data["value"]
                changes.traits.append((row["profile_id"], row["id"], effect.node, trait, value))
            elif effect.kind == "assign":
                changes.assignments.append(
                    {"journey_id": row["journey_id"], "node": effect.node}
                    | {"profile_id": row["profile_id"], "version": row["version"]}
                    | {"arm": effect.data["arm"], "assigned_at": now}
                )

    # -- schedules -------------------------------------------------------------------

    def run_schedules(self) -> int:
        """Enter the members of every due schedule's segment; how many entered."""
        entered = 0
        scheduled = (journeys.c.status == "active") & (journeys.c.next_run_at <= self._clock.now())
        if not any_row(self._engine, select(journeys.c.id).where(scheduled)):
            return 0
        with self._lock, self._engine.begin() as conn:
            hold_offset(conn, CONSUMER)
            now = self._clock.now()
            due = conn.execute(
                select(journeys.c.id, journeys.c.version, journeys.c.next_run_at).where(
                    journeys.c.status == "active", journeys.c.next_run_at <= now
                )
            ).all()
            for journey_id, version, next_run in due:
                plan = self.plan(journey_id, version)
                if plan is None or not isinstance(plan.definition.entry, ScheduleEntry):
                    continue
                entry = plan.definition.entry
                members = list(
                    conn.scalars(
                        select(segment_members.c.profile_id)
                        .where(segment_members.c.segment == entry.segment)
                        .order_by(segment_members.c.profile_id)
                    )
                )
                instances = _instances_of(conn, members)
                active = _active_counts(conn, [journey_id])
                changes = _Changes()
                journey = _Live(journey_id, "active", version, plan)
                for pid in members:
                    mine = instances.setdefault(pid, [])
                    entered += self._enter(journey, pid, mine, None, now, active, changes)
                self._write(conn, changes, now)
                step = timedelta(seconds=duration_seconds(entry.every))
                following = as_utc(next_run)
                while following <= now:
                    following += step
                conn.execute(
                    update(journeys)
                    .where(journeys.c.id == journey_id)
                    .values(next_run_at=following)
                )
        return entered

    # -- writing ---------------------------------------------------------------------

    def _write(self, conn: Connection, changes: _Changes, now: datetime) -> None:
        # Inserted rows are the dicts later changes mutated: written whole, once.
        inserted = {r["id"] for r in changes.inserted}
        bulk_insert(conn, journey_instances, changes.inserted)
        by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
        for key, values in changes.updated.items():
            if key not in inserted:
                by_columns[tuple(sorted(values))].append(values | {"id": key})
        for columns, batch in by_columns.items():
            bulk_update(conn, journey_instances, "id", columns, batch)
        bulk_insert(conn, journey_steps, changes.steps)
        bulk_insert(conn, journey_assignments, changes.assignments, skip_existing=True)
        enqueue_many(conn, changes.messages, now=now)
        if changes.traits:
            _publish_traits(conn, changes.traits, now)


def entry_refusal(
    definition: JourneyDefinition,
    entered: Sequence[datetime],
    walking: bool,
    active: int,
    now: datetime,
) -> EntrySkip | None:
    """Why a profile may not enter an active journey at ``now``, or None: ``entered`` are
    its earlier entries' times, ``walking`` whether one of its walks is still in the
    journey, ``active`` how many profiles are.

    >>> from remarket.schema.journey import parse_journey
    >>> d = parse_journey({"id": "j", "entry": {"type": "event", "event": "E"},
    ...     "start": "x", "nodes": [{"id": "x", "type": "exit"}], "max_concurrent": 1})
    >>> entry_refusal(d, [], False, 1, datetime(2026, 1, 1))
    'max_concurrent'
    """
    if walking:
        return "already_active"
    if entered:
        if definition.reentry.policy == "never":
            return "reentry_never"
        assert definition.reentry.after is not None
        after = timedelta(seconds=duration_seconds(definition.reentry.after))
        if now < max(entered) + after:
            return "reentry_wait"
    cap = definition.max_concurrent
    if cap is not None and active >= cap:
        return "max_concurrent"
    return None


def _dirty(changes: _Changes, row: Mapping[str, Any]) -> dict[str, Any]:
    return changes.updated.setdefault(row["id"], {})


def _utc(value: datetime | None) -> datetime | None:
    return as_utc(value) if value is not None else None


def _enters(journey: _Live, event: str, properties: Mapping[str, Any]) -> bool:
    entry = journey.plan.definition.entry
    if isinstance(entry, EventEntry):
        return event == entry.event and filters_hold(entry.where, properties)
    if isinstance(entry, SegmentEntry):
        return event == ENTERED and properties.get("segment") == entry.segment
    return False


def _owners(conn: Connection, wanted: set[Identifier]) -> dict[Identifier, str]:
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


def _instances_of(conn: Connection, pids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Every instance of these profiles (active ones move, past ones decide re-entry and
    may still convert), including those of profiles merged into them: a cart added
    anonymously and an order placed after logging in are one person's."""
    owner = {pid: pid for pid in pids}
    for chunk in chunks(list(pids)):
        # The store keeps merged_into pointing at the final survivor: one level.
        merged = conn.execute(
            select(profiles.c.profile_id, profiles.c.merged_into).where(
                profiles.c.merged_into.in_(chunk)
            )
        )
        for old, new in merged:
            owner.setdefault(old, new)
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for chunk in chunks(list(owner)):
        rows = conn.execute(
            select(journey_instances).where(journey_instances.c.profile_id.in_(chunk))
        )
        for r in rows:
            out[owner[r.profile_id]].append(dict(r._mapping))
    return out


def _survivors(conn: Connection, pids: Sequence[str]) -> dict[str, str]:
    """Each profile id's surviving profile (itself unless it was merged into another)."""
    out = {pid: pid for pid in pids}
    for chunk in chunks(sorted(set(pids))):
        rows = conn.execute(
            select(profiles.c.profile_id, profiles.c.merged_into).where(
                profiles.c.profile_id.in_(chunk), profiles.c.merged_into.is_not(None)
            )
        )
        for old, new in rows:
            out[old] = new
    return out


def _active_counts(conn: Connection, journey_ids: Sequence[str]) -> dict[str, int]:
    if not journey_ids:
        return {}
    rows = conn.execute(
        select(journey_instances.c.journey_id, func.count())
        .where(
            journey_instances.c.journey_id.in_(journey_ids),
            journey_instances.c.status == "active",
        )
        .group_by(journey_instances.c.journey_id)
    )
    return {journey_id: int(n) for journey_id, n in rows}


def _zones(conn: Connection, pids: Sequence[str]) -> dict[str, str]:
    """The ``timezone`` trait of these profiles."""
    out: dict[str, str] = {}
    for chunk in chunks(sorted(set(pids))):
        rows = conn.execute(
            select(profile_traits.c.profile_id, profile_traits.c.value).where(
                profile_traits.c.profile_id.in_(chunk), profile_traits.c.key == "timezone"
            )
        )
        for pid, value in rows:
            if isinstance(value, str):
                out[pid] = value
    return out


def _publish_traits(
    conn: Connection,
    traits: list[tuple[str, str, str, str, Any]],
    now: datetime,
) -> None:
    """Identify events for ``update_trait`` effects, into the log outbox (the segment
    worker's publisher appends them to the log once; their messageId is deterministic)."""
    items = []
    for pid, instance_id, node, path, value in traits:
        digest = hashlib.blake2b(f"{instance_id}\x1f{node}".encode(), digest_size=16)
        nested: Any = value
        for key in reversed(path.split(".")):
            nested = {key: nested}
        items.append((pid, f"journey-{digest.hexdigest()}", nested, now))
    rows = identify_rows(conn, items, source_id=PUBLISHER_SOURCE)
    bulk_insert(conn, segment_outbox, rows, skip_existing=True)
