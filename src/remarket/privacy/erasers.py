"""The erasers of the stores this package knows, and the scan of the event log.

To erase a new store's rows, register an eraser (see :class:`~remarket.privacy.erasure.Eraser`):
a state table with an indexed ``profile_id`` column needs only
``registry.register(TableEraser(engine, my_table))``, or add the table to
:data:`PERSONAL_TABLES`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Final, Literal

import duckdb
from sqlalchemy import Engine, Table, func, select
from sqlalchemy.exc import OperationalError

from remarket.privacy.erasure import ID_KINDS, PII_VALUE, ErasureRegistry, Identifier
from remarket.privacy.keyring import Keyring
from remarket.storage.log import EventLog
from remarket.storage.state.tables import (
    channel_outbox,
    channel_suppressions,
    consent_history,
    consents,
    erasures,
    guard_anomalies,
    identities,
    journey_assignments,
    journey_instances,
    journey_steps,
    profile_traits,
    profiles,
    quarantine,
    segment_errors,
    segment_history,
    segment_members,
    segment_outbox,
    segment_states,
    segment_timers,
)
from remarket.storage.warehouse import DuckDBWarehouse, Warehouse
from remarket.storage.warehouse.parquet import erase_parquet, parquet_residue

__all__ = [
    "PERSONAL_TABLES",
    "KeyEraser",
    "ParquetEraser",
    "QuarantineEraser",
    "SQLiteScrubber",
    "TableEraser",
    "WarehouseEraser",
    "compact_after_erasures",
    "needles",
    "scan_log",
    "standard_erasers",
]

PERSONAL_TABLES: Final[tuple[Table, ...]] = (
    profiles,
    identities,
    profile_traits,
    # Consent is erased with the person: once nothing is processed any more there is no
    # consent left to demonstrate (art. 7(1)); the erasure record keeps the counts.
    consents,
    consent_history,
    segment_states,
    segment_members,
    segment_history,
    segment_timers,
    segment_outbox,
    segment_errors,
    journey_instances,
    journey_steps,
    journey_assignments,
    # Messages queued, sent or skipped for the person, and their suppressions (a new
    # profile with the same address later starts without them: it is a new person).
    channel_outbox,
    channel_suppressions,
)
"""State tables whose rows belong to one profile, found by their ``profile_id`` column."""

_CHUNK: Final = 500
_PAGE: Final = 1000
_LOG_PAGE: Final = 20_000
_log = logging.getLogger(__name__)
# A truncating checkpoint: up to 40 tries of 50 ms each, 20 ms apart (about 3 s at most).
_SCRUB_ATTEMPTS: Final = 40
_SCRUB_WAIT_MS: Final = 50
_SCRUB_PAUSE_S: Final = 0.02


def _chunks(items: Collection[str]) -> Iterable[list[str]]:
    ordered = sorted(items)
    for start in range(0, len(ordered), _CHUNK):
        yield ordered[start : start + _CHUNK]


def _ids(identities: Collection[Identifier]) -> list[str]:
    """Identifier values that events and identity rows carry (not raw PII values)."""
    return sorted({value for kind, value in identities if kind != PII_VALUE})


def needles(profile_ids: Collection[str], identities: Collection[Identifier]) -> list[bytes]:
    """The person's ids and PII values as they appear in raw JSON (quoted strings)."""
    texts = {v for k, v in identities if k in (*ID_KINDS, PII_VALUE)} | set(profile_ids)
    found: set[bytes] = set()
    for text in texts:
        found.add(json.dumps(text).encode())
        found.add(json.dumps(text, ensure_ascii=False).encode())
    return sorted(found)


