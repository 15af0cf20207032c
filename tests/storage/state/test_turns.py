"""Turns at the embedded state store's write lock: a waiting writer is not starved."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from sqlalchemy import text

from remarket.storage.state import connect_state
from remarket.storage.state.turns import step_aside, write_turn


def test_a_writer_taking_a_turn_gets_in_between_a_long_writers_transactions(
    tmp_path: Path,
) -> None:
    engine = connect_state(f"sqlite:///{tmp_path / 'state.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (n INTEGER)"))
    stop = threading.Event()
    rounds = 0

    def long_writer() -> None:
        # Holds SQLite's write lock 50 ms at a time, with only its step aside in between:
        # a waiter in SQLite's own busy loop (sleeps of up to 100 ms) would rarely see a gap.
        nonlocal rounds
        while not stop.is_set():
            with write_turn(engine), engine.begin() as conn:
                conn.execute(text("INSERT INTO t VALUES (1)"))
                time.sleep(0.05)
            rounds += 1
            step_aside()

    writer = threading.Thread(target=long_writer)
    writer.start()
    try:
        time.sleep(0.3)  # the long writer is well into its rounds
        waits = []
        for _ in range(5):
            start = time.monotonic()
            with write_turn(engine), engine.begin() as conn:
                conn.execute(text("INSERT INTO t VALUES (2)"))
            waits.append(time.monotonic() - start)
            time.sleep(0.02)
    finally:
        stop.set()
        writer.join()
    assert rounds >= 5  # the long writer kept going meanwhile
    # At most about one of its transactions each (50 ms), never its whole run.
    assert max(waits) < 0.4, waits
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM t WHERE n = 2")).scalar() == 5
    engine.dispose()


def test_a_turn_is_nothing_without_a_database_file() -> None:
    engine = connect_state("sqlite://")
    with write_turn(engine), write_turn(engine):  # no file to queue on: no wait at all
        pass
    engine.dispose()
