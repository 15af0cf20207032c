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
import operator
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
    "EventTest",
    "EventView",
    "MatcherPool",
    "ProfileState",
    "RealtimeSegment",
    "ScoreLookup",
    "bucket_of",
    "view_of",
]

ScoreLookup = Callable[[str, str], float | None]
"""``(profile_id, model) -> score`` (None when the model has not scored the profile)."""
EventTest = Callable[["EventView"], bool]
"""Whether an event passes a leaf's event name, filters and fixed window."""

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

_Applier = tuple[int, "_Leaf"]
_Predicate = Callable[[ProfileState, str, int], bool]
_Decision = Callable[[ProfileState, str, int], tuple[bool, int | None]]

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


class _Matcher:
    """Whether an event is a track of one name, inside a fixed window, passing filters.

    Built once per leaf (or once per :class:`MatcherPool`): paths split and window bounds
    converted ahead of the events. It remembers its answer for the last event it was
    asked about, so segments sharing it through a pool test each event once.
    """

    __slots__ = ("end", "filters", "last", "name", "start")

    def __init__(
        self,
        name: str,
        where: Iterable[PropertyFilter],
        window: RelativeWindow | AbsoluteWindow | None = None,
    ) -> None:
        self.name = name
        self.filters = [(f.operator, f.value, f.path.split(".")) for f in where]
        self.start = self.end = None
        if isinstance(window, AbsoluteWindow):
            self.start, self.end = micros_of(window.start), micros_of(window.end)
        # (event, answer), replaced in one assignment: safe to read from another thread.
        self.last: tuple[EventView | None, bool] = (None, False)

    def __call__(self, ev: EventView) -> bool:
        seen, answer = self.last
        if seen is ev:
            return answer
        answer = self._test(ev)
        self.last = (ev, answer)
        return answer

    def _test(self, ev: EventView) -> bool:
        if ev.type != "track" or ev.event != self.name:
            return False
        if self.start is not None and not self.start < ev.at <= self.end:  # type: ignore[operator]
            return False
        properties = ev.properties
        return all(
            matches(operator, value, text_at(properties, path), 0)
            for operator, value, path in self.filters
        )


class MatcherPool:
    """Event matchers shared by the segments built with one pool.

    Many segments test the same event the same way (e.g. every ``Product Viewed``
    without filters); built with a pool they share one matcher per distinct (event,
    filters, fixed window), which tests each event once.
    """

    def __init__(self) -> None:
        self._matchers: dict[tuple[str, tuple[str, ...], str | None], _Matcher] = {}

    def get(
        self,
        name: str,
        where: Iterable[PropertyFilter],
        window: RelativeWindow | AbsoluteWindow | None = None,
    ) -> _Matcher:
        where = list(where)
        fixed = window.model_dump_json() if isinstance(window, AbsoluteWindow) else None
        key = (name, tuple(f.model_dump_json() for f in where), fixed)
        found = self._matchers.get(key)
        if found is None:
            found = self._matchers[key] = _Matcher(name, where, window)
        return found


def _span(window: RelativeWindow | AbsoluteWindow | None) -> int | None:
    return duration_seconds(window.last) * MICROS if isinstance(window, RelativeWindow) else None


def _insort_desc_capped(times: list[int], at: int, cap: int) -> None:
    # Kept in descending order so the cap drops the oldest.
    position = bisect.bisect_left([-t for t in times], -at)
    times.insert(position, at)
    del times[cap:]


class _Leaf(ABC):
    """One stateful leaf: how its state starts, grows, merges and decides."""

    node: CoreNode
    moves: bool
    """Whether time alone may change its truth (else :meth:`next_edge` is always None)."""

    @abstractmethod
    def new(self) -> LeafState: ...

    @abstractmethod
    def accepts(self, ev: EventView) -> bool:
        """Whether the event can change the state at all (else :meth:`apply` skips it)."""

    @abstractmethod
    def apply(self, state: Any, ev: EventView, now: int) -> bool:
        """Fold the event in; False if the state did not change (apart from dropping
        what no T >= ``now`` can see)."""

    @abstractmethod
    def triggers(self) -> list[tuple[str | None, EventTest]]:
        """(track event name, or None for identify; test): an event can change the
        state only if a test for its name passes (:meth:`accepts` in parts)."""

    @abstractmethod
    def holds(self, state: Any, at: int) -> bool: ...

    def next_edge(self, state: Any, at: int) -> int | None:
        """The earliest instant after ``at`` where the leaf's truth may flip with no new
        event (None if there is none)."""
        return None

    @abstractmethod
    def merge(self, a: Any, b: Any) -> LeafState: ...


