"""Channels API: providers (credentials never returned), templates and preview, an
e-mail delivered by the server's workers to a real SMTP server, one-click unsubscribe
into the consent ledger, suppressions, dead letters, audiences, delivery counts."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from remarket.channels import OutboxMessage, enqueue
from remarket.storage.state import channel_outbox
from tests.api.harness import Server
from tests.channels.sinks import MailSink, smtp_server


@pytest.fixture
def smtp() -> Iterator[tuple[MailSink, int]]:
    with smtp_server() as server:
        yield server


def _profile(server: Server, user_id: str, traits: dict[str, Any]) -> str:
    server.send("/v1/identify", {"userId": user_id, "traits": traits})
    server.drain()
    found = server.client.get("/v1/profiles", params={"user_id": user_id}, headers=server.admin)
    return str(found.json()["profile_id"])


def _enqueue(server: Server, key: str, pid: str) -> None:
    with server.runtime.engine.begin() as conn:
        enqueue(
            conn,
            OutboxMessage(key, pid, "email", "promo", {}, journey_id="j1", node_id="mail"),
            now=server.runtime.clock.now(),
        )


def _status(server: Server, key: str, timeout: float = 20.0) -> Any:
    from sqlalchemy import select

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with server.runtime.engine.connect() as conn:
            row = conn.execute(
                select(channel_outbox).where(channel_outbox.c.idempotency_key == key)
            ).one()
        if row.status != "pending":
            return row
        time.sleep(0.05)
    raise AssertionError(f"{key} still pending")


def test_send_unsubscribe_and_no_more_mail(server: Server, smtp: tuple[MailSink, int]) -> None:
    sink, port = smtp
    created = server.client.post(
        "/v1/channels/providers",
        json={
            "name": "relay",
            "kind": "smtp",
            "config": {
                "host": "127.0.0.1",
                "port": port,
                "sender": "shop@shop.example",
                "security": "none",
            },
            "credentials": {"username": "u", "password": "hunter2"},
        },
        headers=server.admin,
    )
    assert created.status_code == 201, created.text
    assert created.json()["credential_names"] == ["password", "username"]
    assert "hunter2" not in created.text
    # The relay needs no login: drop the credentials again.
    patched = server.client.patch(
        f"/v1/channels/providers/{created.json()['id']}",
        json={"credentials": {}},
        headers=server.admin,
    )
    assert patched.json()["credential_names"] == []

    put = server.client.put(
        "/v1/templates/promo",
        json={
            "channel": "email",
            "subject": "Hi {{ profile.first_name }}",
            "text": "Sale for {{ profile.first_name }}",
            "html": "<b>Sale</b>",
        },
        headers=server.admin,
    )
    assert put.status_code == 201, put.text
    pid = _profile(
        server, "u1", {"email": "ann@example.com", "first_name": "Ann", "consent": {"email": True}}
    )
    preview = server.client.post(
        "/v1/templates/promo/preview", json={"profile_id": pid}, headers=server.admin
    )
    assert preview.json() == {"subject": "Hi Ann", "html": "<b>Sale</b>", "text": "Sale for Ann"}

    _enqueue(server, "m1", pid)
    assert _status(server, "m1").status == "sent"
    [message] = sink.messages()
    link = re.search(r"<(http[^>]+)>", str(message["List-Unsubscribe"]).replace("\n ", ""))
    assert link is not None
    path = link.group(1).removeprefix("http://127.0.0.1:8000")

    page = server.client.get(path)
    assert page.status_code == 200 and "<form" in page.text
    consent = server.client.get(f"/v1/profiles/{pid}/consent", headers=server.admin).json()
    assert {c["purpose"]: c["state"] for c in consent["current"]}["email"] == "granted"

    # RFC 8058: the mail client POSTs List-Unsubscribe=One-Click, with no other auth.
    done = server.client.post(
        path,
        content="List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert done.status_code == 200
    consent = server.client.get(f"/v1/profiles/{pid}/consent", headers=server.admin).json()
    email = {c["purpose"]: c for c in consent["current"]}["email"]
    assert (email["state"], email["source"]) == ("denied", "unsubscribe")

    _enqueue(server, "m2", pid)
    row = _status(server, "m2")
    assert (row.status, row.reason) == ("skipped", "no_consent")
    assert len(sink.messages()) == 1

    counts = server.client.get(
        "/v1/channels/deliveries", params={"journey_id": "j1"}, headers=server.admin
    ).json()
    assert counts == [
        {
            "node_id": "mail",
            "sent": 1,
            "resent": 0,
            "pending": 0,
            "dead": 0,
            "failed_attempts": 0,
            "skipped": {"no_consent": 1},
        }
    ]


@pytest.mark.parametrize(
    "token",
    ["eyJwIjoicF8xIn0.AAAAAAAAAAAAAAAAAAAAAAAA", ".%C2%80"],  # forged; not even ASCII
    ids=["forged", "non-ascii"],
)
def test_a_forged_unsubscribe_token_is_refused(server: Server, token: str) -> None:
    reply = server.client.post(f"/v1/unsubscribe/{token}")
    assert reply.status_code == 400
    assert reply.json()["field"] == "token"


def test_dead_letters_and_replay(server: Server, smtp: tuple[MailSink, int]) -> None:
    sink, port = smtp
    server.client.post(
        "/v1/channels/providers",
        json={
            "name": "relay",
            "kind": "smtp",
            "config": {
                "host": "127.0.0.1",
                "port": port,
                "sender": "s@shop.example",
                "security": "none",
            },
        },
        headers=server.admin,
    )
    pid = _profile(server, "u2", {"email": "bo@example.com", "consent": {"email": True}})
    _enqueue(server, "d1", pid)  # the template does not exist yet: a dead letter
    assert _status(server, "d1").reason == "render_failed"
    letters = server.client.get("/v1/channels/dead-letters", headers=server.admin).json()
    assert [d["idempotency_key"] for d in letters] == ["d1"]

    server.client.put(
        "/v1/templates/promo",
        json={"channel": "email", "subject": "S", "text": "T"},
        headers=server.admin,
    )
    replayed = server.client.post(
        "/v1/channels/dead-letters/replay", json={"ids": [letters[0]["id"]]}, headers=server.admin
    )
    assert replayed.json() == {"replayed": 1}
    assert _status(server, "d1").status == "sent"
    assert len(sink.messages()) == 1


def test_suppressions_and_scopes(server: Server) -> None:
    body = {"profile_id": "p_x", "channel": "*", "reason": "complaint"}
    assert (
        server.client.put("/v1/channels/suppressions", json=body, headers=server.admin).status_code
        == 200
    )
    listed = server.client.get("/v1/channels/suppressions", headers=server.admin).json()
    assert [(s["profile_id"], s["channel"]) for s in listed] == [("p_x", "*")]
    assert (
        server.client.delete("/v1/channels/suppressions/p_x/*", headers=server.admin).status_code
        == 204
    )
    _, viewer = server.runtime.keys.create("v", "viewer")
    denied = server.client.put(
        "/v1/channels/suppressions", json=body, headers={"Authorization": f"Bearer {viewer}"}
    )
    assert denied.status_code == 403
    assert server.client.get("/v1/channels/providers").status_code == 401


def test_audience_needs_a_known_segment(server: Server) -> None:
    reply = server.client.post(
        "/v1/channels/audiences",
        json={"id": "vip", "segment": "nope", "platform": "meta", "external_id": "1"},
        headers=server.admin,
    )
    assert reply.status_code == 404 and reply.json()["field"] == "segment"


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/channels/dead-letters?after=9223372036854775808", "after"),
        ("/v1/channels/deliveries?journey_id=j&version=9223372036854775808", "version"),
    ],
)
def test_integers_beyond_the_store_are_refused_by_name(
    server: Server, path: str, field: str
) -> None:
    reply = server.client.get(path, headers=server.admin)
    assert reply.status_code == 400
    assert field in reply.json()["field"]
