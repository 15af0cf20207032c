"""The collection API: what it accepts, what it refuses, and how it says so."""

from __future__ import annotations

import gzip
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2
import pytest

from tests.api.harness import Server


def track(**fields: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Product Viewed",
        "anonymousId": "anon-1",
        "messageId": str(uuid.uuid4()),
        "properties": {"product_id": "sku-1", "price": 12.5},
    } | fields


def assert_problem(response: httpx2.Response, status: int, field: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"].startswith("urn:remarket:problem:")
    assert body["detail"]
    assert body.get("field") == field, body
    return body


def test_track_is_accepted_and_lands_on_a_profile(server: Server) -> None:
    reply = server.send("/v1/track", track())
    assert reply.status_code == 200
    assert reply.json() == {
        "success": True,
        "accepted": 1,
        "duplicates": 0,
        "quarantined": 0,
        "errors": [],
    }
    server.drain()
    profile = server.client.get(
        "/v1/profiles", params={"anonymous_id": "anon-1"}, headers=server.admin
    ).json()
    assert profile["event_count"] == 1


@pytest.mark.parametrize(
    "event_type", ["track", "identify", "page", "screen", "group", "alias"], ids=str
)
def test_every_single_event_endpoint_takes_its_type_from_the_path(
    server: Server, event_type: str
) -> None:
    body: dict[str, Any] = {"userId": "u1", "messageId": str(uuid.uuid4())}
    body |= {
        "track": {"event": "Signed Up"},
        "group": {"groupId": "g1"},
        "alias": {"previousId": "anon-9"},
    }.get(event_type, {})
    reply = server.send(f"/v1/{event_type}", body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["accepted"] == 1


def test_unknown_write_key_is_401(server: Server) -> None:
    reply = server.client.post("/v1/track", json=track(), auth=("wk_nope", ""))
    assert_problem(reply, 401, "Authorization")
    assert reply.headers["www-authenticate"].startswith("Basic")


def test_missing_write_key_is_401(server: Server) -> None:
    assert_problem(server.client.post("/v1/batch", json={"batch": [track()]}), 401, "Authorization")


def test_write_key_may_come_in_the_batch_body(server: Server) -> None:
    reply = server.client.post("/v1/batch", json={"batch": [track()], "writeKey": server.write_key})
    assert reply.status_code == 200
    assert reply.json()["accepted"] == 1


def test_malformed_json_is_400_with_the_position(server: Server) -> None:
    reply = server.client.post(
        "/v1/track",
        content=b'{"event": "x", "userId": }',
        auth=(server.write_key, ""),
        headers={"content-type": "application/json"},
    )
    body = assert_problem(reply, 400, "body")
    assert "byte 25" in body["detail"]


def test_truncated_batch_is_400_with_the_position(server: Server) -> None:
    raw = b'{"batch": [{"type": "track"'
    reply = server.client.post("/v1/batch", content=raw, auth=(server.write_key, ""))
    body = assert_problem(reply, 400, "body")
    assert f"byte {len(raw)}" in body["detail"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"event": 5}, "event"),
        ({"event": ""}, "event"),
        ({"properties": [1, 2]}, "properties"),
        ({"context": "web"}, "context"),
        ({"timestamp": "yesterday"}, "timestamp"),
        ({"anonymousId": None, "userId": None}, "userId"),
        ({"anonymousId": "x" * 513}, "anonymousId"),
        ({"messageId": 7}, "messageId"),
    ],
    ids=[
        "event-type",
        "event-empty",
        "properties",
        "context",
        "timestamp",
        "no-id",
        "id-long",
        "messageId",
    ],
)
def test_wrong_field_is_400_naming_it(server: Server, change: dict[str, Any], field: str) -> None:
    body = {k: v for k, v in (track() | change).items() if v is not None and k != "type"}
    assert_problem(server.send("/v1/track", body), 400, field)


def test_track_without_event_names_the_missing_field(server: Server) -> None:
    body = {"userId": "u1"}
    assert_problem(server.send("/v1/track", body), 400, "event")


def test_alias_needs_user_id(server: Server) -> None:
    assert_problem(server.send("/v1/alias", {"previousId": "a", "anonymousId": "a"}), 400, "userId")


def test_batch_that_is_not_a_list_is_400_naming_batch(server: Server) -> None:
    assert_problem(server.send("/v1/batch", {"batch": {"type": "track"}}), 400, "batch")


def test_request_over_the_limit_is_413(server: Server) -> None:
    big = [track(properties={"pad": "x" * 20_000}) for _ in range(30)]
    body = assert_problem(server.send("/v1/batch", {"batch": big}), 413, "max_request_bytes")
    assert str(server.runtime.settings.max_request_bytes) in body["detail"]


def test_single_event_over_the_limit_is_413(server: Server) -> None:
    body = assert_problem(
        server.send("/v1/track", track(properties={"pad": "x" * 40_000})), 413, "max_event_bytes"
    )
    assert "32768" in body["detail"]


def test_batch_keeps_valid_events_and_quarantines_the_rest(server: Server) -> None:
    batch = [
        track(),
        track(event=5),
        track(properties={"pad": "x" * 40_000}),
        {"event": "no type", "userId": "u"},
        track(),
    ]
    reply = server.send("/v1/batch", {"batch": batch})
    assert reply.status_code == 200
    result = reply.json()
    assert (result["accepted"], result["quarantined"]) == (2, 3)
    errors = {e["index"]: (e["reason"], e["field"]) for e in result["errors"]}
    assert errors == {
        1: ("invalid_event", "event"),
        2: ("event_too_large", None),
        3: ("invalid_event", "type"),
    }
    listed = server.client.get("/v1/quarantine", headers=server.admin).json()["entries"]
    assert [(e["reason"], e["field"]) for e in listed] == [errors[1], errors[2], errors[3]]
    assert json.loads(listed[0]["payload"])["event"] == 5


