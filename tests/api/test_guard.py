"""Guard API and the guard at the HTTP edge: 429 with Retry-After, block lists, bots kept
out of profiles and segments but counted, velocity anomalies quarantined and reported."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from remarket.api import create_app
from remarket.config import Settings
from tests.api.harness import Server

PROXY = "198.51.100.10"
CRAWLER = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "var",
        log_fsync="normal",
        worker_poll_interval_s=0.01,
        # Slow refills, so that the time the test takes does not change the answers.
        guard_key_events_per_s=1,
        guard_key_burst=100,
        guard_ip_events_per_s=0.5,
        guard_ip_burst=40,
        guard_trusted_proxies=[f"{PROXY}/32"],
        guard_velocity_factor=5,
        guard_velocity_floor=2,
        guard_velocity_ip_floor=1_000,
    )


@pytest.fixture
def server(settings: Settings) -> Iterator[Server]:
    # The peer is a reverse proxy, so X-Forwarded-For picks the client of each request.
    with TestClient(create_app(settings), client=(PROXY, 40_000)) as client:
        yield Server.of(client)


def events(n: int, user: str = "u1", **fields: Any) -> dict[str, Any]:
    return {"batch": [{"type": "track", "event": "Viewed", "userId": user, **fields}] * n}


def send_from(server: Server, ip: str, body: Any, path: str = "/v1/batch", **headers: str) -> Any:
    return server.send(path, body, headers={"X-Forwarded-For": f"10.0.0.1, {ip}", **headers})


def bearer(server: Server, role: str) -> dict[str, str]:
    _, key = server.runtime.keys.create(role, role)
    return {"Authorization": f"Bearer {key}"}


def test_an_ip_over_its_rate_gets_429_with_retry_after(server: Server) -> None:
    assert send_from(server, "192.0.2.1", events(40, "a")).status_code == 200
    reply = send_from(server, "192.0.2.1", events(5, "b"))
    assert reply.status_code == 429
    assert 9 <= int(reply.headers["Retry-After"]) <= 10  # 5 events at 0.5/s
    assert reply.headers["content-type"] == "application/problem+json"
    assert (reply.json()["code"], reply.json()["field"]) == ("rate_limited", "ip")
    assert send_from(server, "192.0.2.2", events(5, "c")).status_code == 200  # another IP
    single = send_from(server, "192.0.2.1", events(1, "d")["batch"][0], "/v1/track")
    assert single.status_code == 429 and "Retry-After" in single.headers


def test_a_write_key_over_its_rate_gets_429_with_retry_after(server: Server) -> None:
    for i in range(2):
        assert send_from(server, f"192.0.2.{10 + i}", events(40, f"k{i}")).status_code == 200
    reply = send_from(server, "192.0.2.20", events(40, "k3"))  # 120 > the key's burst of 100
    assert reply.status_code == 429
    assert 15 <= int(reply.headers["Retry-After"]) <= 20  # 20 tokens short at 1/s
    assert reply.json()["field"] == "Authorization"


def test_block_lists_of_ipv4_and_ipv6_networks(server: Server) -> None:
    for network in ("203.0.113.0/24", "2001:db8::/32"):
        created = server.client.post(
            "/v1/guard/blocks", json={"network": network, "reason": "abuse"}, headers=server.admin
        )
        assert created.status_code == 201, created.text
    listed = server.client.get("/v1/guard/blocks", headers=server.admin).json()
    assert [b["network"] for b in listed] == ["203.0.113.0/24", "2001:db8::/32"]
    for ip in ("203.0.113.200", "2001:db8:42::1"):
        reply = send_from(server, ip, events(1))
        assert reply.status_code == 403
        assert (reply.json()["code"], reply.json()["field"]) == ("blocked", "ip")
    assert send_from(server, "203.0.114.1", events(1)).status_code == 200
    duplicate = server.client.post(
        "/v1/guard/blocks", json={"network": "203.0.113.9/24"}, headers=server.admin
    )
    assert duplicate.status_code == 409
    bad = server.client.post("/v1/guard/blocks", json={"network": "nope"}, headers=server.admin)
    assert (bad.status_code, bad.json()["field"]) == (400, "network")
    lifted = server.client.delete(f"/v1/guard/blocks/{listed[0]['id']}", headers=server.admin)
    assert lifted.status_code == 204
    assert send_from(server, "203.0.113.200", events(1)).status_code == 200
    totals = server.client.get("/v1/guard", headers=server.admin).json()["totals"]
    assert totals["blocked"] == 2


def test_guard_scopes(server: Server) -> None:
    analyst = bearer(server, "analyst")
    assert server.client.get("/v1/guard", headers=analyst).status_code == 200
    refused = server.client.post("/v1/guard/blocks", json={"network": "1.2.3.4"}, headers=analyst)
    assert refused.status_code == 403
    marketer = bearer(server, "marketer")
    assert server.client.get("/v1/guard/anomalies", headers=marketer).status_code == 403


def _members(server: Server, segment: str) -> list[str]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        body = server.client.get(f"/v1/segments/{segment}", headers=server.admin).json()
        if body["status"] == "live":
            break
        time.sleep(0.02)
    server.drain()
    members = server.client.get(f"/v1/segments/{segment}/members", headers=server.admin).json()
    return sorted(m["profile_id"] for m in members["members"])


def test_bots_are_counted_but_kept_out_of_profiles_segments_and_warehouse(
    server: Server,
) -> None:
    viewers = {
        "name": "viewers",
        "entry": "v",
        "nodes": [{"id": "v", "type": "performed", "event": "Viewed"}],
    }
    assert server.client.post("/v1/segments", json=viewers, headers=server.admin).is_success
    send_from(server, "192.0.2.30", events(1, "person"))
    send_from(server, "192.0.2.31", events(2, "crawler"), **{"User-Agent": CRAWLER})
    headless = "Mozilla/5.0 (X11; Linux x86_64) HeadlessChrome/120.0.0.0 Safari/537.36"
    send_from(server, "192.0.2.32", events(1, "headless", context={"userAgent": headless}))
    server.drain()
    lookup = server.client.get("/v1/profiles", params={"user_id": "person"}, headers=server.admin)
    person = lookup.json()["profile_id"]
    for bot in ("crawler", "headless"):
        missing = server.client.get("/v1/profiles", params={"user_id": bot}, headers=server.admin)
        assert missing.status_code == 404
    assert _members(server, "viewers") == [person]
    viewed = server.runtime.warehouse.query("SELECT user_id FROM events WHERE event = 'Viewed'")
    assert viewed == [("person",)]
    totals = server.client.get("/v1/guard", headers=server.admin).json()["totals"]
    assert (totals["bot_crawler"], totals["bot_headless"]) == (2, 1)
    metrics = server.client.get("/metrics", headers=server.admin).text
    assert 'remarket_guard_events_total{kind="bot_crawler"}' in metrics


def test_a_velocity_anomaly_is_quarantined_and_reported(server: Server) -> None:
    reply = send_from(server, "192.0.2.40", events(15, "flood"))
    # Threshold: factor 5 x floor 2 = 10 events in the window; the 5 past it are held.
    assert (reply.json()["accepted"], reply.json()["quarantined"]) == (10, 5)
    assert {e["reason"] for e in reply.json()["errors"]} == {"velocity_anomaly"}
    held = server.client.get("/v1/quarantine", headers=server.admin).json()["entries"]
    assert [e["reason"] for e in held] == ["velocity_anomaly"] * 5
    report = server.client.get("/v1/guard/anomalies", headers=server.admin).json()
    (anomaly,) = report["anomalies"]
    assert (anomaly["kind"], anomaly["subject"], anomaly["threshold"]) == ("profile", "flood", 10)
    status = server.client.get("/v1/guard", headers=server.admin).json()
    assert status["totals"]["anomaly"] == 5
    assert status["settings"]["velocity_factor"] == 5
    assert status["settings"]["ip_rate_limit"] == {"events_per_s": 0.5, "burst": 40}
    replayed = server.client.post(
        "/v1/quarantine/replay", json={"ids": None}, headers=server.admin
    ).json()
    assert len(replayed["replayed"]) == 5  # an operator vouches: no velocity check


def test_historical_imports_skip_the_velocity_check(server: Server) -> None:
    reply = send_from(server, "192.0.2.41", events(15, "loyal"), "/v1/import")
    assert (reply.json()["accepted"], reply.json()["quarantined"]) == (15, 0)