class _Trait(_Leaf):
    node: TraitNode

    def __init__(self, node: TraitNode) -> None:
        self.node = node
        self.path = node.path.split(".")
        value = node.value
        self.spans = [
            duration_seconds(m.ago) * MICROS
            for m in (value if isinstance(value, list) else [value])
            if isinstance(m, Ago)
        ]
        if node.operator == "within_last":
            self.spans.append(duration_seconds(str(value)) * MICROS)
        self.moves = bool(self.spans)

    def new(self) -> TraitState:
        return TraitState()

    def accepts(self, ev: EventView) -> bool:
        return ev.type == "identify" and text_at(ev.traits, self.path) is not None

    def triggers(self) -> list[tuple[str | None, EventTest]]:
        return [(None, self.accepts)]

    def apply(self, state: TraitState, ev: EventView, now: int) -> bool:
        if ev.type != "identify":
            return False
        text = text_at(ev.traits, self.path)
        if text is None or (ev.at, ev.message_id) <= (state.at, state.message_id):
            return False
        state.at, state.message_id, state.text = ev.at, ev.message_id, text
        return True

    def holds(self, state: TraitState, at: int) -> bool:
        return matches(self.node.operator, self.node.value, state.text, at)

    def next_edge(self, state: TraitState, at: int) -> int | None:
        if not self.spans or state.text is None:
            return None
        instant = instant_of_text(state.text)
        if instant is None:
            return None
        if self.node.operator == "within_last":
            edges = [instant, *(instant + s for s in self.spans)]
        else:
            # gt/lte flip at instant + span, gte/lt one microsecond later.
            edges = [e for s in self.spans for e in (instant + s, instant + s + 1)]
        return min((e for e in edges if e > at), default=None)

    def merge(self, a: TraitState, b: TraitState) -> TraitState:
        return a if (a.at, a.message_id) >= (b.at, b.message_id) else b


class _Performed(_Leaf):
    node: PerformedNode

    def __init__(self, node: PerformedNode, pool: MatcherPool) -> None:
        self.node = node
        self.cap = node.times + 1
        self.span = _span(node.window)
        self.moves = self.span is not None
        self.match = pool.get(node.event, node.where, node.window)

    def new(self) -> CountState:
        return CountState()

    def accepts(self, ev: EventView) -> bool:
        return self.match(ev)

    def triggers(self) -> list[tuple[str | None, EventTest]]:
        return [(self.match.name, self.match)]

    def apply(self, state: CountState, ev: EventView, now: int) -> bool:
        if not self.match(ev):
            return False
        if self.span is None:
            if state.count >= self.cap:
                return False
            state.count += 1
            return True
        _insort_desc_capped(state.times, ev.at, self.cap)
        while state.times and state.times[-1] <= now - self.span:
            state.times.pop()
        return True

    def _count(self, state: CountState, at: int) -> int:
        if self.span is None:
            return state.count
        floor, count = at - self.span, 0
        for t in state.times:  # newest first
            if t <= floor:
                break
            count += 1
        return count

    def holds(self, state: CountState, at: int) -> bool:
        count, times = self._count(state, at), self.node.times
        if self.node.operator == "at_least":
            return count >= times
        if self.node.operator == "at_most":
            return count <= times
        return count == times

    def next_edge(self, state: CountState, at: int) -> int | None:
        span = self.span
        if span is None:
            return None
        # times are in descending order: the oldest one still inside moves out first.
        return min((t + span for t in state.times if t + span > at), default=None)

    def merge(self, a: CountState, b: CountState) -> CountState:
        times = sorted(a.times + b.times, reverse=True)[: self.cap]
        return CountState(count=min(a.count + b.count, self.cap), times=times)


