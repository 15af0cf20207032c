"""Open the warehouse that the settings name."""

from __future__ import annotations

from pathlib import Path

from remarket.config import Settings
from remarket.storage.warehouse.base import Warehouse
from remarket.storage.warehouse.duckdb import DuckDBWarehouse

__all__ = ["open_warehouse"]


def open_warehouse(settings: Settings, *, lock_wait_s: float = 0.0) -> Warehouse:
    """DuckDB for ``duckdb:///PATH`` (the default; waiting up to ``lock_wait_s`` while
    another process holds the file), PostgreSQL for ``postgresql://``."""
    url = settings.resolved_warehouse_url()
    if url.startswith("duckdb:///"):
        return DuckDBWarehouse(Path(url.removeprefix("duckdb:///")), lock_wait_s=lock_wait_s)
    if url.startswith(("postgresql://", "postgresql+psycopg://", "postgres://")):
        from remarket.storage.warehouse.postgres import PostgresWarehouse

        return PostgresWarehouse(
            url.replace("postgresql+psycopg://", "postgresql://", 1),
            schema=settings.warehouse_schema,
        )
    raise ValueError(f"warehouse URL must be duckdb:///PATH or postgresql://..., got {url!r}")
