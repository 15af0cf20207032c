"""Real-time evaluation: per-profile leaf state updated per event, membership at any T.

Each leaf of a core segment keeps the least state that decides it at every future T:

- trait: the last write (timestamp, messageId, text) of its path;
- performed in the last D: the N+1 most recent matching timestamps (the count in a
  trailing window is decided by them), otherwise a count capped at N+1;
- first/last performed: the earliest / latest matching timestamp;
- aggregate in the last D: (timestamp, value) pairs inside the window; otherwise a
  running count, sum, min, max and distinct set;
- sequence: the E1 and E2 timestamps that can still pair (inside the window), or only a
  flag once a pair can no longer expire.

State is mutated in place by :meth:`RealtimeSegment.apply`; ``now`` must not go back
between calls on one state, and membership is asked at T >= every applied event's
timestamp (events later than T are the caller's to hold back). Times are epoch
microseconds inside, aware datetimes at the surface.
"""

from __future__ import annotations

import bisect
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import msgspec

from remarket.schema.events import Alias, Group, Identify, Message, Page, Screen, Track
from remarket.schema.segment import (
    AbsoluteWindow,
    AggregateNode,
    Ago,
    AndNode,
    EventSpec,
    FirstPerformedNode,
    LastPerformedNode,
    NotNode,
    OrNode,
    PerformedNode,
    PropertyFilter,
    RandomBucketNode,
    RelativeWindow,
    ScoreNode,
    SequenceNode,
    TraitNode,
    duration_seconds,
)
from remarket.segments.desugar import CoreNode, CoreSegment
from remarket.segments.values import (
    MICROS,
    compare_number,
    instant_of_text,
    matches,
    micros_of,
    moment_micros,
    number_of_text,
    text_at,
    to_datetime,
)

__all__ = [
    "EventView",
    "ProfileState",
    "RealtimeSegment",
    "ScoreLookup",
    "bucket_of",
    "view_of",
]

ScoreLookup = Callable[[str, str], float | None]
"""``(profile_id, model) -> score`` (None when the model has not scored the profile)."""

_OBJECT: Final = msgspec.json.Decoder(dict[str, Any])
_TYPE_NAMES: Final[dict[type, str]] = {
    Track: "track",
    Identify: "identify",
    Page: "page",
    Screen: "screen",
    Group: "group",
    Alias: "alias",
}


class TraitState(msgspec.Struct, tag="t", array_like=True):
    at: int = -(2**62)
    message_id: str = ""
    text: str | None = None


class CountState(msgspec.Struct, tag="c", array_like=True):
    count: int = 0
    times: list[int] = msgspec.field(default_factory=list)


class TimeState(msgspec.Struct, tag="f", array_like=True):
    at: int | None = None


class AggregateState(msgspec.Struct, tag="a", array_like=True):
    count: int = 0
    total: float = 0.0
    low: float | None = None
    high: float | None = None
    distinct: list[str] = msgspec.field(default_factory=list)
    items: list[tuple[int, float | str]] = msgspec.field(default_factory=list)


class SequenceState(msgspec.Struct, tag="s", array_like=True):
    firsts: list[int] = msgspec.field(default_factory=list)
    thens: list[int] = msgspec.field(default_factory=list)
    paired: bool = False


LeafState = TraitState | CountState | TimeState | AggregateState | SequenceState
ProfileState = list[LeafState]
"""One profile's state for one segment: one entry per stateful leaf, in leaf order."""

_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER: Final = msgspec.msgpack.Decoder(list[LeafState])


@dataclass(frozen=True, slots=True)
class EventView:
    """The fields of one event the evaluator reads, decoded once for every segment."""

    type: str
    event: str | None
    at: int
    message_id: str
    properties: Mapping[str, Any]
    traits: Mapping[str, Any]