class TableEraser:
    """Rows of a state table by a column holding the profile id (``of="profiles"``) or
    one of the person's identifier values (``of="ids"``: userId, anonymousId, ...)."""

    def __init__(
        self,
        engine: Engine,
        table: Table,
        column: str = "profile_id",
        *,
        of: Literal["profiles", "ids"] = "profiles",
    ) -> None:
        self.name = f"state.{table.name}"
        self._engine = engine
        self._table = table
        self._column = table.c[column]
        self._of = of

    def _keys(self, profile_ids: Collection[str], identities: Collection[Identifier]) -> list[str]:
        return sorted(profile_ids) if self._of == "profiles" else _ids(identities)

    def erase(self, profile_ids: Collection[str], identities: Collection[Identifier]) -> int:
        deleted = 0
        with self._engine.begin() as conn:
            for chunk in _chunks(self._keys(profile_ids, identities)):
                deleted += conn.execute(
                    self._table.delete().where(self._column.in_(chunk))
                ).rowcount
        return deleted

    def residue(self, profile_ids: Collection[str], identities: Collection[Identifier]) -> int:
        total = 0
        with self._engine.connect() as conn:
            for chunk in _chunks(self._keys(profile_ids, identities)):
                total += int(
                    conn.scalar(
                        select(func.count()).select_from(self._table).where(self._column.in_(chunk))
                    )
                    or 0
                )
        return total


class KeyEraser:
    """The person's encryption keys (crypto-shredding of the log)."""

    name = "pii_keys"

    def __init__(self, keyring: Keyring) -> None:
        self._keyring = keyring

    def _handles(self, identities: Collection[Identifier]) -> list[str]:
        return sorted({self._keyring.handle(k, v) for k, v in identities if k in ID_KINDS})

    def erase(self, profile_ids: Collection[str], identities: Collection[Identifier]) -> int:
        return self._keyring.destroy(self._handles(identities))

    def residue(self, profile_ids: Collection[str], identities: Collection[Identifier]) -> int:
        return self._keyring.count(self._handles(identities))


class SQLiteScrubber:
    """A SQLite file of the state store (or its key file). A deletion zeroes the rows in place
    (``secure_delete``, set on every connection), but the write-ahead log keeps the
    pages as they were until a checkpoint: a truncating one copies the current pages
    into the database file and empties the log.

    Such a checkpoint must wait for every reader and holds the write lock meanwhile: it
    waits briefly, so that the workers' transactions are not stalled, and tries again.
    """

    def __init__(self, engine: Engine, name: str = "state.sqlite") -> None:
        self._engine = engine
        self.name = name

    def scrub(self) -> bool:
        with self._engine.connect() as conn:
            patience = conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one()
            conn.exec_driver_sql(f"PRAGMA busy_timeout={_SCRUB_WAIT_MS}")
            try:
                for _ in range(_SCRUB_ATTEMPTS):
                    with contextlib.suppress(OperationalError):  # locked: busy too
                        busy, _, _ = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").one()
                        if not busy:
                            return True
                    time.sleep(_SCRUB_PAUSE_S)
                return False
            finally:
                conn.exec_driver_sql(f"PRAGMA busy_timeout={int(patience)}")


class QuarantineEraser:
    """Quarantined events whose raw payload mentions the person (an id, a PII value, or,
    for undecodable log records, a key handle)."""

    name = "state.quarantine"

    def __init__(self, engine: Engine, keyring: Keyring) -> None:
        self._engine = engine
        self._keyring = keyring

    def _matching(
        self, profile_ids: Collection[str], identities: Collection[Identifier]
    ) -> list[int]:
        wanted = needles(profile_ids, identities)
        wanted += [self._keyring.handle(k, v).encode() for k, v in identities if k in ID_KINDS]
        found: list[int] = []
        after = 0
        with self._engine.connect() as conn:
            while True:
                rows = conn.execute(
                    select(quarantine.c.id, quarantine.c.payload)
                    .where(quarantine.c.id > after)
                    .order_by(quarantine.c.id)
                    .limit(_PAGE)
                ).all()
                for row_id, payload in rows:
                    data = bytes(payload)
                    if any(needle in data for needle in wanted):
                        found.append(int(row_id))
                if len(rows) < _PAGE:
                    return found
                after = int(rows[-1][0])

    def erase(self, profile_ids: Collection[str], identities: Collection[Identifier]) -> int:
        found = self._matching(profile_ids, identities)
        deleted = 0
        with self._engine.begin() as conn:
            for start in range(0, len(found), _CHUNK):
                chunk = found[start : start + _CHUNK]
                deleted += conn.execute(
                    quarantine.delete().where(quarantine.c.id.in_(chunk))
                ).rowcount
        return deleted

    def residue(self, profile_ids: Collection[str], identities: Collection[Identifier]) -> int:
        return len(self._matching(profile_ids, identities))


