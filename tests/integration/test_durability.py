"""Acknowledged events survive SIGKILL of the server: in the log and the warehouse exactly once."""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from remarket.storage.log.sqlite import SQLiteLog
from remarket.storage.warehouse.duckdb import DuckDBWarehouse

if TYPE_CHECKING:
    from tests.integration.conftest import ServerProcess

pytestmark = pytest.mark.slow

BATCH_SIZE = 100
SENDERS = 8
LOAD_S = 3.0
ACKED = "acked"
NO_REPLY = "no reply"


def _message_id(batch: int, i: int) -> str:
    return f"dur-{batch:06d}-{i:03d}"


def _batch_body(batch: int) -> bytes:
    events = [
        {
            "type": "track",
            "event": "Load Tested",
            # Spread over many people: a few hundred events of one person within a minute
            # would be a velocity anomaly, and this test is about durability.
            "anonymousId": f"dur-anon-{(batch * BATCH_SIZE + i) % 10_007}",
            "messageId": _message_id(batch, i),
            "timestamp": "2024-05-01T12:00:00Z",
            "properties": {"batch": batch, "i": i},
        }
        for i in range(BATCH_SIZE)
    ]
    return json.dumps({"batch": events}).encode()


def _post(client: httpx.Client, batch: int) -> httpx.Response:
    return client.post(
        "/v1/batch", content=_batch_body(batch), headers={"Content-Type": "application/json"}
    )


@dataclass
class _Load:
    """Senders that post new batches until stopped, recording each batch's outcome."""

    server: ServerProcess
    outcomes: dict[int, str] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    _numbers: itertools.count[int] = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _next(self) -> int:
        with self._lock:
            batch = next(self._numbers)
            self.outcomes[batch] = "pending"
            return batch

    def _record(self, batch: int, outcome: str) -> None:
        with self._lock:
            self.outcomes[batch] = outcome

    def send(self) -> None:
        auth = (self.server.write_key, "")
        with httpx.Client(base_url=self.server.base_url, auth=auth, timeout=30.0) as client:
            while not self.stop.is_set():
                batch = self._next()
                try:
                    response = _post(client, batch)
                except httpx.TransportError:
                    self._record(batch, NO_REPLY)
                    continue
                if response.is_success:
                    body = response.json()
                    ok = body["accepted"] == BATCH_SIZE and body["duplicates"] == 0
                    self._record(batch, ACKED if ok else f"2xx but {body}")
                else:
                    self._record(batch, f"status {response.status_code}")

    def with_outcome(self, outcome: str) -> list[int]:
        with self._lock:
            return sorted(b for b, o in self.outcomes.items() if o == outcome)


def _log_message_ids(data_dir: Path) -> Counter[str]:
    async def read_all() -> Counter[str]:
        log = SQLiteLog(data_dir / "log.db")
        ids: Counter[str] = Counter()
        after = 0
        try:
            while records := await log.read(after, 50_000):
                ids.update(json.loads(r.payload)["messageId"] for r in records)
                after = records[-1].offset
        finally:
            await log.close()
        return ids

    return asyncio.run(read_all())


def _warehouse_message_ids(data_dir: Path) -> Counter[str]:
    warehouse = DuckDBWarehouse(data_dir / "warehouse.duckdb")
    try:
        rows = warehouse.query("SELECT message_id, count(*) FROM events GROUP BY message_id")
    finally:
        warehouse.close()
    return Counter({str(m): int(n) for m, n in rows})


def _ids_of(batches: Iterable[int]) -> list[str]:
    return [_message_id(b, i) for b in batches for i in range(BATCH_SIZE)]


def _not_exactly_once(stored: Counter[str], ids: Iterable[str]) -> dict[str, int]:
    return {m: stored[m] for m in ids if stored[m] != 1}


def _resend(server: ServerProcess, batches: list[int]) -> dict[int, dict[str, int]]:
    """Post every batch again; return each batch's counts (all must be 2xx)."""

    def one(client: httpx.Client, chunk: list[int]) -> dict[int, dict[str, int]]:
        replies = {}
        for batch in chunk:
            response = _post(client, batch)
            assert response.status_code == 200, response.text
            body = response.json()
            replies[batch] = {"accepted": body["accepted"], "duplicates": body["duplicates"]}
        return replies

    auth = (server.write_key, "")
    replies: dict[int, dict[str, int]] = {}
    clients = [
        httpx.Client(base_url=server.base_url, auth=auth, timeout=30.0) for _ in range(SENDERS)
    ]
    try:
        with ThreadPoolExecutor(SENDERS) as pool:
            futures = [
                pool.submit(one, client, batches[n::SENDERS]) for n, client in enumerate(clients)
            ]
            for future in futures:
                replies.update(future.result())
    finally:
        for client in clients:
            client.close()
    return replies


def _stored_after_drain(server: ServerProcess) -> tuple[Counter[str], Counter[str]]:
    """Wait for the workers, stop the server (DuckDB allows one process) and read both stores."""
    server.wait_for_lag_zero(timeout=60)
    server.stop()
    return _log_message_ids(server.data_dir), _warehouse_message_ids(server.data_dir)


