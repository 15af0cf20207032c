"""The stateful leaves of the real-time evaluator: each leaf's state, and how it starts,
grows with an event, merges, decides at a time T and finds its next window edge.

Times are epoch microseconds. :mod:`remarket.segments.realtime` says what each leaf keeps
and combines the leaves of a segment.
"""

from __future__ import annotations

import bisect
import operator
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Final

import msgspec

from remarket.schema.segment import (
    AbsoluteWindow,
    AggregateNode,
    Ago,
    FirstPerformedNode,
    LastPerformedNode,
    PerformedNode,
    RelativeWindow,
    SequenceNode,
    TraitNode,
    duration_seconds,
)
from remarket.segments.desugar import CoreNode
from remarket.segments.matchers import EventTest, EventView, Matcher, MatcherPool
from remarket.segments.values import (
    MICROS,
    compare_number,
    instant_of_text,
    matches,
    moment_micros,
    number_of_text,
    text_at,
)

__all__ = ["Leaf", "LeafState", "ProfileState", "leaf_of"]


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


def _span(window: RelativeWindow | AbsoluteWindow | None) -> int | None:
    return duration_seconds(window.last) * MICROS if isinstance(window, RelativeWindow) else None


def _insort_desc_capped(times: list[int], at: int, cap: int) -> None:
    # Kept in descending order so the cap drops the oldest.
    position = bisect.bisect_left([-t for t in times], -at)
    times.insert(position, at)
    del times[cap:]


class Leaf(ABC):
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


class _Trait(Leaf):
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


class _OneEvent(Leaf):
    """A leaf that reads the events one matcher picks."""

    match: Matcher

    def accepts(self, ev: EventView) -> bool:
        return self.match(ev)

    def triggers(self) -> list[tuple[str | None, EventTest]]:
        return [(self.match.name, self.match)]


class _Performed(_OneEvent):
    node: PerformedNode

    def __init__(self, node: PerformedNode, pool: MatcherPool) -> None:
        self.node = node
        self.cap = node.times + 1
        self.span = _span(node.window)
        self.moves = self.span is not None
        self.match = pool.get(node.event, node.where, node.window)

    def new(self) -> CountState:
        return CountState()

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


class _EventTime(_OneEvent):
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


class _Aggregate(_OneEvent):
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


class _Sequence(Leaf):
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


def leaf_of(node: CoreNode, pool: MatcherPool) -> Leaf | None:
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
