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

import operator
from collections.abc import Callable, Iterable
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
_GROUPED: Final = "g"
"""The CTE of the per-profile aggregates that counting leaves share."""


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


_Span = tuple[int | None, int | None]
"""Bounds on an event's timestamp: after the first, up to the second (microseconds)."""


def _span(window: RelativeWindow | AbsoluteWindow | None, at: int) -> _Span:
    if isinstance(window, RelativeWindow):
        return at - duration_seconds(window.last) * MICROS, None
    if isinstance(window, AbsoluteWindow):
        return micros_of(window.start), micros_of(window.end)
    return None, None


def _bounds(span: _Span) -> list[str]:
    low, high = span
    return [
        *([] if low is None else [f"e.timestamp > {_instant(low)}"]),
        *([] if high is None else [f"e.timestamp <= {_instant(high)}"]),
    ]


def _where(conditions: Iterable[str]) -> str:
    return " AND ".join(conditions)


class _Compiler:
    def __init__(self, segment: CoreSegment, at: int, dialect: str, scores: bool) -> None:
        self.segment = segment
        self.at = at
        self.dialect = dialect
        self.scores = scores
        self.ctes: list[str] = []
        self.names: dict[str, str] = {}
        self.leaf_of: dict[str, str] = {}  # node id -> alias of its CTE
        self.key = "p.profile_id"  # the column naming the candidate profile
        self.flags: dict[str, str] = {}  # conditions on events -> column of ev
        self.values: dict[str, str] = {}  # expression on events -> column of ev
        self.scans: dict[tuple[str, ...], list[tuple[str, _Span]]] = {}  # by event name
        # Per-profile aggregates of the counting leaves, all in one CTE (``g``): one
        # GROUP BY over ``ev`` instead of one per leaf.
        self.aggregates: dict[str, str] = {}  # aggregate over ev -> column of g
        self.aggregated: dict[str, None] = {}  # the flags of ev that g reads
        self._last: str | None = None

    def leaf(self, body: str) -> str:
        """Register the CTE of a leaf once; its alias in the final query."""
        # Leaves that read the same thing (a sugar's parts often do) share one CTE.
        if body not in self.names:
            name = f"n{len(self.names)}"
            self.names[body] = name
            self.ctes.append(f"{name} AS ({body})")
        self._last = self.names[body]
        return self._last

    def predicate(self, node_id: str) -> str:
        node = self.segment.nodes[node_id]
        if isinstance(node, AndNode):
            return "(" + " AND ".join(self.predicate(c) for c in node.children) + ")"
        if isinstance(node, OrNode):
            return "(" + " OR ".join(self.predicate(c) for c in node.children) + ")"
        if isinstance(node, NotNode):
            return f"(NOT {self.predicate(node.child)})"
        self._last = None
        predicate = self._leaf_predicate(node)
        if self._last is not None:
            self.leaf_of[node_id] = self._last
        return f"COALESCE({predicate}, FALSE)"

    def flag(self, conditions: list[str], span: _Span) -> str:
        """The column of ``ev`` that marks the events as of T in ``span`` that pass
        ``conditions`` (which start with those on ``e.type`` and ``e.event``)."""
        where = _where([*conditions, *_bounds(span)])
        key = tuple(c for c in conditions if c.startswith(("e.type = ", "e.event = ")))
        if where not in self.flags:
            self.flags[where] = f"f{len(self.flags)}"
            self.scans.setdefault(key, []).append((where, span))
        return self.flags[where]

    def value(self, expression: str) -> str:
        """The column of ``ev`` holding ``expression`` over ``e``."""
        return self.values.setdefault(expression, f"x{len(self.values)}")

    def resolved(self, columns: Iterable[str], conditions: list[str], span: _Span) -> str:
        """The events ``e`` as of T in ``span`` that pass ``conditions``, with their profile.

        ``columns`` are ``expression AS name`` over ``e``. Every leaf's events come from
        one CTE, ``ev`` (:meth:`events`), so the identities are joined once, to the rows
        left.
        """
        flag = self.flag(conditions, span)
        select = ["profile_id"]
        for column in columns:
            expression, name = column.rsplit(" AS ", 1)
            select.append(f"{self.value(expression)} AS {name}")
        return f"SELECT {', '.join(select)} FROM ev WHERE {flag}"

    def grouped(self, aggregate: str, flag: str) -> str:
        """``aggregate`` (over ``ev``'s columns) of each profile's events marked ``flag``,
        as a column of the shared CTE ``g``; NULL (or a count of 0) for a profile with
        none, exactly as a CTE of its own with no row for the profile."""
        self.aggregated[flag] = None
        filtered = f"{aggregate} FILTER (WHERE {flag})"
        self._last = _GROUPED
        return f"{_GROUPED}.{self.aggregates.setdefault(filtered, f'a{len(self.aggregates)}')}"

    def grouped_cte(self) -> str:
        columns = ", ".join(f"{a} AS {name}" for a, name in self.aggregates.items())
        anyone = " OR ".join(self.aggregated)
        return (
            f"{_GROUPED} AS (SELECT profile_id, {columns} FROM ev WHERE {anyone} "
            "GROUP BY profile_id)"
        )

    def events(self) -> str:
        """The CTE ``ev``: the events some leaf wants, then their profiles.

        One scan per event name (a UNION ALL of disjoint parts), each with the filters
        all its leaves share, so that the scan can skip what none of them reads.
        """
        computed = [*self.values, *self.flags]
        needed = ["user_id", "anonymous_id", "timestamp", "type", "event"]
        needed += [c for c in ("message_id", "properties", "traits") if f"e.{c}" in str(computed)]
        branches = []
        for key, scans in self.scans.items():
            lows = [low for _, (low, _) in scans]
            highs = [high for _, (_, high) in scans]
            shared = (
                None if None in lows else min(x for x in lows if x is not None),
                None if None in highs else max(x for x in highs if x is not None),
            )
            wanted = " OR ".join(f"({where})" for where, _ in scans)
            at = f"e.timestamp <= {_instant(self.at)}"
            branches.append(_where([at, *key, *_bounds(shared), f"({wanted})"]))
        if len(branches) == 1:
            source, where = "events AS e", [branches[0]]
        else:
            columns = ", ".join(f"e.{c}" for c in needed)
            union = " UNION ALL ".join(
                f"SELECT {columns} FROM events AS e WHERE {b}" for b in branches
            )
            source, where = f"({union}) AS e", []
        select = [
            f"{_PROFILE} AS profile_id",
            *(f"{e} AS {name}" for e, name in self.values.items()),
            *(f"({c}) AS {flag}" for c, flag in self.flags.items()),
        ]
        resolve = _RESOLVE.format(source=source)
        where.append(f"{_PROFILE} IS NOT NULL")
        return f"ev AS (SELECT {', '.join(select)} {resolve} WHERE {_where(where)})"

    def latest(self, value: str, order: tuple[str, str], rows: str) -> str:
        """Each profile's ``value`` in the row of ``rows`` that is last by ``order``."""
        first, second = order
        if self.dialect == "postgres":
            ranked = (
                f"SELECT profile_id, {value} AS v, ROW_NUMBER() OVER (PARTITION BY profile_id "
                f"ORDER BY {first} DESC, {second} DESC) AS rn FROM ({rows}) AS w"
            )
            return f"SELECT profile_id, v FROM ({ranked}) AS r WHERE rn = 1"
        # One hash aggregate instead of a sort per profile (MAX_BY in Spark).
        key = f"struct_pack(k1 := {first}, k2 := {second})"
        return f"SELECT profile_id, arg_max({value}, {key}) AS v FROM ({rows}) AS w GROUP BY 1"

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
            return _bucket(node, self.key)
        raise TypeError(f"not a core node: {node!r}")

    def _trait(self, node: TraitNode) -> str:
        text = _json_text("e.traits", node.path)
        written = self.resolved(
            ["e.timestamp AS ts", "e.message_id AS message_id", f"{text} AS v"],
            ["e.type = 'identify'", f"{text} IS NOT NULL"],
            (None, None),
        )
        name = self.leaf(self.latest("v", ("ts", "COALESCE(message_id, '')"), written))
        return _value_predicate(node.operator, node.value, f"{name}.v", self.at)

    def _performed(self, node: PerformedNode) -> str:
        spec = EventSpec(event=node.event, where=node.where)
        flag = self.flag(_event_conditions(spec, "e"), _span(node.window, self.at))
        count = f"COALESCE({self.grouped('COUNT(*)', flag)}, 0)"
        operator = {"at_least": ">=", "at_most": "<=", "exactly": "="}[node.operator]
        return f"({count} {operator} {node.times})"

    def _event_time(self, node: FirstPerformedNode | LastPerformedNode) -> str:
        spec = EventSpec(event=node.event, where=node.where)
        last = isinstance(node, LastPerformedNode)
        if node.operator == "within_last":
            micros, test = self.at - duration_seconds(str(node.value)) * MICROS, ">"
        else:
            micros = moment_micros(node.value, self.at)  # type: ignore[arg-type]
            test = "<=" if node.operator == "before" else ">"
        # The last is after X (the first before X) iff one such event is: read only those.
        span: _Span = (None, None)
        if last and test == ">":
            span = (micros, None)
        elif not last and test == "<=":
            span = (None, micros)
        flag = self.flag(_event_conditions(spec, "e"), span)
        function = "MAX" if last else "MIN"
        moment = self.grouped(f"{function}({self.value('e.timestamp')})", flag)
        return f"({moment} {test} {_instant(micros)})"

    def _aggregate(self, node: AggregateNode) -> str:
        spec = EventSpec(event=node.event, where=node.where)
        text = _json_text("e.properties", node.property) if node.property else None
        conditions, span = _event_conditions(spec, "e"), _span(node.window, self.at)
        if node.function == "count_distinct":
            # In a CTE of its own: DISTINCT with FILTER is not portable to every engine.
            rows = self.resolved([f"{text} AS x"], conditions, span)
            name = self.leaf(
                f"SELECT profile_id, COUNT(DISTINCT x) AS c FROM ({rows}) AS r GROUP BY profile_id"
            )
            result = f"COALESCE({name}.c, 0)"
        else:
            flag = self.flag(conditions, span)
            if text is None:
                counted = "*"
            else:
                counted = self.value(text if node.function == "count" else _number(text))
            result = self._summary(node.function, counted, flag)
        result = f"CAST({result} AS DOUBLE)"
        if isinstance(node.value, tuple):
            return _compare("between", result, node.value, _double)
        return _compare(node.operator, result, node.value, _double)

    def _summary(self, function: str, counted: str, flag: str) -> str:
        """count / sum / avg / min / max of ``counted`` over a profile's ``flag`` events."""
        if function in ("min", "max"):
            return self.grouped(f"{function.upper()}({counted})", flag)
        count = self.grouped(f"COUNT({counted})", flag)
        if function == "count":
            return f"COALESCE({count}, 0)"
        total = self.grouped(f"SUM({counted})", flag)
        if function == "sum":
            return f"COALESCE({total}, 0)"
        return f"(CASE WHEN {count} > 0 THEN {total} / {count} END)"  # avg

    def _sequence(self, node: SequenceNode) -> str:
        within = _interval(node.within)
        reach = duration_seconds(node.within) * MICROS
        low, high = _span(node.window, self.at)
        if not node.followed:
            # Not followed holds only once the span has passed: E1 + D <= T.
            high = self.at - reach if high is None else min(high, self.at - reach)
        first = _event_conditions(node.first, "e")
        a = self.resolved(["e.timestamp AS ts"], first, (low, high))
        # E1 < E2 <= E1 + D, so E2 lies in the window of E1 moved by D: bound it, so
        # the scan of E2 reads that stretch only.
        shifted = (low, None if high is None else high + reach)
        b = self.resolved(["e.timestamp AS ts"], _event_conditions(node.then, "e"), shifted)
        pairing = f"b.profile_id = a.profile_id AND b.ts > a.ts AND b.ts <= a.ts + {within}"
        if node.followed:
            body = f"SELECT DISTINCT a.profile_id FROM ({a}) AS a JOIN ({b}) AS b ON {pairing}"
        else:
            body = (
                f"SELECT DISTINCT a.profile_id FROM ({a}) AS a "
                f"WHERE NOT EXISTS (SELECT 1 FROM ({b}) AS b WHERE {pairing})"
            )
        name = self.leaf(body)
        return f"({name}.profile_id IS NOT NULL)"

    def _score(self, node: ScoreNode) -> str:
        if not self.scores:
            return "FALSE"
        rows = (
            "SELECT profile_id, score, scored_at FROM scores "
            f"WHERE model = {_str(node.model)} AND scored_at <= {_instant(self.at)}"
        )
        name = self.leaf(self.latest("score", ("scored_at", "score"), rows))
        score = f"CAST({name}.v AS DOUBLE)"
        if isinstance(node.value, tuple):
            return _compare("between", score, node.value, _double)
        return _compare(node.operator, score, node.value, _double)


