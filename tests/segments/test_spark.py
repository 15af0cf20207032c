"""Spark SQL on Parquet exported from the DuckDB warehouse: the export and the runner."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pyarrow.parquet as pq
import pytest

from remarket.schema.events import Identify, Track
from remarket.schema.segment import parse_segment
from remarket.segments.compile import compile_segment
from remarket.segments.desugar import desugar
from remarket.segments.spark import register_tables, spark_members
from remarket.storage.warehouse.duckdb import DuckDBWarehouse

AT = datetime(2026, 3, 2, tzinfo=UTC)


def _warehouse() -> DuckDBWarehouse:
    wh = DuckDBWarehouse(None)
    moment = datetime(2026, 3, 1, 12, tzinfo=UTC)
    rows = [
        (1, Identify(message_id="m1", user_id="u1", anonymous_id="a1", timestamp=moment,
                     received_at=moment, traits=msgspec.Raw(b'{"plan": "pro"}'))),
        (2, Track(message_id="m2", anonymous_id="a1", event="Order Completed", timestamp=moment,
                  received_at=moment, properties=msgspec.Raw(b'{"revenue": 30}'))),
        (3, Track(message_id="m3", anonymous_id="a2", event="Order Completed", timestamp=moment,
                  received_at=moment, properties=msgspec.Raw(b'{"revenue": 5}'))),
    ]  # fmt: skip
    wh.write_events("test", rows, through=3, expected=0)
    wh.upsert_identities(
        [("user_id", "u1", "p1"), ("anonymous_id", "a1", "p1"), ("anonymous_id", "a2", "p2")]
    )
    return wh


def test_export_writes_events_and_identities(tmp_path: Path) -> None:
    wh = _warehouse()
    wh.export_parquet(tmp_path / "out")
    wh.close()
    events = pq.read_table(tmp_path / "out" / "events.parquet")
    identities = pq.read_table(tmp_path / "out" / "identities.parquet")
    assert events.num_rows == 3
    assert identities.num_rows == 3
    assert str(events.schema.field("timestamp").type) == "timestamp[us, tz=UTC]"
    assert events.column("traits").to_pylist()[0] == '{"plan":"pro"}'


def test_register_tables_names_the_missing_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"events, identities\.parquet"):
        register_tables(None, tmp_path)  # type: ignore[arg-type]


@pytest.mark.spark
def test_spark_members_equal_duckdb(spark: Any, tmp_path: Path) -> None:
    core = desugar(
        parse_segment(
            {
                "name": "big spenders",
                "entry": "v",
                "nodes": [{"id": "v", "type": "high_value", "threshold": 10, "window": "7d"}],
            }
        )
    )
    wh = _warehouse()
    expected = {r[0] for r in wh.query(compile_segment(core, AT))}
    wh.export_parquet(tmp_path)
    wh.close()
    sql = compile_segment(core, AT, dialect="spark", scores=False)
    assert spark_members(spark, tmp_path, sql) == expected == {"p1"}
