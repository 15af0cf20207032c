"""A small shop's event stream and the four engines that must agree on it.

Hypothesis strategies build event streams (several people, identify/alias merges,
out-of-order and late timestamps, duplicate messageIds, timestamps in several zones)
and definitions (every node type, nested). Runners evaluate one definition as of T in
the real-time evaluator (replaying the stream with identity merges), DuckDB,
PostgreSQL and Spark SQL.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import strategies as st

from remarket.profiles.identity import IdentityGraph, identifiers_of
from remarket.schema.events import Alias, Identify, Message, Page, Track
from remarket.schema.segment import SegmentDefinition, parse_segment
from remarket.segments.compile import SCORES_DDL, compile_segment
from remarket.segments.desugar import CoreSegment
from remarket.segments.matchers import view_of
from remarket.segments.realtime import RealtimeSegment
from remarket.segments.spark import register_tables
from remarket.storage.warehouse.duckdb import DuckDBWarehouse
from remarket.storage.warehouse.postgres import PostgresWarehouse

BASE = datetime(2026, 3, 1, tzinfo=UTC)
STEP = timedelta(minutes=30)
EVENTS = ("Product Viewed", "Product Added", "Order Completed")
ANONYMOUS = ("a0", "a1", "a2", "a3", "a4")
USERS = ("u0", "u1", "u2")
ZONES = (UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5, minutes=-30)))


def at_step(k: int) -> datetime:
    return BASE + k * STEP


@dataclass
class World:
    """Deduplicated events in arrival order, the identities they make, and model scores."""

    messages: list[Message]
    at: datetime
    scores: list[tuple[str, str, float, datetime]] = field(default_factory=list)

    def graph(self) -> IdentityGraph:
        graph = IdentityGraph()
        for m in self.messages:
            graph.link(identifiers_of(m))
        return graph

    def identity_rows(self) -> list[tuple[str, str, str]]:
        graph = self.graph()
        return [
            (kind, value, graph.profile_of((kind, value))) for kind, value in graph.identifiers()
        ]

    def score_of(self, profile_id: str, model: str) -> float | None:
        visible = [
            (at, score)
            for pid, m, score, at in self.scores
            if pid == profile_id and m == model and at <= self.at
        ]
        return max(visible)[1] if visible else None


def dedupe(messages: Sequence[Message]) -> list[Message]:
    """Keep the first arrival of each messageId, as collect does."""
    seen: set[str | None] = set()
    out = []
    for m in messages:
        if m.message_id in seen:
            continue
        seen.add(m.message_id)
        out.append(m)
    return out


# --- strategies: events -------------------------------------------------------------

_NUMBERS = st.sampled_from([0, 1, 2.5, 10, 18, 30.25, -4, 100])
_PROPERTY_VALUES = st.one_of(
    _NUMBERS,
    st.sampled_from(["10", "2.5", "abc", "", "shoes", "1e1", " 10", "10\n", True, False, None]),
)
_TRAIT_VALUES = st.one_of(
    _NUMBERS,
    st.sampled_from(["pro", "free", "10", "true", "Pro", "it's", "a\\b", True, False, None]),
)
_INSTANT_TEXTS = st.sampled_from(
    [
        "2026-03-05T10:00:00Z",
        "2026-03-05T12:00:00+02:00",
        "2026-03-09",
        "2026-03-10T23:30:00.5-05:30",
        "2026-02-30T00:00:00Z",
        "2026-03-05T10:00:00",
        "2026-03-11T00:00:00.123456+00:00",
        "yesterday",
        "2026-03-12T00:00:00Z",
    ]
)


def _maybe(key: str, values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(st.just({}), values.map(lambda v: {key: v}))


@st.composite
def _properties(draw: st.DrawFn) -> dict[str, Any]:
    props: dict[str, Any] = {}
    props |= draw(_maybe("category", st.sampled_from(["shoes", "hats", "Shoes", 10])))
    props |= draw(_maybe("revenue", _PROPERTY_VALUES))
    props |= draw(_maybe("meta", _maybe("x", _PROPERTY_VALUES)))
    return props


@st.composite
def _traits(draw: st.DrawFn) -> dict[str, Any]:
    traits: dict[str, Any] = {}
    traits |= draw(_maybe("plan", _TRAIT_VALUES))
    traits |= draw(_maybe("age", _NUMBERS | st.sampled_from(["30", "old"])))
    traits |= draw(_maybe("signup", _INSTANT_TEXTS))
    choice = st.sampled_from([True, False, "true", None])
    # personalization: score nodes hold only with it.
    purposes = st.builds(dict.__or__, _maybe("email", choice), _maybe("personalization", choice))
    traits |= draw(_maybe("consent", purposes))
    return traits


_ID = st.one_of(
    st.tuples(st.sampled_from(ANONYMOUS), st.none()),
    st.tuples(st.none(), st.sampled_from(USERS)),
    st.tuples(st.sampled_from(ANONYMOUS), st.sampled_from(USERS)),
)


@st.composite
def messages(draw: st.DrawFn, max_size: int = 30) -> list[Message]:
    """Events in arrival order; timestamps on a 30-minute grid, shuffled, in any zone."""
    count = draw(st.integers(1, max_size))
    out: list[Message] = []
    for n in range(count):
        anonymous_id, user_id = draw(_ID)
        moment = at_step(draw(st.integers(0, 480))).astimezone(draw(st.sampled_from(ZONES)))
        duplicate = out and draw(st.integers(0, 9)) == 0
        message_id = (
            draw(st.sampled_from([m.message_id for m in out])) if duplicate else f"m{n:03d}"
        )
        common: dict[str, Any] = {
            "message_id": message_id,
            "anonymous_id": anonymous_id,
            "user_id": user_id,
            "timestamp": moment,
            "received_at": moment,
        }
        kind = draw(
            st.sampled_from(["track", "track", "track", "identify", "identify", "alias", "page"])
        )
        if kind == "track":
            props = msgspec.Raw(json.dumps(draw(_properties())).encode())
            out.append(Track(event=draw(st.sampled_from(EVENTS)), properties=props, **common))
        elif kind == "identify":
            traits = msgspec.Raw(json.dumps(draw(_traits())).encode())
            out.append(Identify(traits=traits, **common))
        elif kind == "alias":
            common["user_id"] = draw(st.sampled_from(USERS))
            out.append(Alias(previous_id=draw(st.sampled_from(ANONYMOUS + USERS)), **common))
        else:
            out.append(Page(name="Home", **common))
    return out


@st.composite
def worlds(draw: st.DrawFn) -> World:
    world = World(dedupe(draw(messages())), at_step(draw(st.integers(300, 500))))
    graph = world.graph()
    for ident in draw(st.lists(st.sampled_from([("user_id", u) for u in USERS]), max_size=3)):
        if ident in graph.identifiers():
            when = at_step(draw(st.integers(0, 520)))
            score = draw(st.sampled_from([0.1, 0.5, 0.9]))
            world.scores.append((graph.profile_of(ident), "churn", score, when))
    return world


# --- strategies: definitions --------------------------------------------------------

_DURATIONS = st.sampled_from(["30m", "1h", "2h", "1d", "3d", "7d"])
_AT_MOMENTS = st.integers(100, 500).map(lambda k: {"at": at_step(k).isoformat()})
_MOMENTS = st.one_of(_AT_MOMENTS, _DURATIONS.map(lambda d: {"ago": d}))
_WINDOWS = st.one_of(
    st.none(),
    _DURATIONS.map(lambda d: {"last": d}),
    st.tuples(st.integers(0, 300), st.integers(1, 300)).map(
        lambda p: {"start": at_step(p[0]).isoformat(), "end": at_step(p[0] + p[1]).isoformat()}
    ),
)
_STRINGS = st.sampled_from(["pro", "10", "shoes", "it's", "a\\b", "true"])


def _condition(relative: bool) -> st.SearchStrategy[dict[str, Any]]:
    options = [
        st.tuples(st.sampled_from(["eq", "neq"]), st.one_of(_STRINGS, _NUMBERS, st.booleans())),
        st.tuples(st.sampled_from(["in", "not_in"]), st.lists(_STRINGS, min_size=1, max_size=3)),
        st.tuples(st.sampled_from(["in", "not_in"]), st.lists(_NUMBERS, min_size=1, max_size=3)),
        st.tuples(st.sampled_from(["in", "not_in"]), st.lists(st.booleans(), min_size=1)),
        st.tuples(
            st.sampled_from(["contains", "starts_with"]), st.sampled_from(["pr", "o", "1", "\\"])
        ),
        st.tuples(st.sampled_from(["gt", "gte", "lt", "lte"]), _NUMBERS),
        st.tuples(st.just("between"), st.tuples(_NUMBERS, _NUMBERS).map(sorted)),
        st.tuples(st.sampled_from(["exists", "not_exists"]), st.none()),
    ]
    moments = _MOMENTS if relative else _AT_MOMENTS
    options.append(st.tuples(st.sampled_from(["gt", "gte", "lt", "lte"]), moments))
    options.append(st.tuples(st.just("eq"), _AT_MOMENTS))  # eq takes no {ago: ...}
    options.append(st.tuples(st.just("between"), st.lists(moments, min_size=2, max_size=2)))
    if relative:
        options.append(st.tuples(st.just("within_last"), _DURATIONS))
    return st.one_of(options).map(lambda p: {"operator": p[0], "value": p[1]})


_FILTERS = st.lists(
    st.builds(
        lambda path, c: {"path": path, **c},
        st.sampled_from(["category", "revenue", "meta.x"]),
        _condition(False),
    ),
    max_size=1,
)
_EVENT = st.sampled_from(EVENTS)


def _leaves() -> st.SearchStrategy[dict[str, Any]]:
    trait = st.builds(
        lambda path, c: {"type": "trait", "path": path, **c},
        st.sampled_from(["plan", "age", "signup", "consent.email", "missing"]),
        _condition(True),
    )
    performed = st.builds(
        lambda e, w, op, n, win: (
            {"type": "performed", "event": e, "where": w, "operator": op}
            | ({"times": n} if op != "never" else {})
            | ({"window": win} if win else {})
        ),
        _EVENT,
        _FILTERS,
        st.sampled_from(["at_least", "at_most", "exactly", "never"]),
        st.integers(0, 3),
        _WINDOWS,
    )
    event_time = st.builds(
        lambda kind, e, w, c: {"type": kind, "event": e, "where": w, **c},
        st.sampled_from(["last_performed", "first_performed"]),
        _EVENT,
        _FILTERS,
        st.one_of(
            st.tuples(st.sampled_from(["before", "after"]), _MOMENTS),
            st.tuples(st.just("within_last"), _DURATIONS),
        ).map(lambda p: {"operator": p[0], "value": p[1]}),
    )
    aggregate = st.builds(
        lambda e, w, fn, prop, win, c: (
            {"type": "aggregate", "event": e, "where": w, "function": fn}
            | ({"property": prop or "revenue"} if prop or fn != "count" else {})
            | ({"window": win} if win else {})
            | c
        ),
        _EVENT,
        _FILTERS,
        st.sampled_from(["sum", "avg", "min", "max", "count", "count_distinct"]),
        st.sampled_from(["revenue", "meta.x", "category", None]),
        _WINDOWS,
        st.one_of(
            st.tuples(st.sampled_from(["eq", "neq", "gt", "gte", "lt", "lte"]), _NUMBERS),
            st.tuples(st.just("between"), st.tuples(_NUMBERS, _NUMBERS).map(sorted)),
        ).map(lambda p: {"operator": p[0], "value": p[1]}),
    )
    sequence = st.builds(
        lambda a, b, wa, within, followed, win: (
            {
                "type": "sequence",
                "first": {"event": a, "where": wa},
                "then": {"event": b},
                "within": within,
                "followed": followed,
            }
            | ({"window": win} if win else {})
        ),
        _EVENT,
        _EVENT,
        _FILTERS,
        _DURATIONS,
        st.booleans(),
        _WINDOWS,
    )
    score = st.builds(
        lambda c: {"type": "score", "model": "churn"} | c,
        st.one_of(
            st.tuples(
                st.sampled_from(["eq", "neq", "gt", "gte", "lt", "lte"]),
                st.sampled_from([0.1, 0.5, 0.9]),
            ),
            st.tuples(st.just("between"), st.just((0.2, 0.9))),
        ).map(lambda p: {"operator": p[0], "value": p[1]}),
    )
    bucket = st.builds(
        lambda pct, salt: {"type": "random_bucket", "percent": pct, "salt": salt},
        st.sampled_from([0, 30, 50, 100]),
        st.sampled_from(["", "holdout", "x'y"]),
    )
    sugar = st.one_of(
        st.builds(
            lambda w, back: {"type": "cart_abandoned", "within": w, "lookback": back},
            _DURATIONS,
            _DURATIONS,
        ),
        st.builds(lambda w: {"type": "browse_abandoned", "within": w}, _DURATIONS),
        st.just({"type": "lapsed_buyer", "after": "1d", "before": "3d"}),
        st.builds(lambda t: {"type": "high_value", "threshold": t, "window": "7d"}, _NUMBERS),
        st.builds(
            lambda c, n: {"type": "category_interest", "category": c, "times": n},
            st.sampled_from(["shoes", "hats"]),
            st.integers(1, 3),
        ),
        st.just({"type": "consent", "purpose": "email"}),
        st.sampled_from(["buyers", "vip"]).map(lambda s: {"type": "in_segment", "segment": s}),
    )
    return st.one_of(trait, performed, event_time, aggregate, sequence, score, bucket, sugar)


_TREES = st.recursive(
    _leaves(),
    lambda children: st.one_of(
        st.builds(
            lambda kind, cs: {"type": kind, "children": cs},
            st.sampled_from(["and", "or"]),
            st.lists(children, min_size=1, max_size=3),
        ),
        children.map(lambda c: {"type": "not", "child": c}),
    ),
    max_leaves=5,
)


def flatten(tree: dict[str, Any], name: str = "generated") -> SegmentDefinition:
    """A nested node tree as a flat definition with ids n0, n1, ..."""
    nodes: list[dict[str, Any]] = []

    def visit(node: dict[str, Any]) -> str:
        node_id = f"n{len(nodes)}"
        flat = dict(node, id=node_id)
        nodes.append(flat)
        if node["type"] in ("and", "or"):
            flat["children"] = [visit(c) for c in node["children"]]
        elif node["type"] == "not":
            flat["child"] = visit(node["child"])
        return node_id

    entry = visit(tree)
    return parse_segment({"name": name, "entry": entry, "nodes": nodes})


definitions = _TREES.map(flatten)

REGISTRY: dict[str, SegmentDefinition] = {
    "buyers": parse_segment(
        {
            "name": "buyers",
            "entry": "b",
            "nodes": [{"id": "b", "type": "performed", "event": "Order Completed"}],
        }
    ),
    "vip": parse_segment(
        {
            "name": "vip",
            "entry": "v",
            "nodes": [
                {"id": "v", "type": "and", "children": ["in", "sum"]},
                {"id": "in", "type": "in_segment", "segment": "buyers"},
                {
                    "id": "sum",
                    "type": "aggregate",
                    "event": "Order Completed",
                    "function": "sum",
                    "property": "revenue",
                    "operator": "gte",
                    "value": 10,
                },
            ],
        }
    ),
}


# --- engines ------------------------------------------------------------------------


def realtime_states(
    core: CoreSegment, world: World
) -> tuple[RealtimeSegment, dict[str, list[Any]]]:
    """Replay the stream through the real-time evaluator, merging states on identity
    merges: the evaluator and the state of every profile (the empty one if it has no
    events up to T)."""
    seg = RealtimeSegment(core, scores=world.score_of)
    graph = IdentityGraph()
    states: dict[str, list[Any]] = {}
    now = BASE - timedelta(days=1)
    for m in world.messages:
        ids = identifiers_of(m)
        before = {graph.profile_of(i) for i in ids if i in set(graph.identifiers())}
        graph.link(ids)
        profile = graph.profile_of(ids[0])
        state = states.pop(profile, None) or seg.new_state()
        for old in before - {profile}:
            state = seg.merge(state, states.pop(old, None) or seg.new_state())
        assert m.timestamp is not None
        if m.timestamp <= world.at:
            now = max(now, m.timestamp)
            seg.apply(state, view_of(m), now)
        states[profile] = seg.decode(seg.encode(state))
    universe = {graph.profile_of(i) for i in graph.identifiers()}
    return seg, {p: states.get(p) or seg.new_state() for p in universe}


def realtime_members(core: CoreSegment, world: World) -> set[str]:
    seg, states = realtime_states(core, world)
    return {p for p, state in states.items() if seg.is_member(state, p, world.at)}


def _rows(world: World) -> list[tuple[int, Message]]:
    return list(enumerate(world.messages, start=1))


def _duckdb(world: World) -> DuckDBWarehouse:
    """An in-memory DuckDB warehouse holding the world's events, identities and scores."""
    wh = DuckDBWarehouse(None)
    rows = _rows(world)
    wh.write_events("test", rows, through=len(rows), expected=0)
    wh.upsert_identities(world.identity_rows())
    wh.query(SCORES_DDL)
    for row in world.scores:
        wh.query("INSERT INTO scores VALUES (?, ?, ?, ?)", row)
    return wh