class _EventTime(_Leaf):
    node: FirstPerformedNode | LastPerformedNode

    def __init__(self, node: FirstPerformedNode | LastPerformedNode, pool: MatcherPool) -> None:
        self.node = node
        self.pick = max if isinstance(node, LastPerformedNode) else min
        self.match = pool.get(node.event, node.where)
        value = node.value
        self.span: int | None = None
        if isinstance(value, str):
            self.span = duration_seconds(value) * MICROS
        elif isinstance(value, Ago):
            self.span = duration_seconds(value.ago) * MICROS
        self.moves = self.span is not None

    def new(self) -> TimeState:
        return TimeState()

    def accepts(self, ev: EventView) -> bool:
        return self.match(ev)

    def triggers(self) -> list[tuple[str | None, EventTest]]:
        return [(self.match.name, self.match)]

    def apply(self, state: TimeState, ev: EventView, now: int) -> bool:
        if not self.match(ev):
            return False
        before = state.at
        state.at = ev.at if before is None else self.pick(before, ev.at)
        return state.at != before

    def holds(self, state: TimeState, at: int) -> bool:
        if state.at is None:
            return False
        value = self.node.value
        if self.node.operator == "within_last":
            assert self.span is not None
            return state.at > at - self.span
        bound = moment_micros(value, at)  # type: ignore[arg-type]
        return state.at <= bound if self.node.operator == "before" else state.at > bound

    def next_edge(self, state: TimeState, at: int) -> int | None:
        if state.at is None or self.span is None:
            return None
        edge = state.at + self.span
        return edge if edge > at else None

    def merge(self, a: TimeState, b: TimeState) -> TimeState:
        known = [t for t in (a.at, b.at) if t is not None]
        return TimeState(at=self.pick(known) if known else None)


_time_of: Final[Callable[[tuple[int, float | str]], int]] = operator.itemgetter(0)


class _Aggregate(_Leaf):
    node: AggregateNode

    def __init__(self, node: AggregateNode, pool: MatcherPool) -> None:
        self.node = node
        self.path = node.property.split(".") if node.property is not None else None
        self.span = _span(node.window)
        self.moves = self.span is not None
        self.numeric = node.function in ("sum", "avg", "min", "max")
        self.match = pool.get(node.event, node.where, node.window)
        # A distinct value counts while its latest occurrence is inside the window.
        self.latest_only = node.function == "count_distinct"

    def new(self) -> AggregateState:
        return AggregateState()

    def _value(self, ev: EventView) -> float | str | None:
        if self.path is None:
            return ""
        text = text_at(ev.properties, self.path)
        if text is None or not self.numeric:
            return text
        return number_of_text(text)

    def accepts(self, ev: EventView) -> bool:
        return self.match(ev)

    def triggers(self) -> list[tuple[str | None, EventTest]]:
        return [(self.match.name, self.match)]

    def apply(self, state: AggregateState, ev: EventView, now: int) -> bool:
        if not self.match(ev):
            return False
        value = self._value(ev)
        if value is None:
            return False
        if self.span is None:
            self._add(state, value)
            return True
        items = state.items  # ascending by time
        if self.latest_only:
            for i, (at, seen) in enumerate(items):
                if seen == value:
                    if at >= ev.at:
                        return False
                    del items[i]
                    break
        bisect.insort(items, (ev.at, value), key=_time_of)
        del items[: bisect.bisect_right(items, now - self.span, key=_time_of)]
        return True

    def _add(self, state: AggregateState, value: float | str) -> None:
        state.count += 1
        if isinstance(value, float):
            state.total += value
            state.low = value if state.low is None else min(state.low, value)
            state.high = value if state.high is None else max(state.high, value)
        elif self.node.function == "count_distinct" and value not in state.distinct:
            bisect.insort(state.distinct, value)

    def holds(self, state: AggregateState, at: int) -> bool:
        result = self._result(state) if self.span is None else self._window_result(state, at)
        return result is not None and compare_number(self.node.operator, result, self.node.value)

    def _window_result(self, state: AggregateState, at: int) -> float | None:
        items = state.items
        live = items[bisect.bisect_right(items, at - self.span, key=_time_of) :]  # type: ignore[operator]
        function = self.node.function
        if function == "count":
            return float(len(live))
        if function == "count_distinct":
            return float(len({value for _, value in live}))
        values = [value for _, value in live if isinstance(value, float)]
        if function == "sum":
            return float(sum(values))
        if function == "avg":
            return sum(values) / len(values) if values else None
        if not values:
            return None
        return min(values) if function == "min" else max(values)

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

    def next_edge(self, state: AggregateState, at: int) -> int | None:
        span, items = self.span, state.items
        if span is None:
            return None
        i = bisect.bisect_right(items, at - span, key=_time_of)
        return items[i][0] + span if i < len(items) else None

    def merge(self, a: AggregateState, b: AggregateState) -> AggregateState:
        items = sorted(a.items + b.items, key=_time_of)
        if self.latest_only:
            latest = {value: at for at, value in items}
            items = sorted(((at, value) for value, at in latest.items()), key=_time_of)
        merged = AggregateState(items=items)
        merged.count, merged.total = a.count + b.count, a.total + b.total
        lows = [v for v in (a.low, b.low) if v is not None]
        highs = [v for v in (a.high, b.high) if v is not None]
        merged.low, merged.high = min(lows, default=None), max(highs, default=None)
        merged.distinct = sorted(set(a.distinct) | set(b.distinct))
        return merged


