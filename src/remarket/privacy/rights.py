"""The data-subject rights of a running server: erasure and export over every store."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from remarket.clock import Clock
from remarket.config import Settings
from remarket.privacy.erasers import standard_erasers
from remarket.privacy.erasure import Erasure, ErasureRegistry
from remarket.privacy.export import ExportRegistry, standard_exporters
from remarket.privacy.keyring import Keyring
from remarket.storage.warehouse import Warehouse

__all__ = ["Rights", "build_rights"]


@dataclass(frozen=True, slots=True)
class Rights:
    """Erasure with its registry of erasers, and the registry of export sections.

    A module with a store of its own registers on both, e.g. at start-up::

        rights.erasers.register(TableEraser(engine, journey_states))
        rights.exporters.register(JourneyExporter(engine))
    """

    erasure: Erasure
    erasers: ErasureRegistry
    exporters: ExportRegistry


def build_rights(
    settings: Settings,
    engine: Engine,
    warehouse: Warehouse,
    keyring: Keyring,
    clock: Clock | None = None,
) -> Rights:
    erasers = standard_erasers(engine, keyring, warehouse, settings.parquet_export_dirs)
    erasure = Erasure(engine, keyring, erasers, pii_fields=settings.pii_fields, clock=clock)
    return Rights(erasure, erasers, standard_exporters(engine, warehouse))
