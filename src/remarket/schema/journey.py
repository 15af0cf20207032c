"""Journey definitions as data: an entry, a flat list of typed nodes with id references.

A journey is what a marketer writes (JSON or YAML; JSON Schema at
``/v1/schema/journey``). Profiles enter through :data:`Entry` (a segment entered, an
event performed, or a schedule over a segment), walk the nodes from ``start`` along
their ``next`` references and leave at an ``exit`` node, at a node without ``next``, or
when they perform one of ``exit_when``. A branch condition is a segment definition's
node list (the segment DSL, :mod:`remarket.schema.segment`), evaluated for one profile
at the time the profile reaches the branch.

Wait semantics: ``duration`` waits that long; ``until_time`` waits until the next
``HH:MM`` in the profile's time zone (trait ``timezone``, an IANA name; UTC when
missing or unknown), strictly after the time the profile arrives; ``until_event``
waits for the event and goes to ``next``, or to ``on_timeout`` once ``timeout`` has
passed (``next`` when ``on_timeout`` is not given). The node graph must be acyclic,
so every profile leaves a journey in a bounded number of steps.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from remarket.schema.segment import (
    CORE_NODE_TYPES,
    SUGAR_NODE_TYPES,
    DefinitionError,
    Duration,
    EventName,
    EventSpec,
    Instant,
    NodeId,
    Path,
    PropertyFilter,
    SegmentDefinition,
    SegmentNode,
    node_by_id,
    refuse_graph_errors,
)

__all__ = [
    "JOURNEY_NODE_TYPES",
    "MESSAGE_CHANNELS",
    "AudienceNode",
    "BranchNode",
    "Condition",
    "Entry",
    "EventEntry",
    "ExitNode",
    "Goal",
    "HoldoutNode",
    "JourneyDefinition",
    "JourneyNode",
    "Reentry",
    "ScheduleEntry",
    "SegmentEntry",
    "SendNode",
    "SplitArm",
    "SplitNode",
    "UpdateTraitNode",
    "WaitNode",
    "WebhookNode",
    "journey_json_schema",
    "parse_journey",
    "successors",
]

JourneyId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
"""Lower-case letters, digits, ``-`` and ``_``: it appears in URLs and idempotency keys."""

LocalTime = Annotated[str, StringConstraints(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]
MESSAGE_CHANNELS: Final = ("email", "sms", "push")

Scalar = StrictBool | StrictInt | Annotated[StrictFloat, Field(allow_inf_nan=False)] | StrictStr


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# -- entry ---------------------------------------------------------------------


class SegmentEntry(_Model):
    """Enter when the profile enters a segment (its published ``Segment Entered``).

    >>> SegmentEntry(type="segment_entered", segment="cart-abandoners").segment
    'cart-abandoners'
    """

    type: Literal["segment_entered"]
    segment: Annotated[str, StringConstraints(min_length=1, max_length=200)]


class EventEntry(_Model):
    """Enter when the profile performs a track event whose properties pass ``where``.

    >>> EventEntry(type="event", event="Product Added").where
    ()
    """

    type: Literal["event"]
    event: EventName
    where: tuple[PropertyFilter, ...] = ()


class ScheduleEntry(_Model):
    """Every ``every``, starting at ``start`` (default: activation), the segment's
    current members enter (each subject to the re-entry policy).

    >>> ScheduleEntry(type="schedule", segment="lapsed", every="7d").every
    '7d'
    """

    type: Literal["schedule"]
    segment: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    every: Duration
    start: Instant | None = None


Entry = Annotated[SegmentEntry | EventEntry | ScheduleEntry, Field(discriminator="type")]


class Reentry(_Model):
    """May a profile enter again: ``never``, or ``after`` a duration since its last entry.

    A profile is never in one journey twice at the same time.

    >>> Reentry(policy="after", after="7d").after
    '7d'
    """

    policy: Literal["never", "after"] = "never"
    after: Duration | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Reentry:
        if (self.policy == "after") != (self.after is not None):
            raise PydanticCustomError("invalid_value", "policy 'after' takes after; 'never' not")
        return self


class Goal(_Model):
    """A conversion: the event performed within ``within`` after entering.

    >>> Goal(event="Order Completed", within="7d").within
    '7d'
    """

    event: EventName
    where: tuple[PropertyFilter, ...] = ()
    within: Duration


# -- nodes ---------------------------------------------------------------------


class _Node(_Model):
    id: NodeId


class WaitNode(_Node):
    """Wait a ``duration``, ``until_time`` (HH:MM local), or ``until_event`` / ``timeout``.

    >>> WaitNode(id="w", type="wait", duration="1h", next="s").duration
    '1h'
    """

    type: Literal["wait"]
    duration: Duration | None = None
    until_time: LocalTime | None = None
    until_event: EventSpec | None = None
    timeout: Duration | None = None
    next: NodeId | None = None
    on_timeout: NodeId | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> WaitNode:
        kinds = [k for k in ("duration", "until_time", "until_event") if getattr(self, k)]
        if len(kinds) != 1:
            raise PydanticCustomError(
                "invalid_value", "a wait takes exactly one of duration, until_time, until_event"
            )
        if (self.until_event is not None) != (self.timeout is not None):
            raise PydanticCustomError("invalid_value", "until_event needs a timeout (and only it)")
        if self.on_timeout is not None and self.until_event is None:
            raise PydanticCustomError("invalid_value", "on_timeout is only for until_event")
        return self


class Condition(_Model):
    """A segment-DSL condition: segment nodes and the entry among them.

    >>> Condition(entry="o", nodes=[{"id": "o", "type": "performed",
    ...     "event": "Order Completed", "window": {"last": "1h"}}]).entry
    'o'
    """

    entry: NodeId
    nodes: Annotated[tuple[SegmentNode, ...], Field(min_length=1)]

    @model_validator(mode="after")
    def _graph(self) -> Condition:
        try:
            self.as_segment("condition")
        except ValidationError as exc:
            for err in exc.errors():
                if err["type"] == "invalid_graph":
                    raise PydanticCustomError(
                        "invalid_graph", "{path}: {message}", dict(err.get("ctx") or {})
                    ) from None
            raise
        return self

    def as_segment(self, name: str) -> SegmentDefinition:
        """The condition as a (nameless) segment definition, for the segment engines."""
        return SegmentDefinition.model_validate(
            {"name": name, "entry": self.entry, "nodes": self.nodes}
        )


class BranchNode(_Node):
    """Go to ``then`` if the condition holds for the profile now, else to ``else``.

    >>> BranchNode.model_validate({"id": "b", "type": "branch", "then": "x", "else": "y",
    ...     "condition": {"entry": "t", "nodes": [{"id": "t", "type": "trait",
    ...     "path": "plan", "operator": "eq", "value": "pro"}]}}).otherwise
    'y'
    """

    type: Literal["branch"]
    condition: Condition
    then: NodeId | None = None
    otherwise: NodeId | None = Field(default=None, alias="else")


class SplitArm(_Model):
    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,32}$")]
    weight: Annotated[int, Field(ge=1, le=10_000)]
    next: NodeId | None = None


class SplitNode(_Node):
    """A random split by weight, stable per profile; each assignment is recorded.

    >>> SplitNode(id="s", type="split", arms=[{"name": "a", "weight": 1},
    ...     {"name": "b", "weight": 1}]).arms[1].name
    'b'
    """

    type: Literal["split"]
    arms: Annotated[tuple[SplitArm, ...], Field(min_length=2, max_length=20)]

    @model_validator(mode="after")
    def _distinct(self) -> SplitNode:
        if len({a.name for a in self.arms}) != len(self.arms):
            raise PydanticCustomError("invalid_value", "arm names must differ")
        return self


class HoldoutNode(_Node):
    """``percent`` of profiles (stable per profile) leave here and are never messaged;
    their conversions are still counted, to measure the journey's incrementality.

    >>> HoldoutNode(id="h", type="holdout", percent=10, next="s").percent
    10
    """

    type: Literal["holdout"]
    percent: Annotated[int, Field(ge=0, le=100)]
    next: NodeId | None = None


class SendNode(_Node):
    """Send a message through a channel with a template (guards apply at delivery).

    >>> SendNode(id="m", type="send", channel="email", template="cart-reminder").channel
    'email'
    """

    type: Literal["send"]
    channel: Literal["email", "sms", "push"]
    template: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    variables: dict[str, Scalar] = Field(default_factory=dict)
    next: NodeId | None = None


class UpdateTraitNode(_Node):
    """Set a profile trait (published as an identify event, so every store sees it).

    >>> UpdateTraitNode(id="t", type="update_trait", trait="nudged", value=True).value
    True
    """

    type: Literal["update_trait"]
    trait: Path
    value: Scalar | None
    next: NodeId | None = None


class WebhookNode(_Node):
    """Call a webhook with a JSON body (the profile id and trigger are added).

    >>> WebhookNode(id="h", type="webhook", url="https://example.com/hook").body
    {}
    """

    type: Literal["webhook"]
    url: Annotated[str, StringConstraints(pattern=r"^https?://\S{1,2000}$")]
    body: dict[str, Scalar] = Field(default_factory=dict)
    next: NodeId | None = None


class AudienceNode(_Node):
    """Add the profile to, or remove it from, an ad audience.

    >>> AudienceNode(id="a", type="audience", audience="retarget", op="add").op
    'add'
    """

    type: Literal["audience"]
    audience: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    op: Literal["add", "remove"]
    next: NodeId | None = None


class ExitNode(_Node):
    """Leave the journey.

    >>> ExitNode(id="x", type="exit").type
    'exit'
    """

    type: Literal["exit"]


JourneyNode = Annotated[
    WaitNode
    | BranchNode
    | SplitNode
    | HoldoutNode
    | SendNode
    | UpdateTraitNode
    | WebhookNode
    | AudienceNode
    | ExitNode,
    Field(discriminator="type"),
]

JOURNEY_NODE_TYPES: Final = frozenset(
    {
        "wait",
        "branch",
        "split",
        "holdout",
        "send",
        "update_trait",
        "webhook",
        "audience",
        "exit",
    }
)


def successors(node: Any) -> list[tuple[str, str | None]]:
    """``(field path, node id or None)`` for every way out of a node."""
    if isinstance(node, WaitNode):
        out = [("next", node.next)]
        return [*out, ("on_timeout", node.on_timeout)] if node.on_timeout else out
    if isinstance(node, BranchNode):
        return [("then", node.then), ("else", node.otherwise)]
    if isinstance(node, SplitNode):
        return [(f"arms[{i}].next", arm.next) for i, arm in enumerate(node.arms)]
    if isinstance(node, ExitNode):
        return []
    return [("next", node.next)]


class JourneyDefinition(_Model):
    """A journey: its entry, re-entry policy, nodes, exit conditions and goal.

    >>> d = JourneyDefinition.model_validate({"id": "welcome",
    ...     "entry": {"type": "event", "event": "Signed Up"}, "start": "m", "nodes": [
    ...     {"id": "m", "type": "send", "channel": "email", "template": "welcome"}]})
    >>> d.node("m").template, d.reentry.policy
    ('welcome', 'never')
    """

    id: JourneyId
    name: Annotated[str, StringConstraints(max_length=200)] = ""
    version: Annotated[int, Field(ge=1)] = 1
    description: str = ""
    entry: Entry
    reentry: Reentry = Reentry()
    max_concurrent: Annotated[int, Field(ge=1)] | None = None
    daily_limit: Annotated[int, Field(ge=1)] | None = None
    """Most messages the journey sends per day (UTC); the rest are skipped at delivery."""
    start: NodeId
    nodes: Annotated[tuple[JourneyNode, ...], Field(min_length=1, max_length=200)]
    exit_when: tuple[EventSpec, ...] = ()
    goal: Goal | None = None

    @model_validator(mode="after")
    def _graph(self) -> JourneyDefinition:
        refuse_graph_errors(_graph_errors(self))
        return self

    def node(self, node_id: str) -> Any:
        """The node with this id (KeyError if none)."""
        return node_by_id(self.nodes, node_id)

    def events_read(self) -> frozenset[str]:
        """Names of the track events that can move a profile in this journey."""
        names = {spec.event for spec in self.exit_when}
        if self.goal is not None:
            names.add(self.goal.event)
        for node in self.nodes:
            if isinstance(node, WaitNode) and node.until_event is not None:
                names.add(node.until_event.event)
        return frozenset(names)


def _graph_errors(definition: JourneyDefinition) -> Iterator[tuple[str, str]]:
    index: dict[str, int] = {}
    for i, node in enumerate(definition.nodes):
        if node.id in index:
            yield f"nodes[{i}].id", f"duplicate node id {node.id!r}"
        index.setdefault(node.id, i)
    if definition.start not in index:
        yield "start", f"unknown node {definition.start!r}"
    edges: dict[str, list[str]] = {}
    for i, node in enumerate(definition.nodes):
        edges[node.id] = []
        for field, ref in successors(node):
            if ref is None:
                continue
            if ref not in index:
                yield f"nodes[{i}].{field}", f"unknown node {ref!r}"
            else:
                edges[node.id].append(ref)
    cycle = _find_cycle(edges)
    if cycle is not None:
        yield f"nodes[{index[cycle[0]]}]", "cycle: " + " -> ".join(cycle)


def _find_cycle(edges: Mapping[str, Sequence[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the path, 2 done
    for root in edges:
        if state.get(root):
            continue
        path: list[str] = [root]
        stack: list[Iterator[str]] = [iter(edges[root])]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(edges[nxt]))
    return None


_TAGS: Final = JOURNEY_NODE_TYPES | CORE_NODE_TYPES | SUGAR_NODE_TYPES
_ENTRY_TAGS: Final = frozenset({"segment_entered", "event", "schedule"})
_UNION_LABELS: Final = frozenset(
    {"str", "int", "float", "bool", "list", "tuple", "none", "relative", "absolute"}
)


def _format_loc(loc: Iterable[int | str]) -> str:
    """Pydantic's location as a path, without union tags (node types and the like)."""
    out = ""
    previous: int | str | None = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif (isinstance(previous, int) and part in _TAGS) or (
            previous == "entry" and part in _ENTRY_TAGS
        ):
            pass  # a discriminated union's tag
        elif re.fullmatch(r"[a-z_][a-z0-9_]*", part) and part not in _UNION_LABELS:
            out += f".{part}" if out else part
        previous = part
    return out


