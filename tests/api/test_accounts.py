"""Console accounts over HTTP: login (cookie and token), me, logout, session expiry,
lockout, users CRUD, the last admin, and what each leaves in the audit log."""

from __future__ import annotations

import json
import typing
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient
from sqlalchemy import select

from remarket.api import ROLES, create_app
from remarket.api.accounts import Role
from remarket.api.auth import SESSION_COOKIE
from remarket.api.passwords import Passwords
from remarket.api.users import UserStore
from remarket.clock import ManualClock
from remarket.privacy import AuditLog
from remarket.storage.state import user_sessions, users
from tests.api.access import PASSWORD, bearer, cheap_settings, session_token
from tests.api.harness import Server

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
IDLE = timedelta(hours=1)
MAX_AGE = timedelta(hours=8)
MAX_FAILURES = 3
WINDOW = timedelta(minutes=10)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def server(tmp_path: Path, clock: ManualClock) -> Iterator[Server]:
    settings = cheap_settings(
        tmp_path / "var",
        session_idle_timeout_s=int(IDLE.total_seconds()),
        session_max_age_s=int(MAX_AGE.total_seconds()),
        login_max_failures=MAX_FAILURES,
        login_failure_window_s=int(WINDOW.total_seconds()),
    )
    with TestClient(create_app(settings, clock=clock, workers=False)) as client:
        yield Server.of(client)


def login(server: Server, email: str, password: str = PASSWORD) -> Any:
    reply = server.client.post("/v1/auth/login", json={"email": email, "password": password})
    server.client.cookies.clear()
    return reply


def audit(server: Server) -> list[tuple[str, str, str, dict[str, Any]]]:
    return [
        (e.actor, e.action, e.target, json.loads(e.details))
        for e in AuditLog(server.runtime.engine).entries(limit=1000)
    ]


