"""Open the warehouse that the settings name."""

from __future__ import annotations

from pathlib import Path

from remarket.config import Settings
from remarket.storage.warehouse.base import Warehouse
from remarket.storage.warehouse.duckdb import DuckDBWarehouse

__all__ = ["open_warehouse"]


def open_warehouse(settings: Settings) -> Warehouse:
    """DuckDB for ``duckdb:///PATH`` (the default), PostgreSQL for ``postgresql://``."""
    url = settings.resolved_warehouse_url()
    if url.startswith("duckdb:///"):
        return DuckDBWarehouse(Path(url.removeprefix("duckdb:///")))
    if url.startswith(("postgresql://", "postgresql+psycopg://", "postgres://")):
        from remarket.storage.warehouse.postgres import PostgresWarehouse

        return PostgresWarehouse(
            url.replace("postgresql+psycopg://", "postgresql://", 1),
            schema=settings.warehouse_schema,
        )
    raise ValueError(f"warehouse URL must be duckdb:///PATH or postgresql://..., got {url!r}")
