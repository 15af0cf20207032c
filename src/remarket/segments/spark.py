"""Run compiled Spark SQL (pyspark, local or a cluster) on Parquet written from the warehouse.

:meth:`~remarket.storage.warehouse.duckdb.DuckDBWarehouse.export_parquet` writes
``events.parquet`` and ``identities.parquet`` into a folder (and a ``scores.parquet``
may sit beside them); :func:`register_tables` makes each a temporary view of a Spark
session under its table name, so the SQL that :func:`~remarket.segments.compile_segment`
writes for ``dialect="spark"`` reads them unchanged. pyspark is the optional extra
``spark``: it is never imported here, the caller brings the session.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["TABLES", "register_tables", "spark_members"]

TABLES: Final = ("events", "identities", "scores")
"""The tables compiled segments read, each from ``<name>.parquet`` when present."""


def register_tables(spark: SparkSession, folder: Path) -> list[str]:
    """Register each table of :data:`TABLES` found in ``folder`` as a temp view; their names.

    ``events`` and ``identities`` must be there; ``scores`` is optional (compile with
    ``scores=False`` without it).
    """
    found = [name for name in TABLES if (folder / f"{name}.parquet").exists()]
    missing = {"events", "identities"} - set(found)
    if missing:
        raise ValueError(f"{folder} must hold {', '.join(sorted(missing))}.parquet")
    for name in found:
        spark.read.parquet(str(folder / f"{name}.parquet")).createOrReplaceTempView(name)
    return found


def spark_members(spark: SparkSession, folder: Path, sql: str) -> set[str]:
    """The ``profile_id`` of every member that compiled Spark SQL ``sql`` selects.

    Example (needs pyspark and Java; ``wh`` a DuckDB warehouse, ``core`` a desugared
    segment)::

        wh.export_parquet(folder)
        spark_members(spark, folder, compile_segment(core, at, dialect="spark"))
    """
    register_tables(spark, folder)
    return {str(row[0]) for row in spark.sql(sql).collect()}