def test_login_sets_a_strict_httponly_cookie_and_answers_a_token(server: Server) -> None:
    ann = server.runtime.users.create("ann@example.com", "marketer", PASSWORD)
    reply = server.client.post(
        "/v1/auth/login", json={"email": " Ann@Example.COM ", "password": PASSWORD}
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["user"]["id"] == ann.id and body["user"]["role"] == "marketer"
    assert body["token"].startswith("rs_")
    assert body["expires_at"].startswith((T0 + MAX_AGE).isoformat()[:19])
    cookie = reply.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}={body['token']};")
    attributes = {a.strip().lower() for a in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/"} <= attributes
    assert "secure" not in attributes  # plain http: a Secure cookie would never come back
    assert f"max-age={int(MAX_AGE.total_seconds())}" in attributes
    # The cookie alone authenticates (the browser console), the token alone too (scripts).
    by_cookie = server.client.get("/v1/auth/me")
    server.client.cookies.clear()
    by_token = server.client.get("/v1/auth/me", headers=bearer(body["token"]))
    assert by_cookie.json() == by_token.json()
    assert by_token.json() == {
        "kind": "session",
        "actor": f"user:{ann.id}",
        "role": "marketer",
        "scopes": sorted(ROLES["marketer"]),
        "user": body["user"],
    }


def test_the_cookie_is_secure_over_https(server: Server) -> None:
    server.runtime.users.create("ann@example.com", "viewer", PASSWORD)
    https = TestClient(server.client.app, base_url="https://testserver")
    reply = https.post("/v1/auth/login", json={"email": "ann@example.com", "password": PASSWORD})
    assert "secure" in {a.strip().lower() for a in reply.headers["set-cookie"].split(";")}


def test_me_with_an_api_key(server: Server) -> None:
    key = server.runtime.keys.authenticate(server.admin_key)
    assert key is not None
    me = server.client.get("/v1/auth/me", headers=server.admin).json()
    assert me == {
        "kind": "api_key",
        "actor": key.id,
        "role": "admin",
        "scopes": sorted(ROLES["admin"]),
        "user": None,
    }


def test_logout_ends_the_session_and_clears_the_cookie(server: Server) -> None:
    token = session_token(server, "viewer")
    reply = server.client.post("/v1/auth/logout", headers=bearer(token))
    assert reply.status_code == 204
    assert reply.headers["set-cookie"].startswith(f'{SESSION_COOKIE}="";')
    assert server.client.get("/v1/auth/me", headers=bearer(token)).status_code == 401
    assert server.client.post("/v1/auth/logout", headers=bearer(token)).status_code == 401
    api_key = server.client.post("/v1/auth/logout", headers=server.admin)
    assert api_key.status_code == 403 and "revoke the key" in api_key.json()["detail"]
    viewer = server.runtime.users.credentials("viewer@example.com")
    assert viewer is not None
    actions = [(actor, action) for actor, action, _, _ in audit(server)]
    assert actions[-2:] == [(f"user:{viewer[0].id}", "login"), (f"user:{viewer[0].id}", "logout")]


def test_wrong_password_and_unknown_address_look_the_same(server: Server) -> None:
    ann = server.runtime.users.create("ann@example.com", "admin", PASSWORD)
    wrong = login(server, "ann@example.com", "not the password at all")
    unknown = login(server, "nobody@example.com", "not the password at all")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert wrong.headers["content-type"] == "application/problem+json"
    assert "set-cookie" not in wrong.headers
    failures = [
        (target, details["reason"])
        for _, a, target, details in audit(server)
        if a == "login.failure"
    ]
    assert failures == [(ann.id, "password"), ("unknown", "unknown_user")]
    # Neither the address nor the password is in the audit log.
    text = str(audit(server))
    assert "nobody@example.com" not in text and "not the password" not in text


@pytest.mark.parametrize("exists", [True, False], ids=["known-user", "unknown-address"])
def test_repeated_failures_lock_the_address_for_the_window(
    server: Server, clock: ManualClock, exists: bool
) -> None:
    if exists:
        server.runtime.users.create("ann@example.com", "viewer", PASSWORD)
    for _ in range(MAX_FAILURES):
        assert login(server, "ann@example.com", "wrong password here").status_code == 401
    locked = login(server, "ANN@example.com", PASSWORD)  # even the right password
    assert locked.status_code == 429
    assert locked.json()["code"] == "too_many_attempts"
    assert int(locked.headers["retry-after"]) == int(WINDOW.total_seconds())
    # Other addresses are not affected.
    assert login(server, "bob@example.com", "wrong password here").status_code == 401
    clock.advance(WINDOW)
    assert login(server, "ann@example.com", PASSWORD).status_code == (200 if exists else 401)


def test_a_success_forgets_earlier_failures(server: Server) -> None:
    server.runtime.users.create("ann@example.com", "viewer", PASSWORD)
    for _ in range(MAX_FAILURES - 1):
        login(server, "ann@example.com", "wrong password here")
    assert login(server, "ann@example.com").status_code == 200
    for _ in range(MAX_FAILURES - 1):
        login(server, "ann@example.com", "wrong password here")
    assert login(server, "ann@example.com").status_code == 200


def test_a_session_ends_when_idle(server: Server, clock: ManualClock) -> None:
    token = session_token(server, "viewer")
    clock.advance(IDLE - timedelta(minutes=1))
    assert server.client.get("/v1/auth/me", headers=bearer(token)).status_code == 200
    clock.advance(IDLE - timedelta(minutes=1))  # used a minute ago: still alive
    assert server.client.get("/v1/auth/me", headers=bearer(token)).status_code == 200
    clock.advance(IDLE)
    assert server.client.get("/v1/auth/me", headers=bearer(token)).status_code == 401


def test_a_session_in_use_ends_at_its_maximum_age(server: Server, clock: ManualClock) -> None:
    token = session_token(server, "viewer")
    used = timedelta()
    while used + IDLE / 2 < MAX_AGE:
        clock.advance(IDLE / 2)
        used += IDLE / 2
        assert server.client.get("/v1/auth/me", headers=bearer(token)).status_code == 200
    clock.advance(MAX_AGE - used)
    assert server.client.get("/v1/auth/me", headers=bearer(token)).status_code == 401


def test_tokens_and_passwords_are_stored_as_hashes_only(server: Server) -> None:
    token = session_token(server, "viewer")
    with server.runtime.engine.connect() as conn:
        stored = conn.execute(select(users.c.password_hash)).scalar_one()
        sessions = [tuple(r) for r in conn.execute(select(user_sessions))]
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    assert token not in str(sessions) and token[3:] not in str(sessions)


def test_login_upgrades_a_hash_made_with_other_parameters(server: Server) -> None:
    old = UserStore(server.runtime.engine, Passwords(time_cost=2, memory_kib=2048))
    old.create("ann@example.com", "viewer", PASSWORD)
    assert login(server, "ann@example.com").status_code == 200
    found = server.runtime.users.credentials("ann@example.com")
    assert found is not None and "m=1024,t=1," in found[1]
    assert login(server, "ann@example.com").status_code == 200


def test_users_crud_over_http(server: Server) -> None:
    body = {"email": "Bob@Example.com", "role": "analyst", "password": PASSWORD}
    created = server.client.post("/v1/users", json=body, headers=server.admin)
    assert created.status_code == 201, created.text
    bob = created.json()
    assert bob["email"] == "bob@example.com" and bob["scopes"] == sorted(ROLES["analyst"])
    assert "password" not in created.text and PASSWORD not in created.text
    again = server.client.post("/v1/users", json=body, headers=server.admin)
    assert again.status_code == 409 and again.json()["field"] == "email"
    short = server.client.post("/v1/users", json=body | {"password": "short"}, headers=server.admin)
    assert short.status_code == 422 and short.json()["field"] == "password"
    bad_email = server.client.post(
        "/v1/users", json=body | {"email": "no-at-sign"}, headers=server.admin
    )
    assert bad_email.status_code == 400 and bad_email.json()["field"] == "email"
    listed = server.client.get("/v1/users", headers=server.admin).json()
    assert [u["email"] for u in listed] == ["bob@example.com"]
    assert server.client.get(f"/v1/users/{bob['id']}", headers=server.admin).json() == bob
    changed = server.client.patch(
        f"/v1/users/{bob['id']}", json={"role": "viewer"}, headers=server.admin
    )
    assert changed.json()["role"] == "viewer"
    assert server.client.delete(f"/v1/users/{bob['id']}", headers=server.admin).status_code == 204
    assert server.client.get(f"/v1/users/{bob['id']}", headers=server.admin).status_code == 404
    key = server.runtime.keys.authenticate(server.admin_key)
    assert key is not None
    mine = [(a, action, t, d) for a, action, t, d in audit(server) if a == key.id]
    assert mine == [
        (key.id, "user.create", bob["id"], {"role": "analyst"}),
        (key.id, "user.role", bob["id"], {"from": "analyst", "to": "viewer"}),
        (key.id, "user.delete", bob["id"], {"role": "viewer"}),
    ]


def test_a_role_change_applies_to_open_sessions_at_once(server: Server) -> None:
    token = session_token(server, "admin", email="ann@example.com")
    session_token(server, "admin", email="root@example.com")
    assert server.client.get("/v1/users", headers=bearer(token)).status_code == 200
    ann = server.runtime.users.credentials("ann@example.com")
    assert ann is not None
    server.client.patch(f"/v1/users/{ann[0].id}", json={"role": "viewer"}, headers=server.admin)
    assert server.client.get("/v1/users", headers=bearer(token)).status_code == 403


def test_a_new_password_or_a_revocation_ends_every_session(server: Server) -> None:
    first = session_token(server, "viewer")
    second = session_token(server, "viewer")
    viewer = server.runtime.users.credentials("viewer@example.com")
    assert viewer is not None
    uid = viewer[0].id
    new = {"password": "a brand new passphrase"}
    server.client.patch(f"/v1/users/{uid}", json=new, headers=server.admin)
    for token in (first, second):
        assert server.client.get("/v1/auth/me", headers=bearer(token)).status_code == 401
    assert login(server, "viewer@example.com").status_code == 401
    fresh = login(server, "viewer@example.com", new["password"]).json()["token"]
    ended = server.client.delete(f"/v1/users/{uid}/sessions", headers=server.admin)
    assert ended.json() == {"ended": 1}
    assert server.client.get("/v1/auth/me", headers=bearer(fresh)).status_code == 401


def test_the_last_admin_can_be_neither_deleted_nor_demoted(server: Server) -> None:
    token = session_token(server, "admin", email="ann@example.com")
    ann = server.runtime.users.credentials("ann@example.com")
    assert ann is not None
    uid = ann[0].id
    for method, extra in (("DELETE", {}), ("PATCH", {"json": {"role": "marketer"}})):
        reply = server.client.request(method, f"/v1/users/{uid}", headers=bearer(token), **extra)
        assert reply.status_code == 409, reply.text
        assert "last admin" in reply.json()["detail"]
    session_token(server, "admin", email="bob@example.com")
    assert server.client.delete(f"/v1/users/{uid}", headers=bearer(token)).status_code == 204
    # Deleting a user ends their sessions, including the one that asked.
    assert server.client.get("/v1/auth/me", headers=bearer(token)).status_code == 401


def test_the_role_literal_lists_every_role() -> None:
    assert set(typing.get_args(Role)) == set(ROLES)


def test_an_unknown_address_costs_a_password_check_too(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No shortcut for unknown addresses: both answers take one argon2id verification."""
    server.runtime.users.create("ann@example.com", "viewer", PASSWORD)
    checked: list[str] = []
    original = PasswordHasher.verify

    def spy(self: PasswordHasher, stored: str, password: str) -> bool:
        checked.append(stored)
        return original(self, stored, password)

    monkeypatch.setattr(PasswordHasher, "verify", spy)
    login(server, "ann@example.com", "wrong password here")
    login(server, "nobody@example.com", "wrong password here")
    assert len(checked) == 2
    assert all(s.startswith("$argon2id$v=19$m=1024,t=1,") for s in checked)