def view_of(message: Message) -> EventView:
    """Decode what segments need from a stored message (its timestamp must be set)."""
    if message.timestamp is None:
        raise ValueError("a stored event has a timestamp; this one has none")
    properties: Mapping[str, Any] = {}
    traits: Mapping[str, Any] = {}
    event = None
    if isinstance(message, Track):
        event = message.event
        properties = _OBJECT.decode(message.properties)
    elif isinstance(message, Identify):
        traits = _OBJECT.decode(message.traits)
    return EventView(
        type=_TYPE_NAMES[type(message)],
        event=event,
        at=micros_of(message.timestamp),
        message_id=message.message_id or "",
        properties=properties,
        traits=traits,
    )


def bucket_of(profile_id: str, salt: str) -> int:
    """The profile's random bucket in [0, 100): md5 hex, first 7 digits, mod 100.

    >>> 0 <= bucket_of("p_1", "holdout") < 100
    True
    """
    digest = hashlib.md5(f"{salt}:{profile_id}".encode(), usedforsecurity=False).hexdigest()
    return int(digest[:7], 16) % 100


def _filters_hold(where: Iterable[PropertyFilter], properties: Mapping[str, Any]) -> bool:
    return all(
        matches(f.operator, f.value, text_at(properties, f.path.split(".")), 0) for f in where
    )


def _event_matches(name: str, where: Iterable[PropertyFilter], ev: EventView) -> bool:
    return ev.type == "track" and ev.event == name and _filters_hold(where, ev.properties)


def _span(window: RelativeWindow | AbsoluteWindow | None) -> int | None:
    return duration_seconds(window.last) * MICROS if isinstance(window, RelativeWindow) else None


def _inside_static(window: RelativeWindow | AbsoluteWindow | None, at: int) -> bool:
    """Whether an event at ``at`` can count at all (the absolute window is fixed)."""
    if isinstance(window, AbsoluteWindow):
        return micros_of(window.start) < at <= micros_of(window.end)
    return True


def _insort_desc_capped(times: list[int], at: int, cap: int) -> None:
    # Kept in descending order so the cap drops the oldest.
    position = bisect.bisect_left([-t for t in times], -at)
    times.insert(position, at)
    del times[cap:]


class _Leaf(ABC):
    """One stateful leaf: how its state starts, grows, merges and decides."""

    node: CoreNode

    @abstractmethod
    def new(self) -> LeafState: ...

    @abstractmethod
    def apply(self, state: Any, ev: EventView, now: int) -> None: ...

    @abstractmethod
    def holds(self, state: Any, at: int) -> bool: ...

    def edges(self, state: Any, at: int) -> Iterable[int]:
        """Instants (> at or not) where the leaf's truth may flip with no new event."""
        return ()

    @abstractmethod
    def merge(self, a: Any, b: Any) -> LeafState: ...


class _Trait(_Leaf):
    node: TraitNode

    def __init__(self, node: TraitNode) -> None:
        self.node = node
        self.path = node.path.split(".")

    def new(self) -> TraitState:
        return TraitState()

    def apply(self, state: TraitState, ev: EventView, now: int) -> None:
        if ev.type != "identify":
            return
        text = text_at(ev.traits, self.path)
        if text is not None and (ev.at, ev.message_id) > (state.at, state.message_id):
            state.at, state.message_id, state.text = ev.at, ev.message_id, text

    def holds(self, state: TraitState, at: int) -> bool:
        return matches(self.node.operator, self.node.value, state.text, at)

    def edges(self, state: TraitState, at: int) -> Iterable[int]:
        instant = instant_of_text(state.text) if state.text is not None else None
        if instant is None:
            return ()
        value = self.node.value
        spans = [
            duration_seconds(m.ago) * MICROS
            for m in (value if isinstance(value, list) else [value])
            if isinstance(m, Ago)
        ]
        if self.node.operator == "within_last":
            spans.append(duration_seconds(str(value)) * MICROS)
            return [instant, *(instant + s for s in spans)]
        # gt/lte flip at instant + span, gte/lt one microsecond later.
        return [e for s in spans for e in (instant + s, instant + s + 1)]

    def merge(self, a: TraitState, b: TraitState) -> TraitState:
        return a if (a.at, a.message_id) >= (b.at, b.message_id) else b


