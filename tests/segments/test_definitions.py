"""Definition validation (errors name the bad node's path), JSON Schema, desugaring."""

from __future__ import annotations

from typing import Any

import pytest

from remarket.schema.segment import (
    CORE_NODE_TYPES,
    DefinitionError,
    SegmentDefinition,
    parse_segment,
    segment_json_schema,
)
from remarket.segments.desugar import desugar


def _definition(*nodes: dict[str, Any], entry: str = "a", name: str = "s") -> dict[str, Any]:
    return {"name": name, "entry": entry, "nodes": list(nodes)}


TRAIT = {"id": "t", "type": "trait", "path": "plan", "operator": "eq", "value": "pro"}

BAD = [
    ("empty", _definition(), "nodes"),
    ("bad-operator", _definition({**TRAIT, "id": "a", "operator": "like"}), "nodes[0].operator"),
    (
        "string-for-gt",
        _definition(TRAIT, {**TRAIT, "id": "a", "operator": "gt", "value": "x"}),
        "nodes[1].value",
    ),
    (
        "unknown-child",
        _definition({"id": "a", "type": "and", "children": ["t", "zz"]}, TRAIT),
        "nodes[0].children[1]",
    ),
    ("unknown-entry", _definition(TRAIT, entry="nope"), "entry"),
    ("duplicate-id", _definition({**TRAIT, "id": "a"}, {**TRAIT, "id": "a"}), "nodes[1].id"),
    (
        "cycle",
        _definition(
            {"id": "a", "type": "not", "child": "b"}, {"id": "b", "type": "or", "children": ["a"]}
        ),
        "nodes[0]",
    ),
    (
        "relative-filter",
        _definition(
            {
                "id": "a",
                "type": "performed",
                "event": "E",
                "where": [{"path": "at", "operator": "gt", "value": {"ago": "1d"}}],
            }
        ),
        "nodes[0].where[0].value",
    ),
    (
        "window-order",
        _definition(
            {
                "id": "a",
                "type": "performed",
                "event": "E",
                "window": {"start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"},
            }
        ),
        "nodes[0].window",
    ),
    (
        "bad-duration",
        _definition({"id": "a", "type": "performed", "event": "E", "window": {"last": "2w"}}),
        "nodes[0].window.last",
    ),
    (
        "sum-without-property",
        _definition(
            {
                "id": "a",
                "type": "aggregate",
                "event": "E",
                "function": "sum",
                "operator": "gt",
                "value": 1,
            }
        ),
        "nodes[0]",
    ),
    ("unknown-type", _definition({"id": "a", "type": "magic"}), "nodes[0]"),
    ("slash-in-id", _definition({**TRAIT, "id": "a/b"}), "nodes[0].id"),
]


@pytest.mark.parametrize(("data", "path"), [(d, p) for _, d, p in BAD], ids=[i for i, _, _ in BAD])
def test_invalid_definition_names_the_path(data: dict[str, Any], path: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        parse_segment(data)
    assert caught.value.field == path
    assert caught.value.status == 422


def test_bad_duration_says_what_a_duration_looks_like() -> None:
    data = _definition({"id": "a", "type": "performed", "event": "E", "window": {"last": "2w"}})
    with pytest.raises(DefinitionError, match=r"a duration such as 15m, 2h or 30d .*not '2w'"):
        parse_segment(data)
    # The published schema still states the rule, for editors and generated clients.
    assert r"^[1-9][0-9]{0,4}[mhd]$" in str(segment_json_schema())


def test_json_schema_lists_every_node_type() -> None:
    schema = segment_json_schema()
    text = str(schema)
    for node_type in CORE_NODE_TYPES | {"cart_abandoned", "in_segment", "consent"}:
        assert f"'{node_type}'" in text
    assert schema["title"] == "Segment definition"


SUGAR = [
    ("cart_abandoned", {"type": "cart_abandoned"}, {"sequence"}),
    ("browse_abandoned", {"type": "browse_abandoned"}, {"sequence"}),
    ("lapsed_buyer", {"type": "lapsed_buyer"}, {"and", "last_performed"}),
    ("high_value", {"type": "high_value", "threshold": 100}, {"aggregate"}),
    ("category_interest", {"type": "category_interest", "category": "x"}, {"and", "performed"}),
    ("consent", {"type": "consent", "purpose": "email"}, {"trait"}),
]


@pytest.mark.parametrize(
    ("node", "types"), [(n, t) for _, n, t in SUGAR], ids=[i for i, _, _ in SUGAR]
)
def test_sugar_becomes_core(node: dict[str, Any], types: set[str]) -> None:
    core = desugar(parse_segment(_definition({**node, "id": "a"})))
    assert {n.type for n in core.nodes.values()} == types
    assert core.entry in core.nodes


def test_never_becomes_at_most_zero() -> None:
    core = desugar(
        parse_segment(
            _definition({"id": "a", "type": "performed", "event": "E", "operator": "never"})
        )
    )
    node = core.nodes["a"]
    assert (node.type, node.operator, node.times) == (
        "performed",
        "at_most",
        0,
    )


def _named(name: str, ref: str) -> SegmentDefinition:
    return parse_segment(_definition({"id": "a", "type": "in_segment", "segment": ref}, name=name))


def test_in_segment_is_inlined_and_reported() -> None:
    registry = {"b": parse_segment(_definition({**TRAIT, "id": "a"}, name="b"))}
    core = desugar(_named("top", "b"), resolve=registry.get)
    assert core.references == frozenset({"b"})
    assert core.nodes["a/a"].type == "trait"


@pytest.mark.parametrize(
    ("registry", "message"),
    [({}, "unknown segment"), ({"x": None}, "segment cycle")],
    ids=["unknown", "cycle"],
)
def test_in_segment_errors(registry: dict[str, Any], message: str) -> None:
    segments = {"x": _named("x", "y"), "y": _named("y", "x")} if registry else {}
    with pytest.raises(DefinitionError, match=message) as caught:
        desugar(_named("top", "x"), resolve=segments.get)
    assert caught.value.field == "nodes[0].segment"
