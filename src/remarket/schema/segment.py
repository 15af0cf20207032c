"""Segment definitions as data: a flat list of typed nodes with id references and an entry.

A definition is what a marketer writes (JSON or YAML). Core nodes are what the engines
evaluate; sugar nodes (``cart_abandoned``, ``lapsed_buyer``, ...) and the reference
nodes ``in_segment`` and ``consent`` are rewritten into core nodes by
:mod:`remarket.segments.desugar` before any engine sees them.

Value semantics shared by every engine (see ``remarket.segments`` for the full rules):
a JSON value is read as its text; numbers, booleans and timestamps are parsed from that
text when the operand has that type, and a value that does not parse matches no operator
except ``exists``. Every time interval is left-open and right-closed: ``(start, end]``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
    Tag,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from remarket.errors import InvalidInput
from remarket.schema.events import as_utc

__all__ = [
    "CORE_NODE_TYPES",
    "SUGAR_NODE_TYPES",
    "AbsoluteWindow",
    "AggregateNode",
    "Ago",
    "AndNode",
    "At",
    "BrowseAbandonedNode",
    "CartAbandonedNode",
    "CategoryInterestNode",
    "ConsentNode",
    "DefinitionError",
    "EventSpec",
    "FirstPerformedNode",
    "HighValueNode",
    "InSegmentNode",
    "LapsedBuyerNode",
    "LastPerformedNode",
    "Moment",
    "NotNode",
    "Operand",
    "OrNode",
    "PerformedNode",
    "PropertyFilter",
    "RandomBucketNode",
    "RelativeWindow",
    "ScoreNode",
    "SegmentDefinition",
    "SegmentNode",
    "SequenceNode",
    "TraitNode",
    "Window",
    "children_of",
    "duration_seconds",
    "node_by_id",
    "parse_segment",
    "refuse_graph_errors",
    "segment_json_schema",
]

_DURATION_RE: Final = r"^[1-9][0-9]{0,4}[mhd]$"
_UNIT_SECONDS: Final = {"m": 60, "h": 3600, "d": 86400}


def _duration(value: str) -> str:
    if not re.fullmatch(_DURATION_RE, value):
        raise _fail(
            f"a duration such as 15m, 2h or 30d (1 to 99999 minutes, hours or days), not {value!r}"
        )
    return value


Duration = Annotated[
    str,
    AfterValidator(_duration),
    # The rule as the published schema states it; the validator says it in words.
    WithJsonSchema({"type": "string", "pattern": _DURATION_RE, "examples": ["15m", "2h", "30d"]}),
]
"""An exact length of time: ``15m``, ``2h``, ``30d`` (a day is 86,400 s: all in UTC)."""

NodeId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
"""Node ids may not contain ``/``: desugaring derives child ids as ``parent/child``."""

Path = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}(\.[A-Za-z_][A-Za-z0-9_]{0,63})*$")
]
"""A dotted path into a JSON object (``address.city``); keys are identifiers so every
engine's JSON path syntax reads them the same way."""

EventName = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Instant = Annotated[datetime, AfterValidator(as_utc)]
"""A timestamp; naive ones are taken as UTC, as Segment does for events."""

Scalar = StrictBool | StrictInt | Annotated[StrictFloat, Field(allow_inf_nan=False)] | StrictStr


def duration_seconds(duration: str) -> int:
    """The length of a :data:`Duration` in seconds.

    >>> duration_seconds("2h")
    7200
    """
    if not re.fullmatch(_DURATION_RE, duration):
        raise ValueError(f"duration must look like 15m, 2h or 30d, got {duration!r}")
    return int(duration[:-1]) * _UNIT_SECONDS[duration[-1]]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class At(_Model):
    """An absolute instant: ``{"at": "2026-01-01T00:00:00Z"}``."""

    at: Instant


class Ago(_Model):
    """An instant relative to the evaluation time T: ``{"ago": "30d"}`` is T - 30 days."""

    ago: Duration


Moment = At | Ago


class RelativeWindow(_Model):
    """The last ``last`` before T: events with T - last < timestamp <= T."""

    last: Duration


