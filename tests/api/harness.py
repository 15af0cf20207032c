"""A server under test: a TestClient with a write key and an admin API key."""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx2
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from remarket.api import Runtime
from remarket.storage.state import segment_outbox


@dataclass
class Server:
    client: TestClient
    runtime: Runtime
    write_key: str
    admin_key: str

    @classmethod
    def of(cls, client: TestClient, source: str = "web") -> Server:
        """The app that ``client`` started, with a new source's write key and an admin
        API key."""
        runtime: Runtime = client.app.state.runtime  # type: ignore[attr-defined]
        _, write_key = runtime.sources.create(source)
        _, admin_key = runtime.keys.create("tests", "admin")
        return cls(client, runtime, write_key, admin_key)

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}

    def send(self, path: str, body: object, **kwargs: object) -> httpx2.Response:
        return self.client.post(path, json=body, auth=(self.write_key, ""), **kwargs)  # type: ignore[arg-type]

    def drain(self, timeout: float = 20.0) -> None:
        """Wait until the workers have applied everything in the log, and what they and
        the API queued for it (segment transitions, consent changes) is in it and applied
        too: caught up, then an empty outbox, then still caught up at the same end."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            health = self._caught_up()
            if health is not None and self._outbox_empty() and self._caught_up() == health:
                return
            time.sleep(0.02)
        raise AssertionError(f"workers did not catch up: {self.client.get('/healthz').json()}")

    def _caught_up(self) -> dict[str, object] | None:
        health: dict[str, object] = self.client.get("/healthz").json()
        lag = health["lag"]
        assert isinstance(lag, dict)
        if health["log_end_offset"] == 0 or (len(lag) == 5 and not any(lag.values())):
            return health
        return None

    def _outbox_empty(self) -> bool:
        with self.runtime.engine.connect() as conn:
            return conn.scalar(select(func.count()).select_from(segment_outbox)) == 0