class _Performed(_Leaf):
    node: PerformedNode

    def __init__(self, node: PerformedNode) -> None:
        self.node = node
        self.cap = node.times + 1
        self.span = _span(node.window)

    def new(self) -> CountState:
        return CountState()

    def apply(self, state: CountState, ev: EventView, now: int) -> None:
        node = self.node
        if not _event_matches(node.event, node.where, ev) or not _inside_static(node.window, ev.at):
            return
        if self.span is None:
            state.count = min(state.count + 1, self.cap)
            return
        _insort_desc_capped(state.times, ev.at, self.cap)
        while state.times and state.times[-1] <= now - self.span:
            state.times.pop()

    def _count(self, state: CountState, at: int) -> int:
        if self.span is None:
            return state.count
        return sum(1 for t in state.times if t > at - self.span)

    def holds(self, state: CountState, at: int) -> bool:
        count, times = self._count(state, at), self.node.times
        if self.node.operator == "at_least":
            return count >= times
        if self.node.operator == "at_most":
            return count <= times
        return count == times

    def edges(self, state: CountState, at: int) -> Iterable[int]:
        span = self.span
        return () if span is None else [t + span for t in state.times]

    def merge(self, a: CountState, b: CountState) -> CountState:
        times = sorted(a.times + b.times, reverse=True)[: self.cap]
        return CountState(count=min(a.count + b.count, self.cap), times=times)


class _EventTime(_Leaf):
    node: FirstPerformedNode | LastPerformedNode

    def __init__(self, node: FirstPerformedNode | LastPerformedNode) -> None:
        self.node = node
        self.pick = max if isinstance(node, LastPerformedNode) else min

    def new(self) -> TimeState:
        return TimeState()

    def apply(self, state: TimeState, ev: EventView, now: int) -> None:
        if _event_matches(self.node.event, self.node.where, ev):
            state.at = ev.at if state.at is None else self.pick(state.at, ev.at)

    def holds(self, state: TimeState, at: int) -> bool:
        if state.at is None:
            return False
        value = self.node.value
        if self.node.operator == "within_last":
            return state.at > at - duration_seconds(str(value)) * MICROS
        bound = moment_micros(value, at)  # type: ignore[arg-type]
        return state.at <= bound if self.node.operator == "before" else state.at > bound

    def edges(self, state: TimeState, at: int) -> Iterable[int]:
        value = self.node.value
        if state.at is None:
            return ()
        if isinstance(value, str):
            return [state.at + duration_seconds(value) * MICROS]
        if isinstance(value, Ago):
            return [state.at + duration_seconds(value.ago) * MICROS]
        return ()

    def merge(self, a: TimeState, b: TimeState) -> TimeState:
        known = [t for t in (a.at, b.at) if t is not None]
        return TimeState(at=self.pick(known) if known else None)


class _Aggregate(_Leaf):
    node: AggregateNode

    def __init__(self, node: AggregateNode) -> None:
        self.node = node
        self.path = node.property.split(".") if node.property is not None else None
        self.span = _span(node.window)
        self.numeric = node.function in ("sum", "avg", "min", "max")

    def new(self) -> AggregateState:
        return AggregateState()

    def _value(self, ev: EventView) -> float | str | None:
        if self.path is None:
            return ""
        text = text_at(ev.properties, self.path)
        if text is None or not self.numeric:
            return text
        return number_of_text(text)

    def apply(self, state: AggregateState, ev: EventView, now: int) -> None:
        node = self.node
        if not _event_matches(node.event, node.where, ev) or not _inside_static(node.window, ev.at):
            return
        value = self._value(ev)
        if value is None:
            return
        if self.span is not None:
            state.items.append((ev.at, value))
            state.items = [item for item in state.items if item[0] > now - self.span]
            return
        self._add(state, [value])

    def _add(self, state: AggregateState, values: Iterable[float | str]) -> None:
        for value in values:
            state.count += 1
            if isinstance(value, float):
                state.total += value
                state.low = value if state.low is None else min(state.low, value)
                state.high = value if state.high is None else max(state.high, value)
            elif self.node.function == "count_distinct" and value not in state.distinct:
                bisect.insort(state.distinct, value)

    def holds(self, state: AggregateState, at: int) -> bool:
        if self.span is not None:
            live = AggregateState()
            self._add(live, [v for t, v in state.items if t > at - self.span])
            state = live
        result = self._result(state)
        return result is not None and compare_number(self.node.operator, result, self.node.value)

    def _result(self, state: AggregateState) -> float | None:
        function = self.node.function
        if function == "count":
            return float(state.count)
        if function == "count_distinct":
            return float(len(state.distinct))
        if function == "sum":
            return state.total
        if function == "avg":
            return state.total / state.count if state.count else None
        return state.low if function == "min" else state.high

    def edges(self, state: AggregateState, at: int) -> Iterable[int]:
        span = self.span
        return () if span is None else [t + span for t, _ in state.items]

    def merge(self, a: AggregateState, b: AggregateState) -> AggregateState:
        merged = AggregateState(items=sorted(a.items + b.items, key=lambda item: item[0]))
        merged.count, merged.total = a.count + b.count, a.total + b.total
        lows = [v for v in (a.low, b.low) if v is not None]
        highs = [v for v in (a.high, b.high) if v is not None]
        merged.low, merged.high = min(lows, default=None), max(highs, default=None)
        merged.distinct = sorted(set(a.distinct) | set(b.distinct))
        return merged


