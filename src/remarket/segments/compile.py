"""Compile a core segment to one SQL query (DuckDB, PostgreSQL or Spark SQL) as of time T.

The query is written in DuckDB's dialect, parsed by sqlglot, adjusted where the
dialects differ in meaning rather than spelling (PostgreSQL reads JSONB paths with
``#>>`` and orders text by collation unless told ``COLLATE "C"``), and generated for
the target. It returns the distinct ``profile_id`` of the members.

Tables read: ``events`` (the warehouse's), ``identities(kind, value, profile_id)`` and,
when score nodes are used, ``scores`` (:data:`SCORES_DDL`). An event belongs to the
profile of its user id, else of its anonymous id. The universe is every profile in
``identities``. Events with timestamp > T are invisible; relative windows are
``(T - D, T]``, absolute ones ``(start, end]``; all values follow
:mod:`remarket.segments.values`, exactly as the real-time evaluator does.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Final

import sqlglot
from sqlglot import exp

from remarket.schema.segment import (
    AbsoluteWindow,
    AggregateNode,
    Ago,
    AndNode,
    At,
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
    INSTANT_FORBIDDEN_RE,
    INSTANT_RE,
    MICROS,
    NUMBER_FORBIDDEN_RE,
    NUMBER_RE,
    micros_of,
    moment_micros,
    to_datetime,
)

__all__ = ["DIALECTS", "SCORES_DDL", "compile_segment"]

DIALECTS: Final = ("duckdb", "postgres", "spark")

SCORES_DDL: Final = (
    "CREATE TABLE IF NOT EXISTS scores (profile_id VARCHAR NOT NULL, model VARCHAR NOT NULL, "
    "score DOUBLE NOT NULL, scored_at TIMESTAMPTZ NOT NULL)"
)
"""Model scores (DuckDB dialect): the value of a model for a profile as of T is its
latest ``scored_at <= T`` (ties: the higher score)."""

_UNITS: Final = {"m": "MINUTE", "h": "HOUR", "d": "DAY"}


def _str(value: str) -> str:
    return exp.Literal.string(value).sql(dialect="duckdb")


def _instant(micros: int) -> str:
    return f"CAST({_str(to_datetime(micros).isoformat(sep=' '))} AS TIMESTAMPTZ)"


def _double(value: float) -> str:
    return f"CAST({_str(repr(float(value)))} AS DOUBLE)"


def _interval(duration: str) -> str:
    return f"INTERVAL {int(duration[:-1])} {_UNITS[duration[-1]]}"


def _json_text(column: str, path: str) -> str:
    return f"json_extract_string({column}, {_str('$.' + path)})"


def _number(text: str) -> str:
    guard = f"regexp_matches({text}, {_str(NUMBER_RE)})"
    guard += f" AND NOT regexp_matches({text}, {_str(NUMBER_FORBIDDEN_RE)})"
    return f"(CASE WHEN {guard} THEN TRY_CAST({text} AS DOUBLE) END)"


def _int(text: str, start: int | str, length: int | str) -> str:
    return f"TRY_CAST(SUBSTRING({text}, {start}, {length}) AS BIGINT)"


def _instant_of(text: str) -> str:
    """Epoch microseconds of ISO-8601 text, by the arithmetic of ``values.instant_of_text``."""
    guard = f"regexp_matches({text}, {_str(INSTANT_RE)})"
    guard += f" AND NOT regexp_matches({text}, {_str(INSTANT_FORBIDDEN_RE)})"
    year, month, day = _int(text, 1, 4), _int(text, 6, 2), _int(text, 9, 2)
    shifted_year = f"({year} - CASE WHEN {month} <= 2 THEN 1 ELSE 0 END)"
    day_of_year = f"((153 * (({month} + 9) % 12) + 2) // 5 + {day} - 1)"
    days = (
        f"(365 * {shifted_year} + {shifted_year} // 4 - {shifted_year} // 100"
        f" + {shifted_year} // 400 + {day_of_year} - 719468)"
    )
    length = f"LENGTH({text})"
    zone = f"(CASE WHEN SUBSTRING({text}, {length}, 1) = 'Z' THEN 1 ELSE 6 END)"
    clock = f"({_int(text, 12, 2)} * 3600 + {_int(text, 15, 2)} * 60 + {_int(text, 18, 2)})"
    digits = f"SUBSTRING({text}, 21, {length} - 20 - {zone})"
    fraction = (
        f"(CASE WHEN SUBSTRING({text}, 20, 1) = '.' "
        f"THEN TRY_CAST(RPAD({digits}, 6, '0') AS BIGINT) ELSE 0 END)"
    )
    offset_minutes = f"({_int(text, f'{length} - 4', 2)} * 60 + {_int(text, f'{length} - 1', 2)})"
    sign = f"(CASE WHEN SUBSTRING({text}, {length} - 5, 1) = '+' THEN 1 ELSE -1 END)"
    offset = f"(CASE WHEN {zone} = 1 THEN 0 ELSE {offset_minutes} * {60 * MICROS} * {sign} END)"
    time_part = (
        f"(CASE WHEN {length} = 10 THEN 0 ELSE {clock} * {MICROS} + {fraction} - {offset} END)"
    )
    micros = f"(CAST({days} AS BIGINT) * {86_400 * MICROS} + {time_part})"
    return f"(CASE WHEN {guard} THEN {micros} END)"


def _value_predicate(operator: str, operand: Any, text: str, at: int) -> str:
    """SQL for ``values.matches(operator, operand, text, at)`` (may be NULL: wrap it)."""
    if operator == "exists":
        return f"({text} IS NOT NULL)"
    if operator == "not_exists":
        return f"({text} IS NULL)"
    if operator == "within_last":
        instant = _instant_of(text)
        low = at - duration_seconds(str(operand)) * MICROS
        return f"({instant} > {low} AND {instant} <= {at})"
    sample = operand[0] if isinstance(operand, list) else operand
    if isinstance(sample, bool):
        return _boolean_predicate(operator, operand, text)
    if isinstance(sample, int | float):
        return _compare(operator, _number(text), operand, _double)
    if isinstance(sample, At | Ago):
        return _compare(operator, _instant_of(text), operand, lambda m: str(moment_micros(m, at)))
    if operator == "contains":
        return f"(STRPOS({text}, {_str(operand)}) > 0)"
    if operator == "starts_with":
        return f"starts_with({text}, {_str(operand)})"
    return _compare(operator, text, operand, _str)


def _boolean_predicate(operator: str, operand: Any, text: str) -> str:
    wanted = set(operand) if isinstance(operand, list) else {operand}
    if operator in ("neq", "not_in"):
        wanted = {True, False} - wanted
    if not wanted:
        return "FALSE"
    texts = ", ".join(_str("true" if v else "false") for v in sorted(wanted))
    return f"({text} IN ({texts}))"


_SQL_OPERATORS: Final = {"eq": "=", "neq": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


def _compare(operator: str, value: str, operand: Any, literal: Any) -> str:
    if operator in ("in", "not_in"):
        items = ", ".join(literal(v) for v in operand)
        return f"({value} {'NOT IN' if operator == 'not_in' else 'IN'} ({items}))"
    if operator == "between":
        low, high = operand
        return f"({value} BETWEEN {literal(low)} AND {literal(high)})"
    return f"({value} {_SQL_OPERATORS[operator]} {literal(operand)})"


def _filters(where: Iterable[PropertyFilter], alias: str) -> list[str]:
    return [
        _value_predicate(f.operator, f.value, _json_text(f"{alias}.properties", f.path), 0)
        for f in where
    ]


def _event_conditions(spec: EventSpec, alias: str) -> list[str]:
    return [
        f"{alias}.type = 'track'",
        f"{alias}.event = {_str(spec.event)}",
        *_filters(spec.where, alias),
    ]


def _window(window: RelativeWindow | AbsoluteWindow | None, column: str, at: int) -> list[str]:
    if isinstance(window, RelativeWindow):
        return [f"{column} > {_instant(at - duration_seconds(window.last) * MICROS)}"]
    if isinstance(window, AbsoluteWindow):
        start, end = micros_of(window.start), micros_of(window.end)
        return [f"{column} > {_instant(start)}", f"{column} <= {_instant(end)}"]
    return []


def _where(conditions: Iterable[str]) -> str:
    return " AND ".join(conditions)


class _Compiler:
    def __init__(self, segment: CoreSegment, at: int, scores: bool) -> None:
        self.segment = segment
        self.at = at
        self.scores = scores
        self.ctes: list[str] = []
        self.names: dict[str, str] = {}

    def leaf(self, body: str) -> str:
        """Register the CTE of a leaf once; its alias in the final query."""
        # Leaves that read the same thing (a sugar's parts often do) share one CTE.
        if body not in self.names:
            name = f"n{len(self.names)}"
            self.names[body] = name
            self.ctes.append(f"{name} AS ({body})")
        return self.names[body]

    def predicate(self, node_id: str) -> str:
        node = self.segment.nodes[node_id]
        if isinstance(node, AndNode):
            return "(" + " AND ".join(self.predicate(c) for c in node.children) + ")"
        if isinstance(node, OrNode):
            return "(" + " OR ".join(self.predicate(c) for c in node.children) + ")"
        if isinstance(node, NotNode):
            return f"(NOT {self.predicate(node.child)})"
        return f"COALESCE({self._leaf_predicate(node)}, FALSE)"

    def _leaf_predicate(self, node: CoreNode) -> str:
        if isinstance(node, TraitNode):
            return self._trait(node)
        if isinstance(node, PerformedNode):
            return self._performed(node)
        if isinstance(node, FirstPerformedNode | LastPerformedNode):
            return self._event_time(node)
        if isinstance(node, AggregateNode):
            return self._aggregate(node)
        if isinstance(node, SequenceNode):
            return self._sequence(node)
        if isinstance(node, ScoreNode):
            return self._score(node)
        if isinstance(node, RandomBucketNode):
            return _bucket(node)
        raise TypeError(f"not a core node: {node!r}")

    def _trait(self, node: TraitNode) -> str:
        written = (
            f"SELECT profile_id, ts, message_id, {_json_text('traits', node.path)} AS v "
            "FROM ev WHERE type = 'identify'"
        )
        ranked = (
            "SELECT profile_id, v, ROW_NUMBER() OVER (PARTITION BY profile_id "
            "ORDER BY ts DESC, COALESCE(message_id, '') DESC) AS rn "
            f"FROM ({written}) AS w WHERE v IS NOT NULL"
        )
        name = self.leaf(f"SELECT profile_id, v FROM ({ranked}) AS r WHERE rn = 1")
        return _value_predicate(node.operator, node.value, f"{name}.v", self.at)

    def _performed(self, node: PerformedNode) -> str:
        spec = EventSpec(event=node.event, where=node.where)
        conditions = _event_conditions(spec, "ev") + _window(node.window, "ev.ts", self.at)
        name = self.leaf(
            f"SELECT profile_id, COUNT(*) AS c FROM ev WHERE {_where(conditions)} "
            "GROUP BY profile_id",
        )
        count = f"COALESCE({name}.c, 0)"
        operator = {"at_least": ">=", "at_most": "<=", "exactly": "="}[node.operator]
        return f"({count} {operator} {node.times})"

    def _event_time(self, node: FirstPerformedNode | LastPerformedNode) -> str:
        spec = EventSpec(event=node.event, where=node.where)
        function = "MAX" if isinstance(node, LastPerformedNode) else "MIN"
        name = self.leaf(
            f"SELECT profile_id, {function}(ts) AS t FROM ev "
            f"WHERE {_where(_event_conditions(spec, 'ev'))} GROUP BY profile_id",
        )
        value = node.value
        if node.operator == "within_last":
            low = self.at - duration_seconds(str(value)) * MICROS
            return f"({name}.t > {_instant(low)})"
        bound = _instant(moment_micros(value, self.at))  # type: ignore[arg-type]
        return f"({name}.t {'<=' if node.operator == 'before' else '>'} {bound})"

    def _aggregate(self, node: AggregateNode) -> str:
        spec = EventSpec(event=node.event, where=node.where)
        conditions = _event_conditions(spec, "ev") + _window(node.window, "ev.ts", self.at)
        text = _json_text("ev.properties", node.property) if node.property else None
        if node.function in ("count", "count_distinct"):
            counted = "*" if text is None else text
            distinct = "DISTINCT " if node.function == "count_distinct" else ""
            columns = f"COUNT({distinct}{counted}) AS c"
        else:
            number = _number(str(text))
            columns = (
                f"SUM({number}) AS s, COUNT({number}) AS c, MIN({number}) AS lo, "
                f"MAX({number}) AS hi"
            )
        name = self.leaf(
            f"SELECT profile_id, {columns} FROM ev WHERE {_where(conditions)} GROUP BY profile_id",
        )
        result = {
            "count": f"COALESCE({name}.c, 0)",
            "count_distinct": f"COALESCE({name}.c, 0)",
            "sum": f"COALESCE({name}.s, 0)",
            "avg": f"(CASE WHEN {name}.c > 0 THEN {name}.s / {name}.c END)",
            "min": f"{name}.lo",
            "max": f"{name}.hi",
        }[node.function]
        result = f"CAST({result} AS DOUBLE)"
        if isinstance(node.value, tuple):
            return _compare("between", result, node.value, _double)
        return _compare(node.operator, result, node.value, _double)

    def _sequence(self, node: SequenceNode) -> str:
        within = _interval(node.within)
        first = _event_conditions(node.first, "a") + _window(node.window, "a.ts", self.at)
        pairing = ["b.profile_id = a.profile_id", "b.ts > a.ts", f"b.ts <= a.ts + {within}"]
        then = [*_event_conditions(node.then, "b"), *pairing]
        if node.followed:
            body = (
                f"SELECT DISTINCT a.profile_id FROM ev AS a JOIN ev AS b "
                f"ON b.profile_id = a.profile_id WHERE {_where(first + then)}"
            )
        else:
            settled = f"a.ts + {within} <= {_instant(self.at)}"
            body = (
                f"SELECT DISTINCT a.profile_id FROM ev AS a WHERE {_where([*first, settled])} "
                f"AND NOT EXISTS (SELECT 1 FROM ev AS b WHERE {_where(then)})"
            )
        name = self.leaf(body)
        return f"({name}.profile_id IS NOT NULL)"

    def _score(self, node: ScoreNode) -> str:
        if not self.scores:
            return "FALSE"
        ranked = (
            "SELECT profile_id, score, ROW_NUMBER() OVER (PARTITION BY profile_id "
            "ORDER BY scored_at DESC, score DESC) AS rn FROM scores "
            f"WHERE model = {_str(node.model)} AND scored_at <= {_instant(self.at)}"
        )
        name = self.leaf(f"SELECT profile_id, score FROM ({ranked}) AS r WHERE rn = 1")
        score = f"CAST({name}.score AS DOUBLE)"
        if isinstance(node.value, tuple):
            return _compare("between", score, node.value, _double)
        return _compare(node.operator, score, node.value, _double)


def _bucket(node: RandomBucketNode) -> str:
    digest = f"SUBSTRING(md5({_str(node.salt + ':')} || p.profile_id), 1, 7)"
    digits = [
        f"(STRPOS('0123456789abcdef', SUBSTRING({digest}, {i + 1}, 1)) - 1) * {16 ** (6 - i)}"
        for i in range(7)
    ]
    return f"((({' + '.join(digits)}) % 100) < {node.percent})"


_EVENTS: Final = (
    "SELECT COALESCE(iu.profile_id, ia.profile_id) AS profile_id, e.type, e.event, "
    "e.message_id, e.timestamp AS ts, e.properties, e.traits FROM events AS e "
    "LEFT JOIN identities AS iu ON iu.kind = 'user_id' AND iu.value = e.user_id "
    "LEFT JOIN identities AS ia ON ia.kind = 'anonymous_id' AND ia.value = e.anonymous_id "
)


def compile_segment(
    segment: CoreSegment,
    at: datetime,
    *,
    dialect: str = "duckdb",
    scores: bool = True,
) -> str:
    """One SELECT of the members' ``profile_id`` as of ``at``, in ``dialect``.

    ``scores=False`` compiles score nodes to false, for warehouses without a ``scores``
    table.

    >>> from datetime import UTC
    >>> from remarket.schema.segment import parse_segment
    >>> from remarket.segments.desugar import desugar
    >>> core = desugar(parse_segment({"name": "buyers", "entry": "p",
    ...     "nodes": [{"id": "p", "type": "performed", "event": "Order Completed"}]}))
    >>> compile_segment(core, datetime(2026, 1, 1, tzinfo=UTC)).startswith("WITH ev AS")
    True
    """
    if dialect not in DIALECTS:
        raise ValueError(f"dialect must be one of {', '.join(DIALECTS)}, got {dialect!r}")
    at_micros = micros_of(at)
    compiler = _Compiler(segment, at_micros, scores)
    predicate = compiler.predicate(segment.entry)
    events = (
        f"{_EVENTS} WHERE e.timestamp <= {_instant(at_micros)} "
        "AND COALESCE(iu.profile_id, ia.profile_id) IS NOT NULL"
    )
    ctes = [
        f"ev AS ({events})",
        "profiles AS (SELECT DISTINCT profile_id FROM identities)",
        *compiler.ctes,
    ]
    joins = "".join(
        f" LEFT JOIN {name} ON {name}.profile_id = p.profile_id" for name in compiler.names.values()
    )
    sql = f"WITH {', '.join(ctes)} SELECT p.profile_id FROM profiles AS p{joins} WHERE {predicate}"
    tree = sqlglot.parse_one(sql, read="duckdb")
    if dialect == "postgres":
        tree = tree.transform(_postgres_meaning)
    return tree.sql(dialect=dialect)


def _postgres_meaning(node: exp.Expression) -> exp.Expression:
    """Where PostgreSQL would read the portable spelling differently, say what we mean."""
    if isinstance(node, exp.JSONExtractScalar) and isinstance(node.expression, exp.JSONPath):
        keys = [str(k.this) for k in node.expression.expressions if isinstance(k, exp.JSONPathKey)]
        path = exp.Literal.string("{" + ",".join(keys) + "}")
        return exp.JSONBExtractScalar(this=node.this, expression=path)
    if isinstance(node, exp.Ordered) and isinstance(node.this, exp.Coalesce):
        # Ties on timestamp fall to messageId in code-point order, as in Python and Spark.
        collated = exp.Collate(
            this=node.this.copy(), expression=exp.Identifier(this="C", quoted=True)
        )
        return exp.Ordered(this=collated, desc=node.args.get("desc"), nulls_first=False)
    return node
