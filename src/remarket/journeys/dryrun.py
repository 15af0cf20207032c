"""Dry run: a journey replayed over a past window of the warehouse, sending nothing.

The warehouse's events in ``(start, end]`` are walked in time order through the same
interpreter the runtime uses: entry events (or published ``Segment Entered`` events,
or a schedule's runs with the segment's members by SQL as of each run) enter
profiles, subject to the journey's re-entry policy and ``max_concurrent`` (a refused
entry is reported with its reason, as the runtime records it); timers fire at their due
time, exit events end walks, awaited events wake waits, and branch conditions are
answered by SQL as of the moment the profile reaches them. Each message is checked
against the channel guards as of its time: consent (the ledger's history) and
suppression then; an address (the traits as they stand); frequency caps counting the
sends in the outbox then, other journeys' and the run's own (this journey's real sends
do not count: the run stands in for them); quiet hours; the journey's daily limit. So
the report says who would have entered and who not, what would have been sent when,
and what would have been blocked.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import msgspec
import sqlglot
from sqlalchemy import Engine, select
from sqlglot import exp

from remarket.channels.guards import (
    MESSAGING,
    address_of,
    cap_reached,
    purpose_of,
    quiet_until,
    suppressed,
    zone_of,
)
from remarket.config import Settings
from remarket.journeys.conditions import members_among
from remarket.journeys.funnel import EntrySkip
from remarket.journeys.interpreter import Effect, Plan, Position, advance
from remarket.journeys.runtime import entry_refusal, filters_hold
from remarket.privacy import ConsentLedger
from remarket.privacy.consent import ConsentRecord, is_allowed
from remarket.schema.events import as_utc
from remarket.schema.journey import EventEntry, ScheduleEntry, SegmentEntry, WaitNode
from remarket.schema.segment import duration_seconds
from remarket.segments.backfill import sql_members
from remarket.segments.catalog import SegmentCatalog
from remarket.segments.membership import ENTERED
from remarket.storage.state import profile_traits
from remarket.storage.warehouse import Warehouse

__all__ = ["DryRun", "DryRunMessage", "DryRunRefusal", "dry_run"]

_OBJECT: Final = msgspec.json.Decoder(dict[str, Any])


@dataclass(frozen=True, slots=True)
class DryRunMessage:
    profile_id: str
    node: str
    channel: str
    template: str | None
    at: datetime
    blocked: str | None
    """Why the guards would have stopped it (``no_consent``, ``suppressed``,
    ``no_address``, ``frequency_cap``, ``journey_daily_limit``), None if it would have been
    sent; a quiet-hours deferral moves ``at`` and says ``deferred:quiet_hours`` here."""


@dataclass(frozen=True, slots=True)
class DryRunRefusal:
    """A profile that would not have entered: ``reason`` one of the funnel's
    ``ENTRY_SKIPS`` (``already_active``, ``reentry_never``, ``reentry_wait``,
    ``max_concurrent``); the first time per profile and reason."""

    profile_id: str
    at: datetime
    reason: EntrySkip


@dataclass(slots=True)
class DryRun:
    start: datetime
    end: datetime
    entered: list[tuple[str, datetime]] = field(default_factory=list)
    refused: list[DryRunRefusal] = field(default_factory=list)
    messages: list[DryRunMessage] = field(default_factory=list)
    exited: dict[str, int] = field(default_factory=dict)
    converted: int = 0
    truncated: bool = False
    """More than ``max_profiles`` would have entered (or been refused): the lists stop
    there, and so does the walk of profiles past it."""

    @property
    def blocked(self) -> dict[str, int]:
        return dict(Counter(m.blocked for m in self.messages if m.blocked is not None))

    @property
    def not_entered(self) -> dict[str, int]:
        """Profiles refused, by reason (each once per reason), as the funnel counts them."""
        return dict(Counter(r.reason for r in self.refused))


@dataclass(slots=True)
class _Walk:
    profile_id: str
    position: Position
    entered_at: datetime
    seq: int = 0
    converted: bool = False


def _events_sql(names: set[str], start: datetime, end: datetime, dialect: str) -> str:
    quoted = ", ".join(exp.Literal.string(n).sql(dialect="duckdb") for n in sorted(names))
    profile = "COALESCE(iu.profile_id, ia.profile_id)"
    sql = (
        f"SELECT {profile} AS profile_id, e.event, e.timestamp, e.properties FROM events AS e "
        "LEFT JOIN identities AS iu ON iu.kind = 'user_id' AND iu.value = e.user_id "
        "LEFT JOIN identities AS ia ON ia.kind = 'anonymous_id' AND ia.value = e.anonymous_id "
        f"WHERE e.type = 'track' AND e.event IN ({quoted}) AND {profile} IS NOT NULL "
        f"AND e.timestamp > TIMESTAMPTZ '{start.isoformat()}' "
        f"AND e.timestamp <= TIMESTAMPTZ '{end.isoformat()}' "
        'ORDER BY e.timestamp, e."offset"'
    )
    return sqlglot.transpile(sql, read="duckdb", write=dialect)[0]


def _object(value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    if isinstance(value, bytes | str):
        return _OBJECT.decode(value)
    raise TypeError(f"a JSON object column holds {type(value).__name__}")


def _consent_at(history: list[ConsentRecord], at: datetime) -> dict[str, ConsentRecord]:
    """The newest record per purpose among those made by ``at``."""
    best: dict[str, ConsentRecord] = {}
    for record in history:
        held = best.get(record.purpose)
        if as_utc(record.at) <= at and (held is None or record.newer_than(held)):
            best[record.purpose] = record
    return best


class _Guard:
    """The channel guards as of each message's time, sending nothing; the run's own
    sends count towards the caps and the journey's daily limit."""

    def __init__(
        self, engine: Engine, settings: Settings, journey_id: str, limit: int | None
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._journey_id = journey_id
        self._limit = limit
        self._ledger = ConsentLedger(engine)
        self._history: dict[str, list[ConsentRecord]] = {}
        self._sent: dict[str, list[tuple[str, datetime]]] = defaultdict(list)
        self._per_day: Counter[datetime] = Counter()

    def check(self, pid: str, effect: Effect, at: datetime) -> tuple[str | None, datetime]:
        """Why the message would have been blocked (None: sent), and when it would go."""
        settings = self._settings
        channel = str(effect.data["channel"])
        # Taking someone out of an audience is always allowed (as at delivery).
        if channel == "audience" and effect.data["variables"].get("op") == "remove":
            return None, at
        history = self._history.get(pid)
        if history is None:
            history = self._history[pid] = self._ledger.history(pid)
        if not is_allowed(_consent_at(history, at), purpose_of(channel, settings)):
            return "no_consent", at
        with self._engine.connect() as conn:
            if suppressed(conn, [pid], channel, at=at):
                return "suppressed", at
            traits = dict(
                conn.execute(
                    select(profile_traits.c.key, profile_traits.c.value).where(
                        profile_traits.c.profile_id == pid
                    )
                ).all()
            )
            if channel == "audience":
                found = isinstance(traits.get("email"), str) or isinstance(traits.get("phone"), str)
                return (None if found else "no_address"), at
            code = settings.channels_phone_country_code
            if address_of(channel, traits, effect.data["variables"], code) is None:
                return "no_address", at
            if cap_reached(
                conn, [pid], channel, at, settings,
                also=self._sent[pid], exclude_journey=self._journey_id,
            ):  # fmt: skip
                return "frequency_cap", at
        blocked = None
        if channel in MESSAGING:
            zone = zone_of(traits, settings.channels_default_timezone)
            until = quiet_until(at, zone, settings.channels_quiet_hours)
            if until is not None:
                blocked, at = "deferred:quiet_hours", until
        day = at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        if self._limit is not None and self._per_day[day] >= self._limit:
            return "journey_daily_limit", at
        self._per_day[day] += 1
        self._sent[pid].append((channel, at))
        return blocked, at


def dry_run(
    plan: Plan,
    warehouse: Warehouse,
    engine: Engine,
    settings: Settings,
    start: datetime,
    end: datetime,
    *,
    max_profiles: int = 1000,
) -> DryRun:
    """Replay ``plan`` over ``(start, end]``; at most ``max_profiles`` enter, and as many
    refusals are listed (``truncated`` says when there would have been more)."""
    start, end = as_utc(start), as_utc(end)
    if end <= start:
        raise ValueError("a dry run's end must be after its start")
    definition = plan.definition
    report = DryRun(start, end)
    guard = _Guard(engine, settings, definition.id, definition.daily_limit)
    names = set(definition.events_read())
    entry = definition.entry
    if isinstance(entry, EventEntry):
        names.add(entry.event)
    elif isinstance(entry, SegmentEntry):
        names.add(ENTERED)
    walks: dict[str, _Walk] = {}  # each profile's newest walk
    entries: dict[str, list[datetime]] = {}
    active: set[str] = set()
    refused: set[tuple[str, EntrySkip]] = set()
    timers: list[tuple[datetime, int, str]] = []
    tick = 0

    def schedule(walk: _Walk) -> None:
        nonlocal tick
        if walk.position.status == "active" and walk.position.due_at is not None:
            tick += 1
            heapq.heappush(timers, (walk.position.due_at, tick, walk.profile_id))

    def run(walk: _Walk, now: datetime) -> None:
        answers: dict[str, bool] = {}
        while True:
            outcome = advance(plan, walk.profile_id, walk.position, now, answers=answers)
            for effect in outcome.effects:
                if effect.kind == "message":
                    blocked, when = guard.check(walk.profile_id, effect, now)
                    report.messages.append(
                        DryRunMessage(
                            walk.profile_id,
                            str(effect.node),
                            str(effect.data["channel"]),
                            effect.data["template"],
                            when,
                            blocked,
                        )
                    )
                elif effect.kind == "exited":
                    reason = str(effect.data["reason"])
                    report.exited[reason] = report.exited.get(reason, 0) + 1
            if outcome.needs is None:
                break
            core = plan.conditions[outcome.needs]
            answers[outcome.needs] = walk.profile_id in members_among(
                warehouse, core, [walk.profile_id], now
            )
        if walk.position.phase == "wait":
            schedule(walk)
        if walk.position.status != "active":
            active.discard(walk.profile_id)

    def fire_until(t: datetime) -> None:
        while timers and timers[0][0] <= t:
            due, _, pid = heapq.heappop(timers)
            walk = walks.get(pid)
            if walk is None or walk.position.status != "active" or walk.position.due_at != due:
                continue
            run(walk, due)

    def enter(pid: str, at: datetime) -> None:
        past = entries.get(pid, [])
        reason = entry_refusal(definition, past, pid in active, len(active), at)
        if reason is not None:
            if (pid, reason) not in refused:
                if len(refused) >= max_profiles:
                    report.truncated = True
                    return
                refused.add((pid, reason))
                report.refused.append(DryRunRefusal(pid, at, reason))
            return
        if not past and len(entries) >= max_profiles:
            report.truncated = True
            return
        entries.setdefault(pid, []).append(at)
        walk = walks[pid] = _Walk(pid, Position(definition.start, due_at=at), at, len(past) + 1)
        active.add(pid)
        report.entered.append((pid, at))
        run(walk, at)

    events = warehouse.query(_events_sql(names, start, end, warehouse.dialect))
    runs: list[datetime] = []
    if isinstance(entry, ScheduleEntry):
        at = entry.start or start
        step = timedelta(seconds=duration_seconds(entry.every))
        while at <= end:
            if at > start:
                runs.append(at)
            at += step
    segments = SegmentCatalog(engine)
    for pid_value, event, timestamp, raw in [*events, *((None, None, r, None) for r in runs)]:
        at = as_utc(timestamp)
        fire_until(at)
        if pid_value is None and isinstance(entry, ScheduleEntry):
            target = segments.get(entry.segment)
            if target is not None:
                core = segments.compile(target.definition)
                for member in sorted(sql_members(warehouse, core, at)):
                    enter(member, at)
            continue
        pid = str(pid_value)
        properties = _object(raw)
        walk = walks.get(pid)
        if walk is not None:
            _on_event(plan, walk, str(event), properties, at, report)
            if walk.position.phase == "woken":
                walk.position.due_at = at
                run(walk, at)
            elif walk.position.status != "active":
                active.discard(pid)
        if isinstance(entry, EventEntry) and event == entry.event:
            if filters_hold(entry.where, properties):
                enter(pid, at)
        elif isinstance(entry, SegmentEntry) and event == ENTERED:
            if properties.get("segment") == entry.segment:
                enter(pid, at)
    fire_until(end)
    report.messages.sort(key=lambda m: (m.at, m.profile_id, m.node))
    return report


def _on_event(
    plan: Plan, walk: _Walk, event: str, properties: dict[str, Any], at: datetime, report: DryRun
) -> None:
    definition = plan.definition
    goal = definition.goal
    if (
        goal is not None
        and not walk.converted
        and event == goal.event
        and filters_hold(goal.where, properties)
        and at <= walk.entered_at + timedelta(seconds=duration_seconds(goal.within))
    ):
        walk.converted = True
        report.converted += 1
    position = walk.position
    if position.status != "active":
        return
    if any(s.event == event and filters_hold(s.where, properties) for s in definition.exit_when):
        position.status, position.reason, position.due_at = "exited", "exit_event", None
        report.exited["exit_event"] = report.exited.get("exit_event", 0) + 1
        return
    node = plan.nodes.get(position.node or "")
    if (
        position.phase == "wait"
        and isinstance(node, WaitNode)
        and node.until_event is not None
        and node.until_event.event == event
        and filters_hold(node.until_event.where, properties)
    ):
        position.phase = "woken"