class AbsoluteWindow(_Model):
    """Events with start < timestamp <= end (and, as always, timestamp <= T)."""

    start: Instant
    end: Instant

    @model_validator(mode="after")
    def _ordered(self) -> AbsoluteWindow:
        if self.end <= self.start:
            raise PydanticCustomError("window_order", "window end must be after its start")
        return self


def _window_kind(value: object) -> str:
    if isinstance(value, dict):
        return "relative" if "last" in value else "absolute"
    return "relative" if isinstance(value, RelativeWindow) else "absolute"


Window = Annotated[
    Annotated[RelativeWindow, Tag("relative")] | Annotated[AbsoluteWindow, Tag("absolute")],
    Discriminator(_window_kind),
]

ValueOperator = Literal[
    "eq",
    "neq",
    "in",
    "not_in",
    "contains",
    "starts_with",
    "gt",
    "gte",
    "lt",
    "lte",
    "between",
    "exists",
    "not_exists",
    "within_last",
]
NumberOperator = Literal["eq", "neq", "gt", "gte", "lt", "lte", "between"]
_ORDERED: Final = frozenset({"gt", "gte", "lt", "lte"})


def _fail(message: str) -> PydanticCustomError:
    return PydanticCustomError("invalid_value", message)


def _check_value(operator: str, value: object, *, relative: bool) -> None:
    """Raise if ``value`` is not a valid operand of ``operator`` (the rule in the message)."""
    if operator in ("exists", "not_exists"):
        if value is not None:
            raise _fail(f"{operator} takes no value")
        return
    if operator == "within_last":
        if not relative:
            raise _fail("within_last is only for traits (a property filter must not move)")
        if not isinstance(value, str) or not re.fullmatch(_DURATION_RE, value):
            raise _fail("within_last takes a duration such as 30d")
        return
    if not relative and isinstance(value, Ago | list) and _has_ago(value):
        raise _fail("relative instants ({ago: ...}) are only for traits")
    if operator in ("eq", "neq"):
        if not isinstance(value, bool | int | float | str | At):
            raise _fail(f"{operator} takes a string, number, boolean or {{at: timestamp}}")
    elif operator in ("in", "not_in"):
        if not isinstance(value, list) or not value:
            raise _fail(f"{operator} takes a non-empty list")
        if isinstance(value[0], At | Ago) or len({_kind(v) for v in value}) != 1:
            raise _fail(f"{operator} takes strings, numbers or booleans, all of one kind")
    elif operator in ("contains", "starts_with"):
        if not isinstance(value, str) or not value:
            raise _fail(f"{operator} takes a non-empty string")
    elif operator in _ORDERED:
        if isinstance(value, bool) or not isinstance(value, int | float | At | Ago):
            raise _fail(f"{operator} takes a number or an instant ({{at: ...}} or {{ago: ...}})")
    elif operator == "between":
        if not isinstance(value, list) or len(value) != 2:
            raise _fail("between takes [low, high]")
        low, high = value
        if _kind(low) != _kind(high) or _kind(low) not in ("number", "instant"):
            raise _fail("between takes two numbers or two instants")
        if _kind(low) == "number" and low > high:
            raise _fail("between needs low <= high")


def _has_ago(value: object) -> bool:
    return isinstance(value, Ago) or (isinstance(value, list) and any(_has_ago(v) for v in value))


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, At | Ago):
        return "instant"
    return "other"


Operand = Scalar | At | Ago | list[Scalar | At | Ago]


class PropertyFilter(_Model):
    """A condition on one event property, e.g. ``{"path": "category", "operator": "eq", ...}``.

    Filters do not depend on T (no ``ago``, no ``within_last``), so whether an event
    matches is decided once, when it arrives.
    """

    path: Path
    operator: ValueOperator
    value: Operand | None = None

    @field_validator("value")
    @classmethod
    def _value_fits(cls, value: object, info: ValidationInfo) -> object:
        operator = info.data.get("operator")
        if operator is not None:
            _check_value(operator, value, relative=False)
        return value


