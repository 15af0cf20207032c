"""The key store: a file of its own beside an embedded state store, so that collect's key
commits never queue behind the workers' transactions; keys of earlier versions moved in."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from remarket.errors import StorageError
from remarket.privacy.keyring import Keyring
from remarket.storage.state import connect_state, upgrade_state
from remarket.storage.state.keystore import key_store, key_store_path
from remarket.storage.state.tables import pii_key_handles, pii_keys, profiles

AT = datetime(2026, 11, 24, tzinfo=UTC)


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    made = connect_state(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade_state(made)
    return made


def _count(engine: Engine, table: object) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(table)) or 0)  # type: ignore[arg-type]


def test_an_embedded_state_store_keeps_its_keys_in_a_file_beside_it(
    engine: Engine, tmp_path: Path
) -> None:
    assert key_store_path(engine) == tmp_path / "state.keys.db"
    ring = Keyring(engine)
    assert ring.store is key_store(engine) is not engine
    ring.key_for(ring.handle("anonymous_id", "a-1"))
    ring.flush()
    assert _count(ring.store, pii_keys) == 1
    assert _count(engine, pii_keys) == 0


@pytest.mark.parametrize(
    "url", ["sqlite://", "postgresql+psycopg://nobody@127.0.0.1:5432/test"], ids=["memory", "pg"]
)
def test_other_state_stores_keep_their_keys(url: str) -> None:
    state = connect_state(url)  # not connected: the choice is made from the URL
    assert key_store_path(state) is None
    assert key_store(state) is state


def test_a_key_commit_does_not_wait_for_a_writer_of_the_state_store(engine: Engine) -> None:
    """A worker's transaction holds the state store's write lock; a new key commits
    meanwhile (in one file it waited for the lock: the busy timeout is 10 s)."""
    ring = Keyring(engine, sync_commits=True)
    holding, release = threading.Event(), threading.Event()

    def worker() -> None:
        with engine.begin() as conn:
            conn.execute(profiles.insert().values(profile_id="p-1", event_count=1))
            holding.set()
            release.wait(30)

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        assert holding.wait(10)
        ring.key_for(ring.handle("anonymous_id", "a-1"))
        started = time.monotonic()
        ring.flush()
        assert time.monotonic() - started < 2
        assert _count(ring.store, pii_keys) == 1
    finally:
        release.set()
        thread.join()


def _old_keys(engine: Engine, count: int) -> list[tuple[str, str, bytes]]:
    """Keys as an earlier version wrote them: in the state store, some indexed."""
    rows = [(f"h_{n:032x}", f"k{n:015x}", bytes([n % 256]) * 32) for n in range(count)]
    with engine.begin() as conn:
        conn.execute(
            pii_keys.insert(),
            [
                {"handle": h, "key_id": k, "secret": s, "created_at": AT, "indexed": n % 2 == 0}
                for n, (h, k, s) in enumerate(rows)
            ],
        )
        conn.execute(
            pii_key_handles.insert(),
            [{"handle": h, "key_id": k} for n, (h, k, _) in enumerate(rows) if n % 2 == 0],
        )
    return rows


def test_keys_of_an_earlier_version_move_into_the_key_file(engine: Engine) -> None:
    rows = _old_keys(engine, 450)  # more than one IN list of deletions
    ring = Keyring(engine)
    assert _count(engine, pii_keys) == _count(engine, pii_key_handles) == 0
    assert _count(ring.store, pii_keys) == 450 and _count(ring.store, pii_key_handles) == 225
    found = ring.lookup({(h, k) for h, k, _ in rows})
    assert len(found) == 450
    # Erasure finds a moved key, indexed or not.
    assert ring.destroy([rows[0][0], rows[1][0]]) == 2
    assert ring.count([rows[0][0], rows[1][0]]) == 0


def test_a_move_cut_short_after_the_copy_is_completed_at_the_next_start(
    engine: Engine, tmp_path: Path
) -> None:
    rows = _old_keys(engine, 10)
    key_store(engine)  # moved
    _old_keys(engine, 10)  # as if the deletion in the state store had not committed
    again = connect_state(f"sqlite:///{tmp_path / 'state.db'}")  # the next start
    keys = key_store(again)
    assert _count(again, pii_keys) == 0
    assert _count(keys, pii_keys) == len(rows)


def test_a_key_file_of_an_unknown_layout_is_refused(engine: Engine, tmp_path: Path) -> None:
    other = connect_state(f"sqlite:///{tmp_path / 'state.keys.db'}")
    with other.begin() as conn:
        conn.exec_driver_sql("PRAGMA user_version = 99")
    other.dispose()
    with pytest.raises(StorageError, match="layout 99"):
        key_store(engine)
