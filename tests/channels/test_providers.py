"""SMS, push and webhook providers against local HTTP servers that check the documented
request formats."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs

import pytest
from sqlalchemy import Engine

from tests.channels.sinks import HttpSink, http_server
from tests.channels.world import World


@pytest.fixture
def sink() -> Iterator[HttpSink]:
    with http_server() as server:
        yield server


@pytest.fixture
def world(state_engine: Engine, tmp_path: Path) -> World:
    return World.make(state_engine, tmp_path)


def test_twilio_messages_api_form_with_basic_auth(world: World, sink: HttpSink) -> None:
    world.provider(
        "twilio", account_sid="AC123", auth_token="secret", sender="+15550001111", base_url=sink.url
    )
    world.template("welcome", "sms", "Hi {{ profile.name }}, {{ vars.code }}")
    world.profile("p_1", consent=("sms",), phone="(650) 555-1212", name="Ann")
    world.enqueue("k", "p_1", "sms", variables={"code": "SAVE10"})
    world.deliver()

    [request] = sink.requests
    assert (request.method, request.path) == ("POST", "/2010-04-01/Accounts/AC123/Messages.json")
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.headers["authorization"] == "Basic " + base64.b64encode(b"AC123:secret").decode()
    assert parse_qs(request.body.decode()) == {
        "To": ["+16505551212"],
        "From": ["+15550001111"],
        "Body": ["Hi Ann, SAVE10"],
    }


def test_fcm_http_v1_message_with_bearer_token(world: World, sink: HttpSink) -> None:
    world.provider("fcm", project_id="shop-app", access_token="ya29.token", base_url=sink.url)
    world.template("welcome", "push", "{{ event.name }} is back", subject="Back in stock")
    world.profile("p_1", consent=("push",), push_token="device-token-1")
    world.enqueue("k", "p_1", "push", trigger={"name": "Boots"}, variables={"data": {"sku": 42}})
    world.deliver()

    [request] = sink.requests
    assert (request.method, request.path) == ("POST", "/v1/projects/shop-app/messages:send")
    assert request.headers["authorization"] == "Bearer ya29.token"
    assert request.json() == {
        "message": {
            "token": "device-token-1",
            "notification": {"title": "Back in stock", "body": "Boots is back"},
            "data": {"sku": "42"},
        }
    }


def test_webhook_body_is_hmac_signed_and_keyed(world: World, sink: HttpSink) -> None:
    world.provider("webhook", url=f"{sink.url}/hook", secret="whsec")
    world.profile("p_1", consent=("personalization",))
    world.enqueue("k-1", "p_1", "webhook", variables={"coupon": "X"}, journey_id="j", node_id="n")
    world.deliver()

    [request] = sink.requests
    timestamp = request.headers["x-remarket-timestamp"]
    expected = hmac.new(b"whsec", timestamp.encode() + b"." + request.body, hashlib.sha256)
    assert request.headers["x-remarket-signature"] == f"sha256={expected.hexdigest()}"
    assert request.headers["idempotency-key"] == "k-1"
    body = json.loads(request.body)
    assert body["id"] == "k-1" and body["profile_id"] == "p_1"
    assert body["data"]["variables"] == {"coupon": "X"}
    assert body["data"]["journey"] == {"id": "j", "version": None, "node": "n"}


def test_webhook_needs_the_configured_purpose(
    state_engine: Engine, tmp_path: Path, sink: HttpSink
) -> None:
    world = World.make(state_engine, tmp_path, channels_webhook_purpose="analytics")
    world.provider("webhook", url=sink.url, secret="s")
    world.profile("p_1", consent=("personalization",))
    world.enqueue("k", "p_1", "webhook")
    world.deliver()
    assert sink.requests == []
    assert world.row("k").reason == "no_consent"


def test_provider_rate_limit_spaces_sends(world: World, sink: HttpSink) -> None:
    import time

    world.provider("webhook", url=sink.url, secret="s", rate_per_s=20)
    for i in range(6):
        world.profile(f"p_{i}", consent=("personalization",))
        world.enqueue(f"k{i}", f"p_{i}", "webhook")
    start = time.monotonic()
    world.deliver()
    assert len(sink.requests) == 6
    assert time.monotonic() - start >= 5 / 20


def test_credentials_are_encrypted_at_rest(world: World) -> None:
    from sqlalchemy import select

    from remarket.storage.state import channel_providers

    world.provider("twilio", account_sid="AC1", auth_token="very-secret-token", sender="+1555")
    with world.engine.connect() as conn:
        row = conn.execute(select(channel_providers)).one()
    assert b"very-secret-token" not in row.secret
    assert "very-secret-token" not in json.dumps(row.config)
    assert world.box.decrypt(row.secret) == {"auth_token": "very-secret-token"}
