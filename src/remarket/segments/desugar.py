"""Rewrite a definition into core nodes only: sugar expanded, references inlined.

Engines evaluate :class:`CoreSegment` and know nothing else. ``in_segment`` is
inlined (the referenced definition's nodes under ``<node id>/``) so each engine sees
one self-contained tree; a segment that references another must be compiled again
when that one changes (:attr:`CoreSegment.references` names them). ``consent`` is
rewritten by a pluggable function; the default reads the identify trait
``consent.<purpose>``. That trait is the consent ledger's state: the ledger publishes
every change of a purpose's current state, whatever set it (identify traits, a TC
string or Segment's ``categoryPreferences`` in ``context``, the API, one-click
unsubscribe), as an identify event at the time of the choice
(:mod:`remarket.privacy.sink`), so both engines read the ledger from events alone, in
real time and as of any T. A ``score`` node holds only with ``personalization``
consent: a model's output is used only for people who allowed it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Final

from pydantic import Field, TypeAdapter

from remarket.schema.segment import (
    AggregateNode,
    AndNode,
    BrowseAbandonedNode,
    CartAbandonedNode,
    CategoryInterestNode,
    ConsentNode,
    DefinitionError,
    FirstPerformedNode,
    HighValueNode,
    InSegmentNode,
    LapsedBuyerNode,
    LastPerformedNode,
    NotNode,
    OrNode,
    PerformedNode,
    RandomBucketNode,
    ScoreNode,
    SegmentDefinition,
    SequenceNode,
    TraitNode,
)

__all__ = [
    "ConsentRewrite",
    "CoreNode",
    "CoreSegment",
    "SegmentResolver",
    "consent_from_trait",
    "desugar",
]

CoreNode = (
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
)
_CORE: Final = (
    TraitNode,
    PerformedNode,
    LastPerformedNode,
    FirstPerformedNode,
    AggregateNode,
    SequenceNode,
    ScoreNode,
    RandomBucketNode,
    AndNode,
    OrNode,
    NotNode,
)

SegmentResolver = Callable[[str], SegmentDefinition | None]
"""Finds the current definition of a segment by name (None if there is none)."""

ConsentRewrite = Callable[[str], dict[str, Any]]
"""Turns a consent purpose into one core node, as a mapping without ``id``."""


def consent_from_trait(purpose: str) -> dict[str, Any]:
    """The default consent source: the trait ``consent.<purpose>`` is ``true``.

    >>> consent_from_trait("email")["path"]
    'consent.email'
    """
    return {"type": "trait", "path": f"consent.{purpose}", "operator": "eq", "value": True}


@dataclass(frozen=True, slots=True)
class CoreSegment:
    """A definition reduced to core nodes, keyed by id, ready for the engines.

    >>> d = SegmentDefinition.model_validate({"name": "c", "entry": "c", "nodes": [
    ...     {"id": "c", "type": "cart_abandoned"}]})
    >>> desugar(d).nodes["c"].type
    'sequence'
    """

    name: str
    version: int
    entry: str
    nodes: Mapping[str, CoreNode]
    references: frozenset[str] = field(default_factory=frozenset)


_MODEL_PURPOSE: Final = "personalization"


def _node(node_id: str, data: dict[str, Any], children: list[str] | None = None) -> CoreNode:
    """Validate a generated node, then give it its derived ids (which may contain ``/``)."""
    placeholder = {"children": ["x"]} if children is not None else {}
    model = _CORE_ADAPTER.validate_python({**data, **placeholder, "id": "generated"})
    update: dict[str, Any] = {"id": node_id}
    if children is not None:
        update["children"] = tuple(children)
    return _core(model, node_id, "").model_copy(update=update)


_CORE_ADAPTER: Final = TypeAdapter[CoreNode](Annotated[CoreNode, Field(discriminator="type")])


def _expand_sugar(node: Any) -> list[tuple[str, dict[str, Any]]]:
    """Core nodes (relative id suffix, data) for a sugar node; suffix "" is the root."""
    if isinstance(node, CartAbandonedNode):
        return [("", _abandoned(node.cart_event, node.order_event, node.within, node.lookback))]
    if isinstance(node, BrowseAbandonedNode):
        return [("", _abandoned(node.view_event, node.cart_event, node.within, node.lookback))]
    if isinstance(node, LapsedBuyerNode):
        last = {"type": "last_performed", "event": node.order_event}
        return [
            ("", {"type": "and", "children": ["/1", "/2"]}),
            ("/1", {**last, "operator": "before", "value": {"ago": node.after}}),
            ("/2", {**last, "operator": "within_last", "value": node.before}),
        ]
    if isinstance(node, HighValueNode):
        aggregate = {"type": "aggregate", "event": node.order_event, "function": "sum"}
        window = {"last": node.window}
        return [
            (
                "",
                {**aggregate, "property": node.property, "window": window}
                | {"operator": "gte", "value": node.threshold},
            )
        ]
    if isinstance(node, CategoryInterestNode):
        window = {"last": node.window}
        where = [{"path": "category", "operator": "eq", "value": node.category}]
        return [
            ("", {"type": "and", "children": ["/1", "/2"]}),
            (
                "/1",
                {"type": "performed", "event": node.view_event, "where": where}
                | {"operator": "at_least", "times": node.times, "window": window},
            ),
            (
                "/2",
                {"type": "performed", "event": node.order_event, "operator": "never"}
                | {"window": window},
            ),
        ]
    raise TypeError(f"no expansion for node type {node.type!r}")


def _abandoned(first: str, then: str, within: str, lookback: str) -> dict[str, Any]:
    return {
        "type": "sequence",
        "first": {"event": first},
        "then": {"event": then},
        "within": within,
        "followed": False,
        "window": {"last": lookback},
    }


def _core(node: CoreNode, node_id: str, prefix: str) -> CoreNode:
    update: dict[str, Any] = {"id": node_id}
    if isinstance(node, AndNode | OrNode):
        update["children"] = tuple(prefix + c for c in node.children)
    elif isinstance(node, NotNode):
        update["child"] = prefix + node.child
    elif isinstance(node, PerformedNode) and node.operator == "never":
        update |= {"operator": "at_most", "times": 0}
    return node.model_copy(update=update)


def desugar(
    definition: SegmentDefinition,
    *,
    resolve: SegmentResolver | None = None,
    consent: ConsentRewrite = consent_from_trait,
) -> CoreSegment:
    """The core form of a definition; DefinitionError names a bad ``in_segment`` node."""
    nodes: dict[str, CoreNode] = {}
    references: set[str] = set()
    _expand(definition, "", (definition.name,), nodes, references, resolve, consent)
    return CoreSegment(
        name=definition.name,
        version=definition.version,
        entry=definition.entry,
        nodes=nodes,
        references=frozenset(references),
    )


def _expand(
    definition: SegmentDefinition,
    prefix: str,
    chain: tuple[str, ...],
    out: dict[str, CoreNode],
    references: set[str],
    resolve: SegmentResolver | None,
    consent: ConsentRewrite,
) -> None:
    for index, node in enumerate(definition.nodes):
        node_id = prefix + node.id
        if isinstance(node, ScoreNode):
            # A model's score may be used only with the person's personalization consent.
            scored, allowed = f"{node_id}/score", f"{node_id}/consent"
            out[scored] = _core(node, scored, prefix)
            out[allowed] = _node(allowed, consent(_MODEL_PURPOSE))
            out[node_id] = _node(node_id, {"type": "and"}, [scored, allowed])
        elif isinstance(node, _CORE):
            out[node_id] = _core(node, node_id, prefix)
        elif isinstance(node, InSegmentNode):
            target = resolve(node.segment) if resolve is not None else None
            if target is None:
                raise DefinitionError(
                    [(f"nodes[{index}].segment", f"unknown segment {node.segment!r}")]
                )
            if target.name in chain:
                cycle = " -> ".join([*chain, target.name])
                raise DefinitionError([(f"nodes[{index}].segment", f"segment cycle: {cycle}")])
            references.add(target.name)
            inner = f"{node_id}/"
            _expand(target, inner, (*chain, target.name), out, references, resolve, consent)
            out[node_id] = _node(node_id, {"type": "and"}, [inner + target.entry])
        elif isinstance(node, ConsentNode):
            out[node_id] = _node(node_id, consent(node.purpose))
        else:
            for suffix, data in _expand_sugar(node):
                children = data.pop("children", None)
                derived = [node_id + c for c in children] if children is not None else None
                out[node_id + suffix] = _node(node_id + suffix, data, derived)
