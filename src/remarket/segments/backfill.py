"""Computing a segment from the warehouse: members by SQL, real-time states by replay.

A new or edited segment gets its members from :func:`sql_members` (the SQL compiler,
in the warehouse's dialect, as of now) and its per-profile real-time state from
:func:`replay_states`: each profile's stored events, oldest first, folded through
:meth:`RealtimeSegment.apply`. Replay reads only the events the real-time sink has
already applied (log offset <= its offset), so the sink carries on from there and no
event is counted twice. Only the events the segment reads are fetched.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import msgspec
import sqlglot
from sqlglot import exp

from remarket.schema.segment import (
    AggregateNode,
    FirstPerformedNode,
    LastPerformedNode,
    PerformedNode,
    SequenceNode,
    TraitNode,
)
from remarket.segments.compile import compile_segment
from remarket.segments.desugar import CoreSegment
from remarket.segments.leaves import ProfileState
from remarket.segments.matchers import EventView
from remarket.segments.realtime import RealtimeSegment
from remarket.segments.values import micros_of
from remarket.storage.warehouse import Warehouse

__all__ = ["Reads", "reads_of", "replay_states", "sql_members"]

_OBJECT: Final = msgspec.json.Decoder(dict[str, Any])


@dataclass(frozen=True, slots=True)
class Reads:
    """What events can change a segment: track events by name, and identify (traits)."""

    events: frozenset[str]
    traits: bool

    def wants(self, event_type: str, event: str | None) -> bool:
        if event_type == "identify":
            return self.traits
        return event_type == "track" and event in self.events


def reads_of(segment: CoreSegment) -> Reads:
    """The events a core segment reads.

    >>> from remarket.schema.segment import parse_segment
    >>> from remarket.segments.desugar import desugar
    >>> reads_of(desugar(parse_segment({"name": "c", "entry": "c",
    ...     "nodes": [{"id": "c", "type": "cart_abandoned"}]}))).events == {
    ...     "Product Added", "Order Completed"}
    True
    """
    names: set[str] = set()
    traits = False
    for node in segment.nodes.values():
        if isinstance(node, SequenceNode):
            names |= {node.first.event, node.then.event}
        elif isinstance(
            node, PerformedNode | FirstPerformedNode | LastPerformedNode | AggregateNode
        ):
            names.add(node.event)
        elif isinstance(node, TraitNode):
            traits = True
    return Reads(frozenset(names), traits)


def sql_members(warehouse: Warehouse, segment: CoreSegment, at: datetime) -> set[str]:
    """The members as of ``at``, computed by SQL in the warehouse."""
    sql = compile_segment(segment, at, dialect=warehouse.dialect, scores=False)
    return {str(row[0]) for row in warehouse.query(sql)}


def _replay_sql(reads: Reads, through: int, dialect: str) -> str | None:
    kinds = []
    if reads.traits:
        kinds.append("e.type = 'identify'")
    if reads.events:
        names = ", ".join(exp.Literal.string(n).sql(dialect="duckdb") for n in sorted(reads.events))
        kinds.append(f"(e.type = 'track' AND e.event IN ({names}))")
    if not kinds:
        return None
    profile = "COALESCE(iu.profile_id, ia.profile_id)"
    sql = (
        f"SELECT {profile} AS profile_id, e.type, e.event, e.message_id, e.timestamp, "
        "e.properties, e.traits FROM events AS e "
        "LEFT JOIN identities AS iu ON iu.kind = 'user_id' AND iu.value = e.user_id "
        "LEFT JOIN identities AS ia ON ia.kind = 'anonymous_id' AND ia.value = e.anonymous_id "
        f'WHERE e."offset" <= {int(through)} AND {profile} IS NOT NULL '
        f"AND ({' OR '.join(kinds)}) "
        f'ORDER BY {profile}, e.timestamp, e."offset"'
    )
    return sqlglot.transpile(sql, read="duckdb", write=dialect)[0]


def _object(value: object) -> Mapping[str, Any]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return value
    if isinstance(value, bytes | str):
        return _OBJECT.decode(value)
    raise TypeError(f"a JSON object column holds {type(value).__name__}")


def replay_states(
    warehouse: Warehouse, segment: RealtimeSegment, through: int, at: datetime
) -> Iterator[tuple[str, ProfileState, datetime]]:
    """``(profile_id, state, evaluated_at)`` for every profile with events the segment
    reads, from the warehouse's events with log offset <= ``through``.

    ``evaluated_at`` is ``at``, or a later event's timestamp (events are never ahead of
    the time a state is evaluated at).
    """
    sql = _replay_sql(reads_of(segment.segment), through, warehouse.dialect)
    if sql is None:
        return
    current: str | None = None
    state: ProfileState = []
    latest = at
    for pid, event_type, event, message_id, timestamp, properties, traits in warehouse.query(sql):
        if pid != current:
            if current is not None:
                yield current, state, latest
            current, state, latest = str(pid), segment.new_state(), at
        latest = max(latest, timestamp)
        view = EventView(
            type=event_type,
            event=event,
            at=micros_of(timestamp),
            message_id=message_id or "",
            properties=_object(properties) if event_type == "track" else {},
            traits=_object(traits) if event_type == "identify" else {},
        )
        segment.apply(state, view, latest)
    if current is not None:
        yield current, state, latest
