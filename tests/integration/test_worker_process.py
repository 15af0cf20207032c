"""`remarket serve` runs its workers in a child process that owns the warehouse, answers
the API's reads through it, and never outlives the server; split, in two children (the
warehouse's part and the people's part, which reaches the warehouse through the first)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.integration.conftest import start_new_server

if TYPE_CHECKING:
    from tests.integration.conftest import ServerProcess

pytestmark = pytest.mark.slow


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc: no extra dependency)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        # Field 4 is the parent pid; the name (field 2) may hold spaces, so split after ')'.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _workers_of(server: ServerProcess) -> list[int]:
    return [
        pid
        for pid in _children(server.pid)
        if b"worker" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    ]


def _worker_of(server: ServerProcess) -> int:
    workers = _workers_of(server)
    assert len(workers) == 1, f"expected one worker process, found {workers}"
    return workers[0]


def _where(pid: int) -> str:
    """What a live process's threads wait in (kernel wait channels), for a failure message."""
    found = []
    for task in sorted(Path(f"/proc/{pid}/task").glob("*")):
        try:
            name = (task / "comm").read_text().strip()
            found.append(f"{name}:{(task / 'wchan').read_text().strip() or '-'}")
        except OSError:
            continue
    return f"{pid} [{', '.join(found)}]"


def _wait_dead(pids: list[int], timeout: float = 30.0) -> list[int]:
    """The processes still alive after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


@pytest.fixture
def split(tmp_path: Path) -> Iterator[ServerProcess]:
    server = start_new_server(tmp_path, {"REMARKET_WORKER_SPLIT": "true"})
    try:
        yield server
    finally:
        server.stop()


def _send(server: ServerProcess, anonymous_id: str, count: int) -> None:
    events = [
        {
            "type": "track",
            "event": "Viewed",
            "anonymousId": anonymous_id,
            "messageId": f"{anonymous_id}-{i}",
        }
        for i in range(count)
    ]
    response = httpx.post(
        f"{server.base_url}/v1/batch", json={"batch": events}, auth=(server.write_key, "")
    )
    assert response.status_code == 200, response.text


def _events_of(server: ServerProcess, anonymous_id: str) -> list[str]:
    with server.api() as api:
        profile = api.get("/v1/profiles", params={"anonymous_id": anonymous_id})
        assert profile.status_code == 200, profile.text
        page = api.get(f"/v1/profiles/{profile.json()['profile_id']}/events?limit=100")
    assert page.status_code == 200, page.text
    return sorted(e["message_id"] for e in page.json()["events"])


def test_the_api_reads_the_warehouse_the_worker_process_owns(server: ServerProcess) -> None:
    worker = _worker_of(server)
    assert worker != server.pid
    _send(server, "wp-reader", 3)
    server.wait_for_lag_zero()
    assert _events_of(server, "wp-reader") == ["wp-reader-0", "wp-reader-1", "wp-reader-2"]
    # The worker process's gauges are not this process's: /metrics reads the lag itself.
    with server.api() as api:
        text = api.get("/metrics").text
    for consumer in ("warehouse", "profiles", "segments", "consent", "journeys"):
        assert f'remarket_log_lag{{consumer="{consumer}"}} 0.0' in text


def test_the_worker_process_dies_with_a_killed_server_and_a_restart_takes_over(
    server: ServerProcess,
) -> None:
    _send(server, "wp-restart", 2)
    server.wait_for_lag_zero()
    worker = _worker_of(server)
    server.kill()
    alive = _wait_dead([worker])
    assert not alive, (
        f"the worker process outlived its SIGKILLed server: {_where(worker)}\n{server.log_tail()}"
    )

    server.start()  # the new worker process must be able to open the warehouse file
    _send(server, "wp-restart", 3)
    server.wait_for_lag_zero()
    assert _events_of(server, "wp-restart") == [f"wp-restart-{i}" for i in range(3)]


def test_erasure_reaches_the_warehouse_the_worker_process_owns(server: ServerProcess) -> None:
    _send(server, "wp-erased", 4)
    _send(server, "wp-kept", 1)
    server.wait_for_lag_zero()
    with server.api() as api:
        erased = api.delete("/v1/profiles", params={"anonymous_id": "wp-erased"})
        assert erased.status_code == 200, erased.text
        assert erased.json()["counts"]["warehouse.duckdb"] >= 4  # through the socket
        gone = api.get("/v1/profiles", params={"anonymous_id": "wp-erased"})
        assert gone.status_code == 404
        stats = api.get("/v1/stats").json()
    assert stats["warehouse_events"] == 1
    assert _events_of(server, "wp-kept") == ["wp-kept-0"]


_BUYERS = {
    "name": "buyers",
    "entry": "o",
    "nodes": [{"id": "o", "type": "performed", "event": "Order Completed"}],
}


def _segment_size(server: ServerProcess, name: str, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    with server.api() as api:
        while time.monotonic() < deadline:
            body = api.get(f"/v1/segments/{name}").json()
            if body["status"] == "live":
                return int(body["size"])
            time.sleep(0.05)
    raise AssertionError(f"segment {name} did not go live")


def test_split_workers_run_both_parts_and_every_event_lands_once(split: ServerProcess) -> None:
    assert len(_workers_of(split)) == 2
    _send(split, "sp-anon", 3)
    identify = {
        "type": "identify",
        "anonymousId": "sp-anon",
        "userId": "sp-user",
        "messageId": "sp-identify",
        "traits": {"plan": "pro"},
    }
    orders = [
        {"type": "track", "event": "Order Completed", "userId": f"sp-buyer-{i}"}
        | {"messageId": f"sp-order-{i}"}
        for i in range(4)
    ]
    response = httpx.post(
        f"{split.base_url}/v1/batch",
        json={"batch": [identify, *orders]},
        auth=(split.write_key, ""),
    )
    assert response.status_code == 200, response.text
    split.wait_for_lag_zero()
    # Events in the warehouse (the events part), on the profile that identify made (the
    # people part), read by the API through the warehouse's owner.
    assert _events_of(split, "sp-anon") == ["sp-anon-0", "sp-anon-1", "sp-anon-2", "sp-identify"]
    with split.api() as api:
        profile = api.get("/v1/profiles", params={"user_id": "sp-user"}).json()
        created = api.post("/v1/segments", json=_BUYERS)
    assert profile["traits"] == {"plan": "pro"}
    assert created.status_code == 201, created.text
    # The people part backfills from the warehouse that the other process serves it.
    assert _segment_size(split, "buyers") == 4
    orders = [
        {"type": "track", "event": "Order Completed", "userId": "sp-buyer-late"}
        | {"messageId": "sp-order-late"}
    ]
    response = httpx.post(
        f"{split.base_url}/v1/batch", json={"batch": orders}, auth=(split.write_key, "")
    )
    assert response.status_code == 200, response.text
    deadline = time.monotonic() + 30
    while _segment_size(split, "buyers") != 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _segment_size(split, "buyers") == 5


def test_split_workers_die_with_a_killed_server_and_a_restart_takes_over(
    split: ServerProcess,
) -> None:
    workers = _workers_of(split)
    assert len(workers) == 2
    split.kill()
    alive = _wait_dead(workers)
    assert not alive, (
        f"worker processes outlived their SIGKILLed server: {list(map(_where, alive))}"
    )
    split.start()
    _send(split, "sp-restart", 2)
    split.wait_for_lag_zero()
    assert _events_of(split, "sp-restart") == ["sp-restart-0", "sp-restart-1"]
