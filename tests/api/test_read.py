"""The read and admin API: profiles, events, sources, quarantine, health, metrics, roles.

Every route's 401/403 behaviour is checked in test_route_access.py."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.api.harness import Server

T0 = datetime(2026, 2, 1, tzinfo=UTC)


def event(kind: str, at: datetime, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "messageId": str(uuid.uuid4()), "timestamp": at.isoformat()} | fields


def test_anonymous_visitor_who_signs_in_becomes_one_profile(server: Server) -> None:
    batch = [
        event("page", T0, anonymousId="anon-1", name="Home"),
        event("track", T0 + timedelta(minutes=1), anonymousId="anon-1", event="Product Viewed"),
        event(
            "identify",
            T0 + timedelta(minutes=2),
            anonymousId="anon-1",
            userId="u-1",
            traits={"email": "Ann@Example.com", "plan": "free"},
        ),
        event("track", T0 + timedelta(minutes=3), userId="u-1", event="Order Completed"),
        event("identify", T0 + timedelta(minutes=4), userId="u-1", traits={"plan": "pro"}),
    ]
    assert server.send("/v1/batch", {"batch": batch}).json()["accepted"] == 5
    server.drain()
    by_anon = server.client.get(
        "/v1/profiles", params={"anonymous_id": "anon-1"}, headers=server.admin
    ).json()
    by_user = server.client.get(
        "/v1/profiles", params={"user_id": "u-1"}, headers=server.admin
    ).json()
    by_email = server.client.get(
        "/v1/profiles", params={"email": "ann@example.com"}, headers=server.admin
    ).json()
    assert by_anon == by_user == by_email
    assert by_user["event_count"] == 5
    assert by_user["traits"] == {"email": "Ann@Example.com", "plan": "pro"}
    assert by_user["first_seen"].startswith("2026-02-01T00:00:00")
    assert by_user["last_seen"].startswith("2026-02-01T00:04:00")
    assert {i["kind"] for i in by_user["identities"]} == {"anonymous_id", "user_id", "email"}


def test_profile_events_page_newest_first_without_gaps(server: Server) -> None:
    batch = [
        event("track", T0 + timedelta(seconds=i // 2), userId="u-2", event=f"E{i}")
        for i in range(25)
    ]
    server.send("/v1/batch", {"batch": batch})
    server.drain()
    pid = server.client.get("/v1/profiles", params={"user_id": "u-2"}, headers=server.admin).json()[
        "profile_id"
    ]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 7} | ({"cursor": cursor} if cursor else {})
        page = server.client.get(
            f"/v1/profiles/{pid}/events", params=params, headers=server.admin
        ).json()
        seen += [e["event"] for e in page["events"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    expected = sorted(batch, key=lambda e: e["timestamp"], reverse=True)
    assert len(seen) == 25 and set(seen) == {e["event"] for e in batch}
    stamps = [next(e["timestamp"] for e in batch if e["event"] == name) for name in seen]
    assert stamps == [e["timestamp"] for e in expected]


def test_bad_cursor_is_400_naming_it(server: Server) -> None:
    server.send("/v1/track", {"userId": "u-3", "event": "A"})
    server.drain()
    pid = server.client.get("/v1/profiles", params={"user_id": "u-3"}, headers=server.admin).json()[
        "profile_id"
    ]
    reply = server.client.get(
        f"/v1/profiles/{pid}/events", params={"cursor": "garbage"}, headers=server.admin
    )
    assert reply.status_code == 400
    assert reply.json()["field"] == "cursor"


def test_unknown_profile_is_404(server: Server) -> None:
    reply = server.client.get("/v1/profiles/p_missing", headers=server.admin)
    assert reply.status_code == 404
    assert reply.json()["field"] == "profile_id"


def test_profile_lookup_needs_exactly_one_identifier(server: Server) -> None:
    reply = server.client.get(
        "/v1/profiles", params={"user_id": "a", "anonymous_id": "b"}, headers=server.admin
    )
    assert reply.status_code == 400
    assert reply.json()["field"] == "user_id"


def test_sources_are_listed_without_their_keys(server: Server) -> None:
    created = server.client.post("/v1/sources", json={"name": "app"}, headers=server.admin)
    assert created.status_code == 201
    key = created.json()["write_key"]
    listed = server.client.get("/v1/sources", headers=server.admin).json()
    assert {s["name"] for s in listed} == {"web", "app"}
    assert key not in str(listed)
    assert (
        server.client.post(
            "/v1/track", json={"userId": "x", "event": "E"}, auth=(key, "")
        ).status_code
        == 200
    )


def test_duplicate_source_name_is_409(server: Server) -> None:
    reply = server.client.post("/v1/sources", json={"name": "web"}, headers=server.admin)
    assert reply.status_code == 409
    assert reply.json()["field"] == "name"


@pytest.mark.parametrize("name", ["\r", "  ", "\u00a0\t"])
def test_blank_source_name_is_refused_naming_the_field(server: Server, name: str) -> None:
    """Found by schemathesis: a name of white space passed validation, then the registry
    stripped it to nothing and answered 500."""
    reply = server.client.post("/v1/sources", json={"name": name}, headers=server.admin)
    assert reply.status_code in (400, 422), reply.text
    assert reply.json()["field"] == "name"


def test_quarantined_events_can_be_replayed_after_a_fix(server: Server) -> None:
    batch = [event("track", T0, userId="u-4", event="Fine"), event("track", T0, event="No id")]
    reply = server.send("/v1/batch", {"batch": batch}).json()
    assert reply["quarantined"] == 1
    entries = server.client.get("/v1/quarantine", headers=server.admin).json()["entries"]
    assert entries[0]["field"] == "userId"
    # In UTC with its zone, as every other time the API answers with.
    assert datetime.fromisoformat(entries[0]["received_at"]).utcoffset() == timedelta(0)
    # Still invalid: replay leaves it where it is.
    again = server.client.post("/v1/quarantine/replay", json={}, headers=server.admin).json()
    assert again == {
        "replayed": [],
        "still_invalid": [
            {
                "id": entries[0]["id"],
                "reason": "invalid_event",
                "field": "userId",
                "detail": again["still_invalid"][0]["detail"],
            }
        ],
    }
    assert server.client.get("/healthz").json()["log_end_offset"] == 1


def test_healthz_reports_log_and_lag(server: Server) -> None:
    server.send("/v1/track", {"userId": "u", "event": "E"})
    server.drain()
    health = server.client.get("/healthz").json()
    assert health == {
        "status": "ok",
        "log_end_offset": 1,
        "lag": {"warehouse": 0, "profiles": 0, "segments": 0, "consent": 0, "journeys": 0},
    }


def test_metrics_count_events_and_latency(server: Server) -> None:
    server.send("/v1/batch", {"batch": [event("track", T0, userId="u", event="E"), {"bad": 1}]})
    server.drain()
    text = server.client.get("/metrics", headers=server.admin).text
    assert 'remarket_events_accepted_total{source="web"}' in text
    assert 'remarket_events_rejected_total{reason="invalid_event"}' in text
    assert 'remarket_log_lag{consumer="warehouse"} 0.0' in text
    assert 'remarket_request_seconds_bucket{le="0.05",route="/v1/batch",status="2xx"}' in text


def test_stats_count_what_landed(server: Server) -> None:
    server.send(
        "/v1/batch", {"batch": [event("track", T0, userId=f"u{i}", event="E") for i in range(3)]}
    )
    server.drain()
    stats = server.client.get("/v1/stats", headers=server.admin).json()
    assert stats == {
        "profiles": 3,
        "warehouse_events": 3,
        "log_end_offset": 3,
        "quarantine_pending": 0,
    }


@pytest.mark.parametrize(
    ("role", "path", "status"),
    [
        ("viewer", "/v1/profiles/p_x", 403),
        ("viewer", "/v1/quarantine", 403),
        ("marketer", "/v1/quarantine", 403),
        ("analyst", "/v1/quarantine", 200),
        ("viewer", "/v1/sources", 200),
    ],
    ids=[
        "viewer-profiles",
        "viewer-quarantine",
        "marketer-quarantine",
        "analyst-quarantine",
        "viewer-sources",
    ],
)
def test_roles_limit_what_a_key_reads(server: Server, role: str, path: str, status: int) -> None:
    _, key = server.runtime.keys.create(role, role)
    reply = server.client.get(path, headers={"Authorization": f"Bearer {key}"})
    assert reply.status_code == status


def test_openapi_documents_the_collection_bodies(server: Server) -> None:
    spec = server.client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert {"Track", "Identify", "Batch", "Ingested"} <= set(schemas)
    body = spec["paths"]["/v1/track"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/Track"}
    assert server.client.get("/docs").status_code == 200