class _Sequence(_Leaf):
    node: SequenceNode

    def __init__(self, node: SequenceNode) -> None:
        self.node = node
        self.within = duration_seconds(node.within) * MICROS
        self.span = _span(node.window)
        # Without a moving window a found pair never expires: keep a flag, not lists.
        self.latch = node.followed and self.span is None

    def new(self) -> SequenceState:
        return SequenceState()

    def _is(self, spec: EventSpec, ev: EventView) -> bool:
        return _event_matches(spec.event, spec.where, ev)

    def apply(self, state: SequenceState, ev: EventView, now: int) -> None:
        if state.paired:
            return
        if self._is(self.node.first, ev) and _inside_static(self.node.window, ev.at):
            bisect.insort(state.firsts, ev.at)
        if self._is(self.node.then, ev):
            bisect.insort(state.thens, ev.at)
        if self.span is not None:
            floor = now - self.span
            state.firsts = [t for t in state.firsts if t > floor]
            state.thens = [t for t in state.thens if t > floor]
        if self.latch and any(self._followed(state, t) for t in state.firsts):
            state.paired, state.firsts, state.thens = True, [], []

    def _followed(self, state: SequenceState, first: int) -> bool:
        i = bisect.bisect_right(state.thens, first)
        return i < len(state.thens) and state.thens[i] <= first + self.within

    def holds(self, state: SequenceState, at: int) -> bool:
        if state.paired:
            return True
        firsts = state.firsts
        if self.span is not None:
            firsts = [t for t in firsts if t > at - self.span]
        if self.node.followed:
            return any(self._followed(state, t) for t in firsts)
        return any(t + self.within <= at and not self._followed(state, t) for t in firsts)

    def edges(self, state: SequenceState, at: int) -> Iterable[int]:
        span = self.span
        out = [t + self.within for t in state.firsts] if not self.node.followed else []
        if span is not None:
            out += [t + span for t in state.firsts]
        return out

    def merge(self, a: SequenceState, b: SequenceState) -> SequenceState:
        if a.paired or b.paired:
            return SequenceState(paired=True)
        merged = SequenceState(firsts=sorted(a.firsts + b.firsts), thens=sorted(a.thens + b.thens))
        if self.latch and any(self._followed(merged, t) for t in merged.firsts):
            return SequenceState(paired=True)
        return merged


def _leaf(node: CoreNode) -> _Leaf | None:
    if isinstance(node, TraitNode):
        return _Trait(node)
    if isinstance(node, PerformedNode):
        return _Performed(node)
    if isinstance(node, FirstPerformedNode | LastPerformedNode):
        return _EventTime(node)
    if isinstance(node, AggregateNode):
        return _Aggregate(node)
    if isinstance(node, SequenceNode):
        return _Sequence(node)
    return None


