"""Differential test: real-time, DuckDB, PostgreSQL and Spark agree on every member set."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from remarket.schema.segment import SegmentDefinition
from remarket.segments.desugar import desugar
from tests.segments.segment_world import (
    REGISTRY,
    Postgres,
    World,
    definitions,
    duckdb_members,
    realtime_members,
    spark_members,
    worlds,
)


def _core(definition: SegmentDefinition) -> Any:
    return desugar(definition, resolve=REGISTRY.get)


@settings(max_examples=150, deadline=None)
@given(world=worlds(), definition=definitions)
def test_realtime_equals_duckdb(world: World, definition: SegmentDefinition) -> None:
    core = _core(definition)
    assert realtime_members(core, world) == duckdb_members(core, world)


@pytest.fixture
def postgres(pg_database: str) -> Iterator[Postgres]:
    db = Postgres(pg_database)
    yield db
    db.close()


@pytest.mark.postgres
@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(world=worlds(), definition=definitions)
def test_realtime_equals_postgres(
    postgres: Postgres, world: World, definition: SegmentDefinition
) -> None:
    core = _core(definition)
    assert realtime_members(core, world) == postgres.members(core, world)


@pytest.mark.spark
@settings(max_examples=3, deadline=None)
@given(world=worlds(), batch=st.lists(definitions, min_size=8, max_size=8))
def test_realtime_equals_spark(spark: Any, world: World, batch: list[SegmentDefinition]) -> None:
    cores = [_core(d) for d in batch]
    expected = [realtime_members(core, world) for core in cores]
    assert spark_members(spark, cores, world) == expected