class EventSpec(_Model):
    """A track event by name, with property filters that must all hold."""

    event: EventName
    where: tuple[PropertyFilter, ...] = ()


class _Node(_Model):
    id: NodeId


class TraitNode(_Node):
    """A condition on a profile trait (last write wins by event timestamp, then messageId).

    >>> TraitNode(id="t", type="trait", path="plan", operator="eq", value="pro").path
    'plan'
    """

    type: Literal["trait"]
    path: Path
    operator: ValueOperator
    value: Operand | None = None

    @field_validator("value")
    @classmethod
    def _value_fits(cls, value: object, info: ValidationInfo) -> object:
        operator = info.data.get("operator")
        if operator is not None:
            _check_value(operator, value, relative=True)
        return value


class PerformedNode(_Node):
    """Event E (with filters) performed at least / at most / exactly N times, or never.

    >>> PerformedNode(id="p", type="performed", event="Order Completed", times=2).operator
    'at_least'
    """

    type: Literal["performed"]
    event: EventName
    where: tuple[PropertyFilter, ...] = ()
    operator: Literal["at_least", "at_most", "exactly", "never"] = "at_least"
    times: Annotated[int, Field(ge=0, le=1000)] = 1
    window: Window | None = None

    @model_validator(mode="after")
    def _times_fit(self) -> PerformedNode:
        if self.operator == "never" and self.times not in (0, 1):
            raise PydanticCustomError("invalid_value", "never takes no times")
        return self


class _TimeOfEvent(_Node):
    event: EventName
    where: tuple[PropertyFilter, ...] = ()
    operator: Literal["before", "after", "within_last"]
    value: Moment | Duration

    @field_validator("value")
    @classmethod
    def _value_fits(cls, value: object, info: ValidationInfo) -> object:
        operator = info.data.get("operator")
        if operator == "within_last" and not isinstance(value, str):
            raise _fail("within_last takes a duration such as 30d")
        if operator in ("before", "after") and not isinstance(value, At | Ago):
            raise _fail(f"{operator} takes an instant: {{at: ...}} or {{ago: ...}}")
        return value


class LastPerformedNode(_TimeOfEvent):
    """The latest time E was performed is before / after an instant, or within the last D.

    ``before`` X means <= X and ``after`` X means > X, so the two split time in two.

    >>> LastPerformedNode(id="l", type="last_performed", event="Order Completed",
    ...     operator="within_last", value="30d").value
    '30d'
    """

    type: Literal["last_performed"]


class FirstPerformedNode(_TimeOfEvent):
    """The earliest time E was performed is before / after an instant, or within the last D.

    >>> FirstPerformedNode(id="f", type="first_performed", event="Signed Up",
    ...     operator="after", value={"ago": "7d"}).operator
    'after'
    """

    type: Literal["first_performed"]


class AggregateNode(_Node):
    """An aggregate of a numeric property of event E over a window, compared with a value.

    >>> AggregateNode(id="a", type="aggregate", event="Order Completed", function="sum",
    ...     property="revenue", window={"last": "90d"}, operator="gt", value=100).value
    100.0
    """

    type: Literal["aggregate"]
    event: EventName
    where: tuple[PropertyFilter, ...] = ()
    function: Literal["sum", "avg", "min", "max", "count", "count_distinct"]
    property: Path | None = None
    window: Window | None = None
    operator: NumberOperator
    value: float | tuple[float, float]

    @model_validator(mode="after")
    def _consistent(self) -> AggregateNode:
        if self.property is None and self.function != "count":
            raise PydanticCustomError("invalid_value", f"{self.function} needs a property")
        is_range = isinstance(self.value, tuple)
        if is_range != (self.operator == "between"):
            raise PydanticCustomError(
                "invalid_value", "between takes [low, high]; other operators take one number"
            )
        return self