class _Sequence(_Leaf):
    """E1 then E2 within W (optionally with E1 inside a window).

    "Not followed": a first that a then follows stays followed for good (thens are only
    dropped once older than every first that can still count), so it is dropped at once
    and the rest stay unfollowed: the profile holds iff the oldest first still inside the
    window is at least W old.
    """

    node: SequenceNode

    def __init__(self, node: SequenceNode, pool: MatcherPool) -> None:
        self.node = node
        self.within = duration_seconds(node.within) * MICROS
        self.span = _span(node.window)
        # Without a moving window a found pair never expires: keep a flag, not lists.
        self.latch = node.followed and self.span is None
        self.moves = not self.latch
        self.first = pool.get(node.first.event, node.first.where, node.window)
        self.then = pool.get(node.then.event, node.then.where)

    def new(self) -> SequenceState:
        return SequenceState()

    def accepts(self, ev: EventView) -> bool:
        return self.first(ev) or self.then(ev)

    def triggers(self) -> list[tuple[str | None, EventTest]]:
        return [(self.first.name, self.first), (self.then.name, self.then)]

    def apply(self, state: SequenceState, ev: EventView, now: int) -> bool:
        if state.paired:
            return False
        firsts, thens = state.firsts, state.thens
        first, then = self.first(ev), self.then(ev)
        if first:
            if self.node.followed or not self._followed(state, ev.at):
                bisect.insort(firsts, ev.at)
        if then:
            bisect.insort(thens, ev.at)
            if not self.node.followed:
                # Firsts in [then - W, then) are followed now.
                low = bisect.bisect_left(firsts, ev.at - self.within)
                del firsts[low : bisect.bisect_left(firsts, ev.at)]
        if self.span is not None:
            floor = now - self.span
            del firsts[: bisect.bisect_right(firsts, floor)]
            del thens[: bisect.bisect_right(thens, floor)]
        if self.latch and any(self._followed(state, t) for t in firsts):
            state.paired, state.firsts, state.thens = True, [], []
        return first or then

    def _followed(self, state: SequenceState, first: int) -> bool:
        i = bisect.bisect_right(state.thens, first)
        return i < len(state.thens) and state.thens[i] <= first + self.within

    def _live(self, state: SequenceState, at: int) -> int:
        """The index of the oldest first inside the window at ``at``."""
        return 0 if self.span is None else bisect.bisect_right(state.firsts, at - self.span)

    def holds(self, state: SequenceState, at: int) -> bool:
        if state.paired:
            return True
        firsts, i = state.firsts, self._live(state, at)
        if self.node.followed:
            return any(self._followed(state, t) for t in firsts[i:])
        return i < len(firsts) and firsts[i] + self.within <= at

    def next_edge(self, state: SequenceState, at: int) -> int | None:
        firsts, edges = state.firsts, []
        if not self.node.followed:
            i = bisect.bisect_right(firsts, at - self.within)
            if i < len(firsts):
                edges.append(firsts[i] + self.within)
        if self.span is not None:
            i = bisect.bisect_right(firsts, at - self.span)
            if i < len(firsts):
                edges.append(firsts[i] + self.span)
        return min(edges, default=None)

    def merge(self, a: SequenceState, b: SequenceState) -> SequenceState:
        if a.paired or b.paired:
            return SequenceState(paired=True)
        merged = SequenceState(thens=sorted(a.thens + b.thens))
        firsts = sorted(a.firsts + b.firsts)
        if not self.node.followed:
            firsts = [t for t in firsts if not self._followed(merged, t)]
        merged.firsts = firsts
        if self.latch and any(self._followed(merged, t) for t in merged.firsts):
            return SequenceState(paired=True)
        return merged


