"""Privacy API: consent through the API and through events, and the audit log."""

from __future__ import annotations

import json
from typing import Any

import pytest

from remarket.collect import Rejection
from remarket.privacy import AuditLog
from tests.api.harness import Server


def profile_of(server: Server, user_id: str) -> str:
    server.send("/v1/identify", {"userId": user_id, "traits": {"plan": "free"}})
    server.drain()
    found = server.client.get("/v1/profiles", params={"user_id": user_id}, headers=server.admin)
    return str(found.json()["profile_id"])


def bearer(server: Server, role: str) -> dict[str, str]:
    _, key = server.runtime.keys.create(role, role)
    return {"Authorization": f"Bearer {key}"}


def test_put_then_get_consent(server: Server) -> None:
    pid = profile_of(server, "u1")
    body = {"purposes": {"email": True, "advertising": False}, "source": "preference_center"}
    reply = server.client.put(f"/v1/profiles/{pid}/consent", json=body, headers=server.admin)
    assert reply.status_code == 200, reply.text
    got = server.client.get(f"/v1/profiles/{pid}/consent", headers=bearer(server, "marketer"))
    assert got.json() == reply.json()
    current = {c["purpose"]: c for c in got.json()["current"]}
    assert {p: c["state"] for p, c in current.items()} == {
        "advertising": "denied",
        "email": "granted",
    }
    assert current["email"]["source"] == "preference_center"
    assert current["email"]["legal_basis"] == "consent"
    assert len(got.json()["history"]) == 2


def test_identify_traits_and_tc_strings_reach_the_ledger(server: Server) -> None:
    server.send(
        "/v1/batch",
        {
            "batch": [
                {"type": "identify", "userId": "u2", "traits": {"consent": {"sms": True}}},
                {
                    "type": "page",
                    "userId": "u2",
                    "context": {"consent": {"tcString": "CAAAAAAAAAAAAABABBENABEAAP_AAA"}},
                },
            ]
        },
    )
    server.drain()
    pid = server.client.get("/v1/profiles", params={"user_id": "u2"}, headers=server.admin).json()[
        "profile_id"
    ]
    consent = server.client.get(f"/v1/profiles/{pid}/consent", headers=server.admin).json()
    assert {c["purpose"]: (c["state"], c["source"]) for c in consent["current"]} == {
        "sms": ("granted", "identify"),
        "advertising": ("granted", "tcf"),
        "analytics": ("granted", "tcf"),
        "personalization": ("granted", "tcf"),
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"purposes": {"telepathy": True}}, "purposes.telepathy.[key]"),
        ({"purposes": {}}, "purposes"),
        ({"purposes": {"email": "maybe"}}, "purposes.email"),
        ({"purposes": {"email": True}, "legal_basis": "whim"}, "legal_basis"),
        ({"purposes": {"email": True}, "source": "Not Allowed!"}, "source"),
        ({}, "purposes"),
    ],
    ids=["unknown-purpose", "no-purposes", "not-boolean", "bad-basis", "bad-source", "missing"],
)
def test_bad_consent_is_422_naming_the_field(
    server: Server, body: dict[str, Any], field: str
) -> None:
    pid = profile_of(server, "u3")
    reply = server.client.put(f"/v1/profiles/{pid}/consent", json=body, headers=server.admin)
    assert reply.status_code == 422
    assert reply.headers["content-type"] == "application/problem+json"
    assert reply.json()["field"] == field


def test_unknown_profile_is_404(server: Server) -> None:
    body = {"purposes": {"email": True}}
    reply = server.client.put("/v1/profiles/p_nobody/consent", json=body, headers=server.admin)
    assert reply.status_code == 404
    assert reply.json()["field"] == "profile_id"
    assert (
        server.client.get("/v1/profiles/p_nobody/consent", headers=server.admin).status_code == 404
    )


@pytest.mark.parametrize(
    ("role", "method", "path", "status"),
    [
        ("marketer", "PUT", "consent", 403),
        ("analyst", "PUT", "consent", 403),
        ("viewer", "GET", "consent", 403),
        ("analyst", "GET", "consent", 200),
        ("marketer", "GET", "audit", 403),
        ("analyst", "GET", "audit", 403),
    ],
    ids=[
        "marketer-put",
        "analyst-put",
        "viewer-get",
        "analyst-get",
        "marketer-audit",
        "analyst-audit",
    ],
)
def test_roles(server: Server, role: str, method: str, path: str, status: int) -> None:
    pid = profile_of(server, "u4")
    url = f"/v1/profiles/{pid}/consent" if path == "consent" else "/v1/audit"
    body = {"purposes": {"email": True}} if method == "PUT" else None
    reply = server.client.request(method, url, json=body, headers=bearer(server, role))
    assert reply.status_code == status


def test_changes_are_audited_by_key_and_the_chain_holds(server: Server) -> None:
    pid = profile_of(server, "u5")
    admin_id = server.runtime.keys.authenticate(server.admin_key)
    assert admin_id is not None
    server.client.put(
        f"/v1/profiles/{pid}/consent", json={"purposes": {"push": True}}, headers=server.admin
    )
    segment = {
        "name": "buyers",
        "entry": "p",
        "nodes": [{"id": "p", "type": "performed", "event": "Order Completed"}],
    }
    assert server.client.post("/v1/segments", json=segment, headers=server.admin).status_code == 201
    segment["description"] = "people who bought"
    server.client.put("/v1/segments/buyers", json=segment, headers=server.admin)
    server.client.put("/v1/segments/buyers", json=segment, headers=server.admin)  # unchanged
    assert server.client.delete("/v1/segments/buyers", headers=server.admin).status_code == 204
    created = server.client.post("/v1/sources", json={"name": "app"}, headers=server.admin).json()
    # An event an earlier rule rejected, valid now: the replay accepts it.
    valid = json.dumps({"type": "track", "userId": "u5", "event": "Fine"}).encode()
    web = server.runtime.sources.authenticate(server.write_key)
    assert web is not None
    server.runtime.quarantine.add(
        web.id, server.runtime.clock.now(), [Rejection(0, "old_rule", None, "", valid)]
    )
    replayed = server.client.post("/v1/quarantine/replay", json={}, headers=server.admin).json()
    assert len(replayed["replayed"]) == 1
    page = server.client.get("/v1/audit", params={"limit": 1000}, headers=server.admin).json()
    entries = page["entries"]
    assert [(e["action"], e["target"], e["actor"]) for e in entries[:2]] == [
        ("source.create", web.id, "cli"),
        ("key.create", admin_id.id, "cli"),
    ]
    entries = entries[1:]
    assert [(e["action"], e["target"]) for e in entries] == [
        ("key.create", admin_id.id),
        ("consent.set", server.runtime.keyring.digest(pid)),
        ("segment.create", "buyers"),
        ("segment.update", "buyers"),
        ("segment.delete", "buyers"),
        ("source.create", created["id"]),
        ("quarantine.replay", "quarantine"),
    ]
    assert {e["actor"] for e in entries[1:]} == {admin_id.id}
    assert json.loads(entries[1]["details"])["purposes"] == {"push": "granted"}
    assert json.loads(entries[-1]["details"]) == {"ids": replayed["replayed"]}
    assert page["head_seq"] == entries[-1]["seq"] and page["head_hash"] == entries[-1]["hash"]
    assert AuditLog(server.runtime.engine).verify() is None
    second = server.client.get("/v1/audit", params={"after": 6}, headers=server.admin).json()
    assert [e["seq"] for e in second["entries"]] == [7, 8]