class RealtimeSegment:
    """Incremental evaluator of one core segment over per-profile states.

    >>> from remarket.schema.segment import parse_segment
    >>> from remarket.segments.desugar import desugar
    >>> seg = RealtimeSegment(desugar(parse_segment({"name": "buyers", "entry": "p",
    ...     "nodes": [{"id": "p", "type": "performed", "event": "Order Completed"}]})))
    >>> from datetime import UTC
    >>> state = seg.new_state()
    >>> t = datetime(2026, 1, 1, tzinfo=UTC)
    >>> seg.apply(state, view_of(Track(event="Order Completed", timestamp=t)), now=t)
    >>> seg.is_member(state, "p_1", at=t)
    True
    """

    def __init__(self, segment: CoreSegment, *, scores: ScoreLookup | None = None) -> None:
        self.segment = segment
        self._scores = scores
        self._slot: dict[str, int] = {}
        self._leaves: list[_Leaf] = []
        self._by_event: dict[str, list[int]] = {}
        self._trait_slots: list[int] = []
        for node_id, node in segment.nodes.items():
            leaf = _leaf(node)
            if leaf is None:
                continue
            slot = self._slot[node_id] = len(self._leaves)
            self._leaves.append(leaf)
            if isinstance(node, TraitNode):
                self._trait_slots.append(slot)
            for name in _event_names(node):
                self._by_event.setdefault(name, []).append(slot)

    def new_state(self) -> ProfileState:
        """The state of a profile with no events."""
        return [leaf.new() for leaf in self._leaves]

    def apply(self, state: ProfileState, event: EventView, now: datetime) -> None:
        """Fold one (deduplicated) event of the profile into its state, in place."""
        now_micros = micros_of(now)
        if event.type == "identify":
            slots: Iterable[int] = self._trait_slots
        elif event.type == "track" and event.event is not None:
            slots = self._by_event.get(event.event, ())
        else:
            return
        for slot in slots:
            self._leaves[slot].apply(state[slot], event, now_micros)

    def is_member(self, state: ProfileState, profile_id: str, at: datetime) -> bool:
        """Membership at ``at`` (which must not precede any applied event)."""
        return self._holds(self.segment.entry, state, profile_id, micros_of(at))

    def _holds(self, node_id: str, state: ProfileState, profile_id: str, at: int) -> bool:
        node = self.segment.nodes[node_id]
        if isinstance(node, AndNode):
            return all(self._holds(c, state, profile_id, at) for c in node.children)
        if isinstance(node, OrNode):
            return any(self._holds(c, state, profile_id, at) for c in node.children)
        if isinstance(node, NotNode):
            return not self._holds(node.child, state, profile_id, at)
        if isinstance(node, RandomBucketNode):
            return bucket_of(profile_id, node.salt) < node.percent
        if isinstance(node, ScoreNode):
            score = self._scores(profile_id, node.model) if self._scores is not None else None
            return score is not None and compare_number(node.operator, score, node.value)
        slot = self._slot[node_id]
        return self._leaves[slot].holds(state[slot], at)

    def next_change(self, state: ProfileState, after: datetime) -> datetime | None:
        """The earliest instant after ``after`` where membership may change with no event."""
        floor = micros_of(after)
        upcoming = [
            edge
            for leaf, leaf_state in zip(self._leaves, state, strict=True)
            for edge in leaf.edges(leaf_state, floor)
            if edge > floor
        ]
        return to_datetime(min(upcoming)) if upcoming else None

    def merge(self, a: ProfileState, b: ProfileState) -> ProfileState:
        """The state of two profiles merged into one (as if one had seen all events)."""
        return [leaf.merge(x, y) for leaf, x, y in zip(self._leaves, a, b, strict=True)]

    @staticmethod
    def encode(state: ProfileState) -> bytes:
        """Serialise a state for the state store (msgpack)."""
        return _ENCODER.encode(state)

    @staticmethod
    def decode(data: bytes) -> ProfileState:
        """A state from :meth:`encode`."""
        return _DECODER.decode(data)


def _event_names(node: CoreNode) -> list[str]:
    if isinstance(node, SequenceNode):
        return sorted({node.first.event, node.then.event})
    if isinstance(node, PerformedNode | FirstPerformedNode | LastPerformedNode | AggregateNode):
        return [node.event]
    return []