def test_acknowledged_batches_survive_sigkill_exactly_once(
    server: ServerProcess,
) -> None:
    load = _Load(server)
    with ThreadPoolExecutor(SENDERS) as pool:
        senders = [pool.submit(load.send) for _ in range(SENDERS)]
        try:
            deadline = time.monotonic() + 30
            while len(load.with_outcome(ACKED)) < 10:
                assert time.monotonic() < deadline, f"no load got through: {server.log_tail()}"
                assert not any(f.done() for f in senders), [f.exception() for f in senders]
                time.sleep(0.01)
            stop_at = time.monotonic() + LOAD_S
            while time.monotonic() < stop_at:
                assert not any(f.done() for f in senders), [f.exception() for f in senders]
                time.sleep(0.05)
            server.kill()  # mid-load: every sender has a request in flight or about to be
        finally:
            load.stop.set()
        wait(senders)
        for sender in senders:
            sender.result()

    acked = load.with_outcome(ACKED)
    unanswered = load.with_outcome(NO_REPLY)
    attempted = sorted(load.outcomes)
    odd = {b: o for b, o in load.outcomes.items() if o not in (ACKED, NO_REPLY)}
    assert odd == {}, "every batch is acknowledged in full or gets no reply"
    assert unanswered, "the kill must interrupt the load"

    server.start()  # same data dir; nothing is resent yet
    log_ids, warehouse_ids = _stored_after_drain(server)

    assert _not_exactly_once(log_ids, _ids_of(acked)) == {}, "acked event lost or doubled (log)"
    assert _not_exactly_once(warehouse_ids, _ids_of(acked)) == {}, "(warehouse)"
    assert warehouse_ids == log_ids, "the warehouse holds every logged event exactly once"
    assert max(log_ids.values()) == 1, "an unanswered event is there at most once"
    assert set(log_ids) <= set(_ids_of(attempted)), "only events that were sent"

    # Dedupe survives the restart: the collector re-learned the messageIds from the log.
    server.start()
    replies = _resend(server, attempted)
    for batch in acked:
        assert replies[batch] == {"accepted": 0, "duplicates": BATCH_SIZE}, batch
    newly = sum(r["accepted"] for r in replies.values())
    log_after, warehouse_after = _stored_after_drain(server)

    assert _not_exactly_once(log_after, _ids_of(attempted)) == {}, "every batch once (log)"
    assert _not_exactly_once(warehouse_after, _ids_of(attempted)) == {}, "(warehouse)"
    assert newly == sum(1 for m in _ids_of(attempted) if m not in log_ids), "only the missing"
    for mid, count in log_ids.items():
        assert log_after[mid] == count, "counts of events already stored do not change"


def test_duplicate_is_not_acknowledged_before_the_original_is_durable(
    server: ServerProcess,
) -> None:
    """A client retry racing its own timed-out request must not get a 2xx for events that
    are not yet in the log: if the server dies before the original commits, they are lost."""
    blocker = sqlite3.connect(server.data_dir / "log.db", isolation_level=None, timeout=5)
    released = False
    try:
        blocker.execute("BEGIN IMMEDIATE")  # the log writer now waits: appends are in flight
        auth = (server.write_key, "")
        with (
            httpx.Client(base_url=server.base_url, auth=auth, timeout=60.0) as client,
            ThreadPoolExecutor(2) as pool,
        ):
            first: Future[httpx.Response] = pool.submit(_post, client, 0)
            retry: Future[httpx.Response] = pool.submit(_post, client, 0)
            done, pending = wait([first, retry], timeout=10, return_when="FIRST_COMPLETED")
            answered = [f.result() for f in done if f.exception() is None]
            server.kill()
            blocker.execute("ROLLBACK")
            released = True
            wait(pending)
    finally:
        if not released:
            blocker.execute("ROLLBACK")
        blocker.close()

    stored = _log_message_ids(server.data_dir)  # what a restarted server would find
    acknowledged = [r.json() for r in answered if r.is_success]
    missing = [m for m in _ids_of([0]) if stored[m] != 1]
    assert not (acknowledged and missing), (
        f"a 2xx {acknowledged} was given for {len(missing)} events that never reached the log"
    )


def test_health_lag_reaches_zero_after_restart_when_workers_are_caught_up(
    server: ServerProcess,
) -> None:
    """A crash between a sink's commit and the log's consumer-offset commit must not leave
    /healthz reporting lag forever once the workers have applied everything."""
    with httpx.Client(base_url=server.base_url, auth=(server.write_key, "")) as client:
        assert _post(client, 0).status_code == 200
    server.wait_for_lag_zero()
    server.stop()
    # The state a SIGKILL right after the sinks' own commits leaves behind.
    with sqlite3.connect(server.data_dir / "log.db") as conn:
        conn.execute("UPDATE consumers SET offset = offset - 10")
    conn.close()

    server.start()
    health = server.wait_for_lag_zero(timeout=10)

    assert health["lag"] == {
        "warehouse": 0,
        "profiles": 0,
        "segments": 0,
        "consent": 0,
        "journeys": 0,
    }