def test_replaying_a_batch_adds_nothing(server: Server) -> None:
    batch = [track() for _ in range(10)]
    first = server.send("/v1/batch", {"batch": batch}).json()
    second = server.send("/v1/batch", {"batch": batch}).json()
    assert (first["accepted"], first["duplicates"]) == (10, 0)
    assert (second["accepted"], second["duplicates"]) == (0, 10)
    server.drain()
    assert server.runtime.warehouse.count_events() == 10


def test_duplicate_message_ids_inside_one_batch_count_once(server: Server) -> None:
    event = track()
    reply = server.send("/v1/batch", {"batch": [event, event, event]}).json()
    assert (reply["accepted"], reply["duplicates"]) == (1, 2)


def test_gzip_bodies_are_accepted(server: Server) -> None:
    raw = gzip.compress(json.dumps({"batch": [track(), track()]}).encode())
    reply = server.client.post(
        "/v1/batch",
        content=raw,
        auth=(server.write_key, ""),
        headers={"content-encoding": "gzip", "content-type": "application/json"},
    )
    assert reply.status_code == 200
    assert reply.json()["accepted"] == 2


def test_gzip_bomb_is_413(server: Server) -> None:
    raw = gzip.compress(b'{"batch": [' + b" " * 2_000_000 + b"]}")
    reply = server.client.post(
        "/v1/batch", content=raw, auth=(server.write_key, ""), headers={"content-encoding": "gzip"}
    )
    assert_problem(reply, 413, "max_request_bytes")


def test_corrupt_gzip_is_400(server: Server) -> None:
    reply = server.client.post(
        "/v1/batch",
        content=b"not gzip at all",
        auth=(server.write_key, ""),
        headers={"content-encoding": "gzip"},
    )
    assert_problem(reply, 400, "body")


def test_unsupported_encoding_is_415(server: Server) -> None:
    reply = server.client.post(
        "/v1/batch", content=b"{}", auth=(server.write_key, ""), headers={"content-encoding": "br"}
    )
    assert_problem(reply, 415, "Content-Encoding")


def test_clock_skew_is_corrected_from_sent_at(server: Server) -> None:
    device = datetime(2020, 1, 1, 12, 0, tzinfo=UTC)  # the device clock is years behind
    event = track(timestamp=device.isoformat(), sentAt=(device + timedelta(seconds=30)).isoformat())
    before = datetime.now(UTC)
    assert server.send("/v1/batch", {"batch": [event]}).status_code == 200
    after = datetime.now(UTC)
    server.drain()
    page = server.client.get(
        "/v1/profiles", params={"anonymous_id": "anon-1"}, headers=server.admin
    ).json()
    stored = server.client.get(
        f"/v1/profiles/{page['profile_id']}/events", headers=server.admin
    ).json()["events"][0]
    received = datetime.fromisoformat(stored["received_at"])
    assert before <= received <= after
    assert datetime.fromisoformat(stored["timestamp"]) == received - timedelta(seconds=30)
    assert datetime.fromisoformat(stored["original_timestamp"]) == device


def test_batch_level_sent_at_applies_to_every_event(server: Server) -> None:
    device = datetime(2030, 6, 1, tzinfo=UTC)  # the device clock is ahead
    batch = {
        "batch": [track(timestamp=(device - timedelta(minutes=5)).isoformat())],
        "sentAt": device.isoformat(),
    }
    assert server.send("/v1/batch", batch).status_code == 200
    server.drain()
    rows = server.runtime.warehouse.query("SELECT received_at - timestamp FROM events")
    assert rows == [(timedelta(minutes=5),)]


def test_without_timestamp_the_event_time_is_received_at(server: Server) -> None:
    assert server.send("/v1/track", {"event": "Opened", "userId": "u"}).status_code == 200
    server.drain()
    rows = server.runtime.warehouse.query("SELECT timestamp = received_at FROM events")
    assert rows == [(True,)]


def test_cors_preflight_allows_browser_sdks(server: Server) -> None:
    reply = server.client.options(
        "/v1/batch",
        headers={
            "Origin": "https://shop.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert reply.status_code == 200
    assert reply.headers["access-control-allow-origin"] in ("*", "https://shop.example")
    assert "POST" in reply.headers["access-control-allow-methods"]


def test_nul_in_text_is_quarantined(server: Server) -> None:
    raw = (
        '{"batch": [{"type": "track", "event": "E", "userId": "u",'
        ' "properties": {"t": "a\\u0000"}},'
        ' {"type": "track", "event": "E", "userId": "u",'
        ' "properties": {"t": "\\ud83d\\ude00"}}]}'
    )
    result = server.client.post("/v1/batch", content=raw, auth=(server.write_key, "")).json()
    assert (result["accepted"], result["quarantined"]) == (1, 1)
    assert "cannot be stored" in result["errors"][0]["detail"]


def test_unpaired_surrogate_is_malformed_json(server: Server) -> None:
    raw = '{"batch": [{"type": "track", "event": "E", "userId": "u", "name": "\\ude00"}]}'
    reply = server.client.post("/v1/batch", content=raw, auth=(server.write_key, ""))
    assert "surrogate" in assert_problem(reply, 400, "body")["detail"]


def test_gzip_with_a_second_member_is_400(server: Server) -> None:
    raw = gzip.compress(json.dumps({"batch": [track()]}).encode()) + gzip.compress(b"{}")
    reply = server.client.post(
        "/v1/batch", content=raw, auth=(server.write_key, ""), headers={"content-encoding": "gzip"}
    )
    assert "after its end" in assert_problem(reply, 400, "body")["detail"]
