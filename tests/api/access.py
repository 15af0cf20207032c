"""Test helpers for access control: cheap password hashing, users, and their sessions."""

from __future__ import annotations

from pathlib import Path

from remarket.config import Settings
from tests.api.harness import Server

PASSWORD = "correct horse battery staple"


def cheap_settings(data_dir: Path, **overrides: object) -> Settings:
    """Settings whose argon2id costs little: the tests log in hundreds of times."""
    base: dict[str, object] = {
        "data_dir": data_dir,
        "log_fsync": "normal",
        "worker_poll_interval_s": 0.01,
        "password_time_cost": 1,
        "password_memory_kib": 1024,
    }
    return Settings(**(base | overrides))  # type: ignore[arg-type]


def session_token(server: Server, role: str, *, email: str | None = None) -> str:
    """A console user with ``role`` (created if new) logged in: their session token."""
    email = email or f"{role}@example.com"
    if server.runtime.users.credentials(email) is None:
        server.runtime.users.create(email, role, PASSWORD)
    reply = server.client.post("/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert reply.status_code == 200, reply.text
    # The client keeps the session cookie: forget it, so other requests send only what
    # each test gives them.
    server.client.cookies.clear()
    token: str = reply.json()["token"]
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