def duckdb_members(core: CoreSegment, world: World) -> set[str]:
    wh = _duckdb(world)
    try:
        return {r[0] for r in wh.query(compile_segment(core, world.at, dialect="duckdb"))}
    finally:
        wh.close()


PG_SCORES_DDL = (
    "CREATE TABLE scores (profile_id TEXT NOT NULL, model TEXT NOT NULL,"
    " score DOUBLE PRECISION NOT NULL, scored_at TIMESTAMPTZ NOT NULL)"
)


class Postgres:
    """One PostgreSQL warehouse for many examples: emptied and refilled per world."""

    def __init__(self, url: str) -> None:
        self.warehouse = PostgresWarehouse(url)
        self.warehouse.query(PG_SCORES_DDL)
        # The world loaded last, held (not its id: a new world may get a freed world's id,
        # and would then be answered from the old one's rows).
        self.loaded: World | None = None

    def load(self, world: World) -> None:
        if self.loaded is world:
            return
        self.warehouse.query("TRUNCATE events, identities, scores, consumer_offsets")
        rows = _rows(world)
        self.warehouse.write_events("test", rows, through=len(rows), expected=0)
        self.warehouse.upsert_identities(world.identity_rows())
        for row in world.scores:
            self.warehouse.query("INSERT INTO scores VALUES (%s, %s, %s, %s)", row)
        self.loaded = world

    def members(self, core: CoreSegment, world: World) -> set[str]:
        self.load(world)
        sql = compile_segment(core, world.at, dialect="postgres")
        return {r[0] for r in self.warehouse.query(sql)}

    def close(self) -> None:
        self.warehouse.close()


def spark_members(spark: Any, cores: Sequence[CoreSegment], world: World) -> list[set[str]]:
    """Export the world's DuckDB warehouse as Parquet, read it with Spark SQL, run each
    definition."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        wh = _duckdb(world)
        try:
            wh.export_parquet(folder)
            wh.query(f"COPY scores TO '{folder / 'scores.parquet'}' (FORMAT parquet)")
        finally:
            wh.close()
        register_tables(spark, folder)
        # One job for the batch: Spark's per-query scheduling dominates on tiny data.
        parts = [
            f"SELECT {i} AS k, profile_id FROM ({compile_segment(core, world.at, dialect='spark')})"
            for i, core in enumerate(cores)
        ]
        found: list[set[str]] = [set() for _ in cores]
        for k, profile_id in spark.sql(" UNION ALL ".join(parts)).collect():
            found[k].add(profile_id)
        return found