class WarehouseEraser:
    """Events and identity rows in the warehouse (DuckDB or PostgreSQL)."""

    def __init__(self, warehouse: Warehouse) -> None:
        self.name = f"warehouse.{warehouse.dialect}"
        self._warehouse = warehouse

    def erase(self, profile_ids: Collection[str], identities: Collection[Identifier]) -> int:
        return self._warehouse.erase(_ids(identities), sorted(profile_ids))

    def residue(self, profile_ids: Collection[str], identities: Collection[Identifier]) -> int:
        return self._warehouse.residue(_ids(identities), sorted(profile_ids))


class ParquetEraser:
    """Parquet exports of the warehouse in one folder."""

    def __init__(self, folder: Path) -> None:
        self.name = f"parquet:{folder}"
        self._folder = folder

    def erase(self, profile_ids: Collection[str], identities: Collection[Identifier]) -> int:
        return erase_parquet(self._folder, _ids(identities), sorted(profile_ids))

    def residue(self, profile_ids: Collection[str], identities: Collection[Identifier]) -> int:
        return parquet_residue(self._folder, _ids(identities), sorted(profile_ids))


def compact_after_erasures(engine: Engine, warehouse: Warehouse) -> bool:
    """Compact an embedded DuckDB warehouse if an erasure was recorded since its last
    compaction (erasure deletes rows; only a compaction takes them out of the file's
    blocks); whether it did. At start-up, before anything else uses the warehouse."""
    if not isinstance(warehouse, DuckDBWarehouse):
        return False
    with engine.connect() as conn:
        latest = int(conn.scalar(select(func.max(erasures.c.id))) or 0)
    if latest <= warehouse.compacted_through():
        return False
    _log.info("compacting the warehouse: erasures up to #%d leave its file", latest)
    started = time.monotonic()
    try:
        warehouse.compact(latest)
    except (duckdb.Error, OSError):
        # The warehouse is as it was (the copy is dropped): serve it, and try next time.
        _log.exception("compacting the warehouse failed; the erased rows stay in its file")
        return False
    _log.info("warehouse compacted in %.1f s", time.monotonic() - started)
    return True


def standard_erasers(
    engine: Engine, keyring: Keyring, warehouse: Warehouse, parquet_dirs: Sequence[Path] = ()
) -> ErasureRegistry:
    """Erasers for every store of the foundation, segments and privacy."""
    registry = ErasureRegistry([KeyEraser(keyring)])
    for table in PERSONAL_TABLES:
        registry.register(TableEraser(engine, table))
    # The guard's velocity reports name a profile by the id it sent (or an IP).
    registry.register(TableEraser(engine, guard_anomalies, "subject", of="ids"))
    registry.register(QuarantineEraser(engine, keyring))
    registry.register(WarehouseEraser(warehouse))
    for folder in parquet_dirs:
        registry.register(ParquetEraser(folder))
    if engine.dialect.name == "sqlite":
        registry.scrub_with(SQLiteScrubber(engine))
    if keyring.store is not engine:
        registry.scrub_with(SQLiteScrubber(keyring.store, "keys.sqlite"))
    return registry


async def scan_log(log: EventLog, wanted: Sequence[bytes]) -> int:
    """Records of the whole log that hold any of ``wanted`` in the clear (a sealed event
    holds the person's ids and PII only encrypted, so this is 0 with encryption on)."""
    found, after = 0, 0
    while records := await log.read(after, _LOG_PAGE):
        found += sum(1 for r in records if any(n in r.payload for n in wanted))
        after = records[-1].offset
    return found