def _leaf(node: CoreNode, pool: MatcherPool) -> _Leaf | None:
    if isinstance(node, TraitNode):
        return _Trait(node)
    if isinstance(node, PerformedNode):
        return _Performed(node, pool)
    if isinstance(node, FirstPerformedNode | LastPerformedNode):
        return _EventTime(node, pool)
    if isinstance(node, AggregateNode):
        return _Aggregate(node, pool)
    if isinstance(node, SequenceNode):
        return _Sequence(node, pool)
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
    True
    >>> seg.is_member(state, "p_1", at=t)
    True
    """

    def __init__(
        self,
        segment: CoreSegment,
        *,
        scores: ScoreLookup | None = None,
        pool: MatcherPool | None = None,
    ) -> None:
        self.segment = segment
        self._scores = scores
        self._slot: dict[str, int] = {}
        self._leaves: list[_Leaf] = []
        self._by_event: dict[str, list[_Applier]] = {}
        self._traits: list[_Applier] = []
        for node_id, node in segment.nodes.items():
            leaf = _leaf(node, pool or MatcherPool())
            if leaf is None:
                continue
            slot = self._slot[node_id] = len(self._leaves)
            self._leaves.append(leaf)
            applier = (slot, leaf)
            if isinstance(node, TraitNode):
                self._traits.append(applier)
            for name in _event_names(node):
                self._by_event.setdefault(name, []).append(applier)
        self._edges = [(slot, leaf.next_edge) for slot, leaf in enumerate(self._leaves)]
        self._predicate = self._compile(segment.entry)
        self._for_all = self._compile_for_all(segment.entry)
        self._decide = self._compile_part(segment.entry).decide

    def _compile(self, node_id: str) -> _Predicate:
        """The entry's truth as nested closures: no node dispatch per evaluation."""
        node = self.segment.nodes[node_id]
        if isinstance(node, AndNode | OrNode):
            parts = [self._compile(c) for c in node.children]
            return _fold(parts, conjunction=isinstance(node, AndNode))
        if isinstance(node, NotNode):
            inner = self._compile(node.child)
            return lambda state, pid, at: not inner(state, pid, at)
        if isinstance(node, RandomBucketNode):
            salt, percent = node.salt, node.percent
            return lambda state, pid, at: bucket_of(pid, salt) < percent
        if isinstance(node, ScoreNode):
            return lambda state, pid, at: self._score_holds(node, pid)
        slot = self._slot[node_id]
        holds = self._leaves[slot].holds
        return lambda state, pid, at: holds(state[slot], at)

    def _compile_part(self, node_id: str) -> _Part:
        """A node's truth and an instant after T before which it cannot change with no
        event: an and with a false part keeps false until that part's edge (or for good,
        if time alone cannot move it), an or with a true part likewise; else until the
        first edge of any part.
        """
        node = self.segment.nodes[node_id]
        value = self._compile(node_id)
        if isinstance(node, AndNode | OrNode):
            parts = sorted(
                (self._compile_part(c) for c in node.children),
                key=lambda part: (part.per_profile, part.moves),
            )
            decide = _decision_of(parts, deciding=isinstance(node, OrNode))
            return _Part(
                value,
                lambda state, pid, at: decide(state, pid, at)[1],
                decide,
                moves=any(p.moves for p in parts),
                per_profile=all(p.per_profile for p in parts),
            )
        if isinstance(node, NotNode):
            inner = self._compile_part(node.child)

            def negated(state: ProfileState, pid: str, at: int) -> tuple[bool, int | None]:
                member, edge = inner.decide(state, pid, at)
                return not member, edge

            return _Part(value, inner.edge, negated, inner.moves, inner.per_profile)
        if isinstance(node, RandomBucketNode | ScoreNode):
            return _Part(
                value,
                lambda state, pid, at: None,
                lambda state, pid, at: (value(state, pid, at), None),
                moves=False,
                per_profile=True,
            )
        slot = self._slot[node_id]
        leaf = self._leaves[slot]
        holds, next_edge = leaf.holds, leaf.next_edge
        return _Part(
            value,
            lambda state, pid, at: next_edge(state[slot], at),
            lambda state, pid, at: (holds(state[slot], at), next_edge(state[slot], at)),
            moves=leaf.moves,
            per_profile=False,
        )

    def _compile_for_all(self, node_id: str) -> Callable[[ProfileState, int], bool | None]:
        """The entry's truth for every profile id at once: None where it depends on the
        id (buckets, scores), and where the and/or/not around such nodes cannot tell."""
        node = self.segment.nodes[node_id]
        if isinstance(node, AndNode | OrNode):
            parts = [self._compile_for_all(c) for c in node.children]
            # The value that decides an and (False) or an or (True) on its own.
            decides = isinstance(node, OrNode)

            def combined(state: ProfileState, at: int) -> bool | None:
                answers = [part(state, at) for part in parts]
                if decides in answers:
                    return decides
                return None if None in answers else not decides

            return combined
        if isinstance(node, NotNode):
            inner = self._compile_for_all(node.child)

            def negated(state: ProfileState, at: int) -> bool | None:
                answer = inner(state, at)
                return None if answer is None else not answer

            return negated
        if isinstance(node, RandomBucketNode | ScoreNode):
            return lambda state, at: None
        slot = self._slot[node_id]
        holds = self._leaves[slot].holds
        return lambda state, at: holds(state[slot], at)

    def _score_holds(self, node: ScoreNode, profile_id: str) -> bool:
        score = self._scores(profile_id, node.model) if self._scores is not None else None
        return score is not None and compare_number(node.operator, score, node.value)

    def new_state(self) -> ProfileState:
        """The state of a profile with no events."""
        return [leaf.new() for leaf in self._leaves]

    def apply(self, state: ProfileState, event: EventView, now: datetime) -> bool:
        """Fold one (deduplicated) event of the profile into its state, in place; False
        if the state did not change (apart from dropping what no T >= now can see)."""
        return self.apply_at(state, event, micros_of(now))

    def apply_at(self, state: ProfileState, event: EventView, now: int) -> bool:
        """:meth:`apply` with ``now`` in epoch microseconds."""
        if event.type == "identify":
            appliers: Iterable[_Applier] = self._traits
        elif event.type == "track" and event.event is not None:
            appliers = self._by_event.get(event.event, ())
        else:
            return False
        changed = False
        for slot, leaf in appliers:
            if leaf.apply(state[slot], event, now):
                changed = True
        return changed

    def triggers(self) -> list[tuple[str | None, EventTest]]:
        """(track event name, or None for identify; test), each test once: an event can
        change a state only if a test for its name passes. Tests of segments built with
        one :class:`MatcherPool` are shared where they are the same."""
        found: dict[int, tuple[str | None, EventTest]] = {}
        for leaf in self._leaves:
            for name, test in leaf.triggers():
                found.setdefault(id(test), (name, test))
        return list(found.values())

    def accepts(self, event: EventView) -> bool:
        """Whether the event can change a profile's state (a leaf reads it and its
        filters pass); if not, applying it changes nothing."""
        if event.type == "identify":
            appliers: Iterable[_Applier] = self._traits
        elif event.type == "track" and event.event is not None:
            appliers = self._by_event.get(event.event, ())
        else:
            return False
        return any(leaf.accepts(event) for _, leaf in appliers)

    def is_member(self, state: ProfileState, profile_id: str, at: datetime) -> bool:
        """Membership at ``at`` (which must not precede any applied event)."""
        return self._predicate(state, profile_id, micros_of(at))

    def member_at(self, state: ProfileState, profile_id: str, at: int) -> bool:
        """:meth:`is_member` with ``at`` in epoch microseconds."""
        return self._predicate(state, profile_id, at)

    def decide_at(self, state: ProfileState, profile_id: str, at: int) -> tuple[bool, int | None]:
        """Membership at ``at`` (epoch microseconds) and an instant after it before which
        membership cannot change with no event (None: it cannot). That instant is never
        before :meth:`next_change_at`'s, the first edge of any leaf."""
        return self._decide(state, profile_id, at)

    def member_for_all(self, state: ProfileState, at: int) -> bool | None:
        """The membership at ``at`` (epoch microseconds) of every profile with this state,
        or None when it may differ by profile (random buckets, scores)."""
        return self._for_all(state, at)

    def next_change(self, state: ProfileState, after: datetime) -> datetime | None:
        """The earliest instant after ``after`` where membership may change with no event."""
        upcoming = self.next_change_at(state, micros_of(after))
        return None if upcoming is None else to_datetime(upcoming)

    def next_change_at(self, state: ProfileState, after: int) -> int | None:
        """:meth:`next_change` in epoch microseconds."""
        upcoming = None
        for slot, next_edge in self._edges:
            edge = next_edge(state[slot], after)
            if edge is not None and (upcoming is None or edge < upcoming):
                upcoming = edge
        return upcoming

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