def _has_deeper(loc: tuple[int | str, ...], errors: Iterable[Any]) -> bool:
    return any(len(e["loc"]) > len(loc) and e["loc"][: len(loc)] == loc for e in errors)


def parse_journey(data: object) -> JourneyDefinition:
    """Validate a definition (a mapping decoded from JSON or YAML) or raise DefinitionError.

    >>> try:
    ...     parse_journey({"id": "j", "entry": {"type": "event", "event": "E"},
    ...         "start": "a", "nodes": [{"id": "a", "type": "wait", "duration": "1h",
    ...         "next": "zz"}]})
    ... except DefinitionError as e:
    ...     print(e.field)
    nodes[0].next
    """
    try:
        return JourneyDefinition.model_validate(data)
    except ValidationError as exc:
        errors: list[tuple[str, str]] = []
        raw = exc.errors()
        for err in raw:
            ctx = err.get("ctx") or {}
            if err["type"] == "too_short" and _has_deeper(err["loc"], raw):
                continue  # a tuple whose items failed also reports itself as too short
            if err["type"] == "invalid_graph":
                prefix = _format_loc(err["loc"])
                inner = str(ctx["path"])
                path = f"{prefix}.{inner}" if prefix and not inner.startswith("[") else prefix
                errors.append((path or inner, str(ctx["message"])))
            else:
                errors.append((_format_loc(err["loc"]), err["msg"]))
        raise DefinitionError(errors) from None


def journey_json_schema() -> dict[str, Any]:
    """The JSON Schema of a journey definition (served at ``/v1/schema/journey``)."""
    schema = JourneyDefinition.model_json_schema(by_alias=True)
    schema["$id"] = "https://remarket.dev/schema/journey.json"
    schema["title"] = "Journey definition"
    return schema
