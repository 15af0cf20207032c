"""Analytic event store: DuckDB (default) or PostgreSQL."""

from __future__ import annotations

from remarket.storage.warehouse.base import EventPage, IdentityRow, Warehouse
from remarket.storage.warehouse.columns import EVENT_COLUMNS
from remarket.storage.warehouse.duckdb import DuckDBWarehouse
from remarket.storage.warehouse.factory import open_warehouse

__all__ = [
    "EVENT_COLUMNS",
    "DuckDBWarehouse",
    "EventPage",
    "IdentityRow",
    "Warehouse",
    "open_warehouse",
]
