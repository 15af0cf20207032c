"""Segments API: definitions, 422 with the node's path, preview, members, CSV, history."""

from __future__ import annotations

import csv
import io
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.api.harness import Server

BUYERS = {
    "name": "buyers",
    "description": "ordered at least once",
    "entry": "o",
    "nodes": [{"id": "o", "type": "performed", "event": "Order Completed"}],
}


def order(user: str, minutes_ago: int = 5) -> dict[str, Any]:
    at = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    return {
        "type": "track",
        "messageId": str(uuid.uuid4()),
        "timestamp": at.isoformat(),
        "userId": user,
        "event": "Order Completed",
    }


def live(server: Server, name: str, timeout: float = 20.0) -> dict[str, Any]:
    """Wait until the segment's members reflect its newest version."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: dict[str, Any] = server.client.get(
            f"/v1/segments/{name}", headers=server.admin
        ).json()
        if body["status"] == "live":
            server.drain()
            return body
        time.sleep(0.02)
    raise AssertionError(f"segment {name} did not go live")


def profile_of(server: Server, user: str) -> str:
    response = server.client.get("/v1/profiles", params={"user_id": user}, headers=server.admin)
    return str(response.json()["profile_id"])


@pytest.mark.parametrize(
    ("nodes", "field"),
    [
        (
            [{"id": "o", "type": "performed", "event": "E", "operator": "sometimes"}],
            "nodes[0].operator",
        ),
        ([{"id": "o", "type": "and", "children": ["x"]}], "nodes[0].children[0]"),
        ([{"id": "o", "type": "in_segment", "segment": "nope"}], "nodes[0].segment"),
        (
            [{"id": "o", "type": "trait", "path": "plan", "operator": "gt", "value": "x"}],
            "nodes[0].value",
        ),
    ],
    ids=["bad-operator", "unknown-child", "unknown-segment", "bad-operand"],
)
def test_invalid_definition_is_422_naming_the_node(
    server: Server, nodes: list[dict[str, Any]], field: str
) -> None:
    body = {"name": "bad", "entry": "o", "nodes": nodes}
    for response in (
        server.client.post("/v1/segments", json=body, headers=server.admin),
        server.client.put("/v1/segments/bad", json=body, headers=server.admin),
        server.client.post("/v1/segments/preview", json=body, headers=server.admin),
    ):
        assert response.status_code == 422
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["code"] == "invalid_definition"
        assert problem["field"] == field
        assert problem["errors"][0]["field"] == field
    assert server.client.get("/v1/segments", headers=server.admin).json() == []


def test_preview_sizes_and_samples_without_saving(server: Server) -> None:
    server.send("/v1/batch", {"batch": [order(f"u{i}") for i in range(25)]})
    server.drain()
    response = server.client.post("/v1/segments/preview", json=BUYERS, headers=server.admin)
    assert response.status_code == 200, response.json()
    preview = response.json()
    assert preview["size"] == 25
    assert len(preview["sample"]) == 20
    assert preview["sample"] == sorted(preview["sample"])
    assert server.client.get("/v1/segments", headers=server.admin).json() == []


def test_create_backfill_members_pages_and_csv(server: Server) -> None:
    server.send("/v1/batch", {"batch": [order(f"u{i:02}") for i in range(7)]})
    server.drain()
    created = server.client.post("/v1/segments", json=BUYERS, headers=server.admin)
    assert created.status_code == 201, created.json()
    assert created.json()["version"] == 1
    again = server.client.post("/v1/segments", json=BUYERS, headers=server.admin)
    assert again.status_code == 409
    detail = live(server, "buyers")
    assert (detail["size"], detail["live_version"]) == (7, 1)
    members: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = server.client.get(
            "/v1/segments/buyers/members", params=params, headers=server.admin
        ).json()
        members += [m["profile_id"] for m in page["members"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert members == sorted({profile_of(server, f"u{i:02}") for i in range(7)})
    exported = server.client.get(
        "/v1/segments/buyers/members", params={"format": "csv"}, headers=server.admin
    )
    assert exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [r["profile_id"] for r in rows] == members
    assert {r["version"] for r in rows} == {"1"}


def test_put_unchanged_makes_no_version_and_real_time_follows(server: Server) -> None:
    assert (
        server.client.put("/v1/segments/buyers", json=BUYERS, headers=server.admin).status_code
        == 200
    )
    live(server, "buyers")
    same = server.client.put("/v1/segments/buyers", json=BUYERS, headers=server.admin).json()
    assert [v["version"] for v in same["versions"]] == [1]
    server.send("/v1/track", order("late"))
    server.drain()
    pid = profile_of(server, "late")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        history = server.client.get(f"/v1/profiles/{pid}/segments", headers=server.admin).json()
        if history["segments"]:
            break
        time.sleep(0.02)
    assert [s["segment"] for s in history["segments"]] == ["buyers"]
    assert [(h["segment"], h["kind"], h["seq"]) for h in history["history"]] == [
        ("buyers", "entered", 1)
    ]
    size = server.client.get(
        "/v1/segments/buyers/size", params={"bucket": "hour"}, headers=server.admin
    ).json()
    assert size["size"] == 1
    assert size["points"][-1]["size"] == 1


def test_delete_exits_members_and_keeps_history(server: Server) -> None:
    server.send("/v1/track", order("u1"))
    server.drain()
    server.client.post("/v1/segments", json=BUYERS, headers=server.admin)
    live(server, "buyers")
    assert server.client.delete("/v1/segments/buyers", headers=server.admin).status_code == 204
    assert server.client.get("/v1/segments/buyers", headers=server.admin).status_code == 404
    pid = profile_of(server, "u1")
    history = server.client.get(f"/v1/profiles/{pid}/segments", headers=server.admin).json()
    assert history["segments"] == []
    assert [h["kind"] for h in history["history"]] == ["entered", "exited"]


def test_a_used_segment_cannot_be_deleted(server: Server) -> None:
    server.client.post("/v1/segments", json=BUYERS, headers=server.admin)
    repeat = {
        "name": "repeat",
        "entry": "r",
        "nodes": [{"id": "r", "type": "in_segment", "segment": "buyers"}],
    }
    assert server.client.post("/v1/segments", json=repeat, headers=server.admin).status_code == 201
    response = server.client.delete("/v1/segments/buyers", headers=server.admin)
    assert response.status_code == 409
    assert "repeat" in response.json()["detail"]


@pytest.mark.parametrize(
    ("role", "method", "path", "status"),
    [
        ("viewer", "GET", "/v1/segments", 200),
        ("viewer", "POST", "/v1/segments", 403),
        ("analyst", "GET", "/v1/schema/segment", 200),
        ("analyst", "DELETE", "/v1/segments/buyers", 403),
        ("marketer", "POST", "/v1/segments", 201),
    ],
    ids=[
        "viewer-reads",
        "viewer-cannot-write",
        "analyst-schema",
        "analyst-cannot-delete",
        "marketer-writes",
    ],
)
def test_segment_scopes_by_role(
    server: Server, role: str, method: str, path: str, status: int
) -> None:
    _, key = server.runtime.keys.create("t", role)
    response = server.client.request(
        method,
        path,
        json=BUYERS if method == "POST" else None,
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_code == status, response.json()


def test_schema_is_the_definition_json_schema(server: Server) -> None:
    schema = server.client.get("/v1/schema/segment", headers=server.admin).json()
    assert schema["title"] == "Segment definition"
    assert "nodes" in schema["properties"]