def _bucket(node: RandomBucketNode, key: str) -> str:
    digest = f"SUBSTRING(md5({_str(node.salt + ':')} || {key}), 1, 7)"
    digits = [
        f"(STRPOS('0123456789abcdef', SUBSTRING({digest}, {i + 1}, 1)) - 1) * {16 ** (6 - i)}"
        for i in range(7)
    ]
    return f"((({' + '.join(digits)}) % 100) < {node.percent})"


_PROFILE: Final = "COALESCE(iu.profile_id, ia.profile_id)"
_RESOLVE: Final = (
    "FROM {source} "
    "LEFT JOIN identities AS iu ON iu.kind = 'user_id' AND iu.value = e.user_id "
    "LEFT JOIN identities AS ia ON ia.kind = 'anonymous_id' AND ia.value = e.anonymous_id"
)


_HOLDS: Final[dict[str, Callable[[float, float], bool]]] = {
    "eq": operator.eq,
    "neq": operator.ne,
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
    "at_least": operator.ge,
    "at_most": operator.le,
    "exactly": operator.eq,
}


def _needs_row(node: CoreNode) -> bool:
    """Whether the leaf can hold only for a profile that has a row in its CTE.

    A profile without one reads as a count or sum of 0 and as NULL otherwise.
    """
    if isinstance(node, PerformedNode):
        return not _HOLDS[node.operator](0, node.times)
    if isinstance(node, AggregateNode) and node.function in ("count", "count_distinct", "sum"):
        if isinstance(node.value, tuple):
            return not node.value[0] <= 0 <= node.value[1]
        return not _HOLDS[node.operator](0, node.value)
    if isinstance(node, TraitNode):
        return node.operator != "not_exists"
    # Scores may name profiles outside the universe, so they never stand for it.
    return isinstance(node, AggregateNode | FirstPerformedNode | LastPerformedNode | SequenceNode)