class SequenceNode(_Node):
    """E1 then E2 within D (``followed``), or E1 not followed by E2 within D.

    E2 follows E1 when E1 < E2 <= E1 + D. "Not followed" holds only once D has passed
    since E1 (E1 + D <= T), so cart abandonment is decided an hour after the cart.
    ``window`` restricts when E1 happened.

    >>> SequenceNode(id="s", type="sequence", first={"event": "Product Added"},
    ...     then={"event": "Order Completed"}, within="1h", followed=False).within
    '1h'
    """

    type: Literal["sequence"]
    first: EventSpec
    then: EventSpec
    within: Duration
    followed: bool = True
    window: Window | None = None


class ScoreNode(_Node):
    """A named model's latest score for the profile compared with a threshold.

    >>> ScoreNode(id="s", type="score", model="churn", operator="gte", value=0.5).model
    'churn'
    """

    type: Literal["score"]
    model: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    operator: NumberOperator
    value: float | tuple[float, float]

    @model_validator(mode="after")
    def _consistent(self) -> ScoreNode:
        if isinstance(self.value, tuple) != (self.operator == "between"):
            raise PydanticCustomError(
                "invalid_value", "between takes [low, high]; other operators take one number"
            )
        return self


class RandomBucketNode(_Node):
    """A stable pseudo-random share of profiles, e.g. a 10 % holdout.

    Bucket = int(first 7 hex digits of md5(salt + ":" + profile_id), 16) mod 100; member
    when bucket < percent.

    >>> RandomBucketNode(id="r", type="random_bucket", percent=10, salt="holdout").percent
    10
    """

    type: Literal["random_bucket"]
    percent: Annotated[int, Field(ge=0, le=100)]
    salt: Annotated[str, StringConstraints(max_length=100)] = ""


class AndNode(_Node):
    """All children hold.

    >>> AndNode(id="all", type="and", children=["a", "b"]).children
    ('a', 'b')
    """

    type: Literal["and"]
    children: Annotated[tuple[NodeId, ...], Field(min_length=1)]


class OrNode(_Node):
    """At least one child holds.

    >>> OrNode(id="any", type="or", children=["a"]).children
    ('a',)
    """

    type: Literal["or"]
    children: Annotated[tuple[NodeId, ...], Field(min_length=1)]


class NotNode(_Node):
    """The child does not hold.

    >>> NotNode(id="n", type="not", child="a").child
    'a'
    """

    type: Literal["not"]
    child: NodeId


class InSegmentNode(_Node):
    """Member of another segment (by name); inlined at desugaring, cycles rejected.

    >>> InSegmentNode(id="i", type="in_segment", segment="buyers").segment
    'buyers'
    """

    type: Literal["in_segment"]
    segment: Annotated[str, StringConstraints(min_length=1, max_length=200)]


class ConsentNode(_Node):
    """The profile consented to a purpose (by default: trait ``consent.<purpose>`` is true).

    >>> ConsentNode(id="c", type="consent", purpose="email").purpose
    'email'
    """

    type: Literal["consent"]
    purpose: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]


class CartAbandonedNode(_Node):
    """Added to cart in the last ``lookback`` and no order within ``within`` after it.

    >>> CartAbandonedNode(id="c", type="cart_abandoned").within
    '1h'
    """

    type: Literal["cart_abandoned"]
    within: Duration = "1h"
    lookback: Duration = "7d"
    cart_event: EventName = "Product Added"
    order_event: EventName = "Order Completed"


class BrowseAbandonedNode(_Node):
    """Viewed a product in the last ``lookback`` and no add-to-cart within ``within``.

    >>> BrowseAbandonedNode(id="b", type="browse_abandoned").view_event
    'Product Viewed'
    """

    type: Literal["browse_abandoned"]
    within: Duration = "1d"
    lookback: Duration = "7d"
    view_event: EventName = "Product Viewed"
    cart_event: EventName = "Product Added"


class LapsedBuyerNode(_Node):
    """Last order more than ``after`` ago but no more than ``before`` ago.

    >>> LapsedBuyerNode(id="l", type="lapsed_buyer").after
    '60d'
    """

    type: Literal["lapsed_buyer"]
    after: Duration = "60d"
    before: Duration = "90d"
    order_event: EventName = "Order Completed"

    @model_validator(mode="after")
    def _ordered(self) -> LapsedBuyerNode:
        if duration_seconds(self.before) <= duration_seconds(self.after):
            raise PydanticCustomError("invalid_value", "before must be longer than after")
        return self


