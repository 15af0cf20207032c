"""Per-store erasers: rows found by profile id or by the identifier values a person sent."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from remarket.privacy.erasers import (
    PERSONAL_TABLES,
    TableEraser,
    compact_after_erasures,
    standard_erasers,
)
from remarket.privacy.erasure import Erasure, ErasureRegistry
from remarket.privacy.keyring import Keyring
from remarket.schema.events import Track
from remarket.storage.state import connect_state, upgrade_state
from remarket.storage.state.tables import (
    erasures,
    guard_anomalies,
    metadata,
    pii_key_handles,
    pii_keys,
)
from remarket.storage.warehouse import DuckDBWarehouse

AT = datetime(2026, 11, 1, tzinfo=UTC)


def _anomaly(subject: str) -> dict[str, object]:
    return {
        "kind": "profile",
        "subject": subject,
        "source_id": "s1",
        "window_start": AT,
        "baseline": 3,
        "threshold": 300,
        "detected_at": AT,
    }


def test_guard_reports_are_erased_by_the_ids_the_person_sent(state_engine: Engine) -> None:
    with state_engine.begin() as conn:
        conn.execute(
            guard_anomalies.insert(),
            [_anomaly("u-gone"), _anomaly("a-gone"), _anomaly("u-kept"), _anomaly("p_gone")],
        )
    eraser = TableEraser(state_engine, guard_anomalies, "subject", of="ids")
    person = [("user_id", "u-gone"), ("anonymous_id", "a-gone")]
    assert eraser.residue(["p_gone"], person) == 2
    assert eraser.erase(["p_gone"], person) == 2
    assert eraser.residue(["p_gone"], person) == 0
    with state_engine.connect() as conn:
        left = sorted(conn.scalars(select(guard_anomalies.c.subject)))
    # Another person's report stays; the profile id is not an id a client sends.
    assert left == ["p_gone", "u-kept"]


def test_every_state_table_naming_a_profile_is_erased() -> None:
    # A table added later with a profile_id column and no eraser fails here.
    naming = {t.name for t in metadata.sorted_tables if "profile_id" in t.c}
    assert naming - {t.name for t in PERSONAL_TABLES} == set()


def test_scrubbing_empties_the_write_ahead_log_and_gives_way_to_writers(tmp_path: Path) -> None:
    """A truncating checkpoint holds the write lock while it waits for readers: it waits
    briefly, so that a transaction that read and then writes is not stalled (it would
    fail with "database is locked" after its own 10 s), and succeeds once it is done.
    Keys are in the key file beside the state store: its scrubber is registered too."""
    engine = connect_state(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade_state(engine)
    wal = tmp_path / "state.keys.db-wal"
    ring = Keyring(engine)
    assert ring.store is not engine
    handle = ring.handle("anonymous_id", "a-1")
    ring.key_for(handle)
    ring.flush()
    (secret,) = _secrets(ring.store)
    ring.destroy([handle])
    assert secret in wal.read_bytes()  # the page as it was, before the deletion
    (scrubber,) = [
        s
        for s in standard_erasers(engine, ring, DuckDBWarehouse(None)).scrubbers
        if s.name == "keys.sqlite"
    ]
    with ring.store.connect() as busy:
        busy.exec_driver_sql("BEGIN")
        busy.execute(select(pii_keys.c.key_id)).all()  # a reader ...
        started = time.monotonic()
        assert scrubber.scrub() is False
        assert time.monotonic() - started < 5
        busy.execute(
            pii_key_handles.insert(), [{"handle": "h_x", "key_id": "k"}]
        )  # ... that writes
        busy.exec_driver_sql("COMMIT")
    assert scrubber.scrub() is True
    assert wal.stat().st_size == 0
    assert secret not in (tmp_path / "state.keys.db").read_bytes()
    engine.dispose()


def _secrets(engine: Engine) -> list[bytes]:
    with engine.connect() as conn:
        return [bytes(secret) for secret in conn.scalars(select(pii_keys.c.secret))]


def test_compaction_runs_once_per_erasure_and_a_failure_keeps_the_warehouse(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = connect_state(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade_state(engine)
    warehouse = DuckDBWarehouse(tmp_path / "warehouse.duckdb")
    viewed = Track(event="Viewed", anonymous_id="a-1", timestamp=AT, received_at=AT)
    warehouse.write_events("w", [(1, viewed)], 1, expected=0)
    assert compact_after_erasures(engine, warehouse) is False  # no erasure yet
    with engine.begin() as conn:
        conn.execute(
            erasures.insert().values(
                profile_hash="h", actor="t", requested_at=AT, completed_at=AT, counts={}
            )
        )
    (tmp_path / "warehouse.duckdb.compacting").mkdir()  # in the way of the copy

    assert compact_after_erasures(engine, warehouse) is False
    assert "compacting the warehouse failed" in caplog.text
    assert warehouse.count_events() == 1 and warehouse.compacted_through() == 0

    (tmp_path / "warehouse.duckdb.compacting").rmdir()
    assert compact_after_erasures(engine, warehouse) is True
    assert warehouse.compacted_through() == 1 and warehouse.count_events() == 1
    assert compact_after_erasures(engine, warehouse) is False  # done for that erasure
    warehouse.close()
    engine.dispose()


def test_erasure_runs_every_scrubber_and_names_the_busy_ones(
    state_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[str] = []

    class Scrubbed:
        def __init__(self, name: str, done: bool) -> None:
            self.name, self._done = name, done

        def scrub(self) -> bool:
            ran.append(self.name)
            return self._done

    registry = ErasureRegistry()
    registry.scrub_with(Scrubbed("busy-store", False))
    registry.scrub_with(Scrubbed("quiet-store", True))
    erasure = Erasure(state_engine, Keyring(state_engine), registry, pii_fields=["email"])
    assert erasure.scrub() == ["busy-store"]
    assert ran == ["busy-store", "quiet-store"]
    assert "busy-store was busy" in caplog.text