def _fold(parts: list[_Predicate], *, conjunction: bool) -> _Predicate:
    """``parts`` joined by and/or as nested two-operand closures (no generator per call)."""
    head, *rest = parts
    if not rest:
        return head
    tail = _fold(rest, conjunction=conjunction)
    if conjunction:
        return lambda state, pid, at: head(state, pid, at) and tail(state, pid, at)
    return lambda state, pid, at: head(state, pid, at) or tail(state, pid, at)


@dataclass(frozen=True, slots=True)
class _Part:
    """A compiled node, as the and / or around it decides with it."""

    value: _Predicate
    edge: Callable[[ProfileState, str, int], int | None]
    """An instant after T before which its truth cannot change with no event."""
    decide: _Decision
    """Its truth and that instant, at once."""
    moves: bool
    """Whether time alone may change its truth (it has window edges)."""
    per_profile: bool
    """Whether its truth depends on the profile id (random buckets, scores)."""


def _decision_of(parts: list[_Part], *, deciding: bool) -> _Decision:
    """An and (``deciding`` False: a false part decides it) or an or (True) of parts
    ordered: those time cannot move, those it can, those of the profile id."""

    def decide(state: ProfileState, pid: str, at: int) -> tuple[bool, int | None]:
        others: list[_Part] = []
        for part in parts:
            if part.value(state, pid, at) == deciding:
                # The first deciding part that time can move holds the node until its
                # edge at least; the parts after it could only tell a later one.
                return deciding, part.edge(state, pid, at) if part.moves else None
            if part.moves:
                others.append(part)
        edges = [edge for part in others if (edge := part.edge(state, pid, at)) is not None]
        return not deciding, min(edges, default=None)

    return decide


def _event_names(node: CoreNode) -> list[str]:
    if isinstance(node, SequenceNode):
        return sorted({node.first.event, node.then.event})
    if isinstance(node, PerformedNode | FirstPerformedNode | LastPerformedNode | AggregateNode):
        return [node.event]
    return []
