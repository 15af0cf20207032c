"""Keys are as durable as the events sealed under them: with the embedded log fsyncing
every group (``log_fsync`` "full"), the keys' commits on SQLite fsync too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, select

from remarket.privacy.keyring import Keyring
from remarket.storage.state import connect_state, upgrade_state
from remarket.storage.state.keystore import key_store
from remarket.storage.state.tables import pii_key_handles, pii_keys


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    made = connect_state(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade_state(made)
    return made


def _synchronous_at_key_inserts(engine: Engine, sync_commits: bool) -> list[int]:
    """SQLite's ``synchronous`` on the connection that inserts the keys, as it inserts."""
    seen: list[int] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith('INSERT INTO "pii_keys"'):
            seen.append(cursor.connection.execute("PRAGMA synchronous").fetchone()[0])

    keys = key_store(engine)
    event.listen(keys, "before_cursor_execute", before)
    try:
        ring = Keyring(engine, sync_commits=sync_commits)
        ring.key_for(ring.handle("anonymous_id", "a-1"))
        ring.flush()
    finally:
        event.remove(keys, "before_cursor_execute", before)
    return seen


def test_key_commits_fsync_when_the_log_does(engine: Engine) -> None:
    assert _synchronous_at_key_inserts(engine, sync_commits=True) == [2]  # FULL
    with key_store(engine).connect() as conn:  # the pooled connection is back to its usual mode
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert len(conn.execute(select(pii_keys)).all()) == 1


def test_key_commits_keep_the_state_stores_mode_otherwise(engine: Engine) -> None:
    assert _synchronous_at_key_inserts(engine, sync_commits=False) == [1]  # NORMAL


def test_indexing_enters_every_pending_key_a_chunk_per_transaction(engine: Engine) -> None:
    """Collect's key commits wait for the index's transactions: each is kept short."""
    ring = Keyring(engine)
    for n in range(1_200):
        ring.key_for(ring.handle("anonymous_id", f"a-{n}"))
    ring.flush()
    commits: list[int] = []
    event.listen(ring.store, "commit", lambda conn: commits.append(1))
    assert ring.index_pending() == 1_200
    assert len(commits) == 3  # 500 + 500 + 200
    with ring.store.connect() as conn:
        assert len(conn.execute(select(pii_key_handles)).all()) == 1_200
    assert ring.index_pending() == 0
