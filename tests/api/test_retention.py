"""Retention API: rules per source and event type (retention:read/write) and running the job."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from tests.api.harness import Server


def bearer(server: Server, role: str) -> dict[str, str]:
    _, key = server.runtime.keys.create(role, role)
    return {"Authorization": f"Bearer {key}"}


def event(kind: str, days_ago: int) -> dict[str, object]:
    at = datetime.now(UTC) - timedelta(days=days_ago)
    body: dict[str, object] = {
        "type": kind,
        "userId": "u1",
        "messageId": str(uuid.uuid4()),
        "timestamp": at.isoformat(),
    }
    if kind == "track":
        body["event"] = f"E{days_ago}"
    return body


def test_rules_then_run_deletes_only_expired_events(server: Server) -> None:
    source_id = server.runtime.sources.list()[0].id
    rules = [
        {"source_id": source_id, "event_type": "track", "days": 30},
        {"days": 400},  # any source, any type
    ]
    for rule in rules:
        reply = server.client.put("/v1/retention/rules", json=rule, headers=server.admin)
        assert reply.status_code == 200, reply.text
    batch = [event("track", 90), event("track", 5), event("page", 90), event("page", 500)]
    assert server.send("/v1/batch", {"batch": batch}).json()["accepted"] == 4
    server.drain()
    run = server.client.post("/v1/retention/run", headers=server.admin)
    assert run.status_code == 200, run.text
    assert run.json()["warehouse"] == 2  # the 90-day track and the 500-day page
    kept = server.runtime.warehouse.query("SELECT type, event FROM events ORDER BY type")
    assert kept == [("page", None), ("track", "E5")]
    shown = server.client.get("/v1/retention", headers=bearer(server, "analyst")).json()
    assert [(r["source_id"], r["event_type"], r["days"]) for r in shown["rules"]] == [
        (source_id, "track", 30),
        ("*", "*", 400),
    ]
    assert shown["default_days"] is None


def test_retention_scopes_and_bad_rules(server: Server) -> None:
    analyst = bearer(server, "analyst")
    assert (
        server.client.put("/v1/retention/rules", json={"days": 1}, headers=analyst).status_code
        == 403
    )
    assert server.client.post("/v1/retention/run", headers=analyst).status_code == 403
    assert server.client.get("/v1/retention", headers=bearer(server, "viewer")).status_code == 403
    unknown = server.client.put(
        "/v1/retention/rules", json={"source_id": "nope", "days": 3}, headers=server.admin
    )
    assert (unknown.status_code, unknown.json()["field"]) == (400, "source_id")
    bad_type = server.client.put(
        "/v1/retention/rules", json={"event_type": "purchase", "days": 3}, headers=server.admin
    )
    assert (bad_type.status_code, bad_type.json()["field"]) == (400, "event_type")
    assert server.client.delete("/v1/retention/rules/99", headers=server.admin).status_code == 404


def test_deleting_a_rule(server: Server) -> None:
    rule = server.client.put("/v1/retention/rules", json={"days": 7}, headers=server.admin).json()
    assert (
        server.client.delete(f"/v1/retention/rules/{rule['id']}", headers=server.admin).status_code
        == 204
    )
    assert server.client.get("/v1/retention", headers=server.admin).json()["rules"] == []