class HighValueNode(_Node):
    """Sum of ``property`` over ``order_event`` in the last ``window`` is at least threshold.

    >>> HighValueNode(id="h", type="high_value", threshold=500).property
    'revenue'
    """

    type: Literal["high_value"]
    threshold: float
    window: Duration = "90d"
    property: Path = "revenue"
    order_event: EventName = "Order Completed"


class CategoryInterestNode(_Node):
    """Viewed products of ``category`` >= ``times`` in ``window`` and bought nothing then.

    >>> CategoryInterestNode(id="c", type="category_interest", category="shoes").times
    3
    """

    type: Literal["category_interest"]
    category: Annotated[str, StringConstraints(min_length=1)]
    times: Annotated[int, Field(ge=1, le=1000)] = 3
    window: Duration = "7d"
    view_event: EventName = "Product Viewed"
    order_event: EventName = "Order Completed"


SegmentNode = Annotated[
    TraitNode
    | PerformedNode
    | LastPerformedNode
    | FirstPerformedNode
    | AggregateNode
    | SequenceNode
    | ScoreNode
    | RandomBucketNode
    | AndNode
    | OrNode
    | NotNode
    | InSegmentNode
    | ConsentNode
    | CartAbandonedNode
    | BrowseAbandonedNode
    | LapsedBuyerNode
    | HighValueNode
    | CategoryInterestNode,
    Field(discriminator="type"),
]

CORE_NODE_TYPES: Final = frozenset(
    {
        "trait",
        "performed",
        "last_performed",
        "first_performed",
        "aggregate",
        "sequence",
        "score",
        "random_bucket",
        "and",
        "or",
        "not",
    }
)
SUGAR_NODE_TYPES: Final = frozenset(
    {
        "in_segment",
        "consent",
        "cart_abandoned",
        "browse_abandoned",
        "lapsed_buyer",
        "high_value",
        "category_interest",
    }
)


def children_of(node: Any) -> tuple[str, ...]:
    """The node ids a node refers to (empty for leaves)."""
    if isinstance(node, AndNode | OrNode):
        return node.children
    if isinstance(node, NotNode):
        return (node.child,)
    return ()


class SegmentDefinition(_Model):
    """A named, versioned segment: a flat list of nodes and the id of the entry node.

    >>> d = SegmentDefinition.model_validate({"name": "pro", "entry": "t", "nodes": [
    ...     {"id": "t", "type": "trait", "path": "plan", "operator": "eq", "value": "pro"}]})
    >>> d.node("t").type
    'trait'
    """

    name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    version: Annotated[int, Field(ge=1)] = 1
    description: str = ""
    entry: NodeId
    nodes: Annotated[tuple[SegmentNode, ...], Field(min_length=1)]

    @model_validator(mode="after")
    def _graph(self) -> SegmentDefinition:
        refuse_graph_errors(_graph_errors(self))
        return self

    def node(self, node_id: str) -> Any:
        """The node with this id (KeyError if none)."""
        return node_by_id(self.nodes, node_id)


def refuse_graph_errors(errors: Iterable[tuple[str, str]]) -> None:
    """Raise the first (path, rule) of a definition's node graph as a validation error."""
    for path, message in errors:
        raise PydanticCustomError(
            "invalid_graph", "{path}: {message}", {"path": path, "message": message}
        )


def node_by_id(nodes: Iterable[Any], node_id: str) -> Any:
    """The node of a flat node list with this id (KeyError if none)."""
    for node in nodes:
        if node.id == node_id:
            return node
    raise KeyError(node_id)