def _required(segment: CoreSegment) -> list[str]:
    """The leaves every member must satisfy: the entry, or the leaves of its ANDs."""
    out: list[str] = []
    pending = [segment.entry]
    while pending:
        node = segment.nodes[pending.pop(0)]
        if isinstance(node, AndNode):
            pending.extend(node.children)
        elif _needs_row(node):
            out.append(node.id)
    return out


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
    compiler = _Compiler(segment, micros_of(at), dialect, scores)
    # A member must have a row in the CTE of each required leaf: start from those
    # profiles (inner joins) rather than from every profile of the universe.
    for node_id in _required(segment):
        compiler.predicate(node_id)
    drivers = list(dict.fromkeys(compiler.leaf_of.values()))
    source = drivers[0] if drivers else "profiles AS p"
    if drivers:
        compiler.key = f"{source}.profile_id"
    predicate = compiler.predicate(segment.entry)
    key = compiler.key
    ctes = compiler.ctes
    if not drivers:
        ctes = ["profiles AS (SELECT DISTINCT profile_id FROM identities)", *ctes]
    if compiler.aggregates:
        ctes = [*ctes, compiler.grouped_cte()]
    if compiler.flags:
        ctes = [compiler.events(), *ctes]
    leaves = [*compiler.names.values(), *([_GROUPED] if compiler.aggregates else [])]
    joins = "".join(
        f" {'JOIN' if name in drivers else 'LEFT JOIN'} {name} ON {name}.profile_id = {key}"
        for name in leaves
        if name != source
    )
    sql = f"WITH {', '.join(ctes)} SELECT {key} FROM {source}{joins} WHERE {predicate}"
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
