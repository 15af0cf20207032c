"""Real-time evaluation: per-profile leaf state updated per event, membership at any T.

Each leaf of a core segment keeps the least state that decides it at every future T
(:mod:`remarket.segments.leaves`):

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

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import msgspec

from remarket.schema.segment import (
    AggregateNode,
    AndNode,
    FirstPerformedNode,
    LastPerformedNode,
    NotNode,
    OrNode,
    PerformedNode,
    RandomBucketNode,
    ScoreNode,
    SequenceNode,
    TraitNode,
)
from remarket.segments.desugar import CoreNode, CoreSegment
from remarket.segments.leaves import Leaf, LeafState, ProfileState, leaf_of
from remarket.segments.matchers import EventTest, EventView, MatcherPool
from remarket.segments.values import compare_number, micros_of, to_datetime

__all__ = ["RealtimeSegment", "ScoreLookup", "bucket_of"]


ScoreLookup = Callable[[str, str], float | None]
"""``(profile_id, model) -> score`` (None when the model has not scored the profile)."""

_Applier = tuple[int, Leaf]
_Predicate = Callable[[ProfileState, str, int], bool]
_Decision = Callable[[ProfileState, str, int], tuple[bool, int | None]]

_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER: Final = msgspec.msgpack.Decoder(list[LeafState])


def bucket_of(profile_id: str, salt: str) -> int:
    """The profile's random bucket in [0, 100): md5 hex, first 7 digits, mod 100.

    >>> 0 <= bucket_of("p_1", "holdout") < 100
    True
    """
    digest = hashlib.md5(f"{salt}:{profile_id}".encode(), usedforsecurity=False).hexdigest()
    return int(digest[:7], 16) % 100


class RealtimeSegment:
    """Incremental evaluator of one core segment over per-profile states.

    >>> from remarket.schema.segment import parse_segment
    >>> from remarket.segments.desugar import desugar
    >>> seg = RealtimeSegment(desugar(parse_segment({"name": "buyers", "entry": "p",
    ...     "nodes": [{"id": "p", "type": "performed", "event": "Order Completed"}]})))
    >>> from datetime import UTC
    >>> from remarket.schema.events import Track
    >>> from remarket.segments.matchers import view_of
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
        self._leaves: list[Leaf] = []
        self._by_event: dict[str, list[_Applier]] = {}
        self._traits: list[_Applier] = []
        for node_id, node in segment.nodes.items():
            leaf = leaf_of(node, pool or MatcherPool())
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