def _graph_errors(definition: SegmentDefinition) -> Iterator[tuple[str, str]]:
    index: dict[str, int] = {}
    for i, node in enumerate(definition.nodes):
        if node.id in index:
            yield f"nodes[{i}].id", f"duplicate node id {node.id!r}"
        index.setdefault(node.id, i)
    if definition.entry not in index:
        yield "entry", f"unknown node {definition.entry!r}"
    for i, node in enumerate(definition.nodes):
        field = "child" if isinstance(node, NotNode) else "children"
        for j, ref in enumerate(children_of(node)):
            if ref not in index:
                where = f"nodes[{i}].child" if field == "child" else f"nodes[{i}].children[{j}]"
                yield where, f"unknown node {ref!r}"
    cycle = _find_cycle({n.id: children_of(n) for n in definition.nodes})
    if cycle is not None:
        yield f"nodes[{index[cycle[0]]}]", "cycle: " + " -> ".join(cycle)


def _find_cycle(edges: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A cycle in the reference graph as a path of ids, or None."""
    done: set[str] = set()
    for start in edges:
        if start in done:
            continue
        stack: list[tuple[str, Iterator[str]]] = [(start, iter(edges.get(start, ())))]
        on_path = [start]
        while stack:
            current, pending = stack[-1]
            nxt = next(pending, None)
            if nxt is None:
                stack.pop()
                on_path.pop()
                done.add(current)
            elif nxt in on_path:
                return [*on_path[on_path.index(nxt) :], nxt]
            elif nxt not in done and nxt in edges:
                stack.append((nxt, iter(edges[nxt])))
                on_path.append(nxt)
    return None


class DefinitionError(InvalidInput):
    """A definition broke a rule; ``errors`` lists ``(path, message)``, e.g. ``nodes[3].operator``.

    >>> try:
    ...     parse_segment({"name": "x", "entry": "a", "nodes": []})
    ... except DefinitionError as e:
    ...     print(e.field)
    nodes
    """

    code = "invalid_definition"
    status = 422
    title = "Invalid definition"

    def __init__(self, errors: Sequence[tuple[str, str]]) -> None:
        detail = "; ".join(f"{path or '(root)'}: {message}" for path, message in errors)
        super().__init__(detail, field=errors[0][0] if errors else None)
        self.errors = list(errors)


_UNION_LABELS: Final = frozenset(
    {"str", "int", "float", "bool", "list", "tuple", "none", "relative", "absolute"}
)


def _format_loc(loc: Iterable[int | str]) -> str:
    """Pydantic's location as a path: drop union labels (the node ``type`` tag and the like)."""
    out = ""
    after_node = False
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            after_node = out.startswith("nodes") and out.count("[") == 1
            continue
        if after_node and (part in CORE_NODE_TYPES or part in SUGAR_NODE_TYPES):
            after_node = False
            continue
        after_node = False
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", part) or part in _UNION_LABELS:
            continue
        out += f".{part}" if out else part
    return out


def _has_deeper(loc: tuple[int | str, ...], errors: Iterable[Any]) -> bool:
    return any(len(e["loc"]) > len(loc) and e["loc"][: len(loc)] == loc for e in errors)


def parse_segment(data: object) -> SegmentDefinition:
    """Validate a definition (a mapping decoded from JSON or YAML) or raise DefinitionError."""
    try:
        return SegmentDefinition.model_validate(data)
    except ValidationError as exc:
        errors: list[tuple[str, str]] = []
        raw = exc.errors()
        for err in raw:
            ctx = err.get("ctx") or {}
            if err["type"] == "too_short" and _has_deeper(err["loc"], raw):
                # A tuple whose items failed also reports itself as too short: noise.
                continue
            if err["type"] == "invalid_graph":
                errors.append((str(ctx["path"]), str(ctx["message"])))
            else:
                errors.append((_format_loc(err["loc"]), err["msg"]))
        raise DefinitionError(errors) from None


def segment_json_schema() -> dict[str, Any]:
    """The JSON Schema of a segment definition (served at ``/v1/schema/segment``)."""
    schema = SegmentDefinition.model_json_schema()
    schema["$id"] = "https://remarket.dev/schema/segment.json"
    schema["title"] = "Segment definition"
    return schema
