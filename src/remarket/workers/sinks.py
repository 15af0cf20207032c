"""The consumers of the log that the foundation runs: warehouse writer and profiles."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from remarket.profiles.store import ProfileStore
from remarket.schema.events import Message
from remarket.storage.warehouse import Warehouse

__all__ = ["ProfilesSink", "Sink", "WarehouseSink"]


class Sink(Protocol):
    """Something that applies log records exactly once, keeping its own offset.

    ``apply`` must store ``through`` atomically with its effects, so that a crash
    between two batches neither loses nor repeats one.
    """

    name: str

    def committed(self) -> int: ...

    def apply(self, rows: Sequence[tuple[int, Message]], through: int, expected: int) -> None:
        """Apply rows and move from offset ``expected`` to ``through``, or raise
        :class:`~remarket.errors.OffsetConflict` if another worker moved it first."""
        ...


class WarehouseSink:
    """Writes events to the warehouse as columns."""

    def __init__(self, warehouse: Warehouse, name: str = "warehouse") -> None:
        self.name = name
        self._warehouse = warehouse

    def committed(self) -> int:
        return self._warehouse.committed(self.name)

    def apply(self, rows: Sequence[tuple[int, Message]], through: int, expected: int) -> None:
        self._warehouse.write_events(self.name, rows, through, expected=expected)


class ProfilesSink:
    """Maintains profiles and mirrors identity changes into the warehouse."""

    def __init__(
        self, store: ProfileStore, warehouse: Warehouse | None, name: str = "profiles"
    ) -> None:
        self.name = name
        self._store = store
        self._warehouse = warehouse

    def committed(self) -> int:
        return self._store.committed(self.name)

    def apply(self, rows: Sequence[tuple[int, Message]], through: int, expected: int) -> None:
        mirror = self._warehouse.upsert_identities if self._warehouse is not None else None
        self._store.apply(self.name, rows, through, expected=expected, mirror=mirror)
