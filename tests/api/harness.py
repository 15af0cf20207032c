"""A server under test: a TestClient with a write key and an admin API key."""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx2
from fastapi.testclient import TestClient

from remarket.api import Runtime


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
        """Wait until the workers have applied everything in the log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            health = self.client.get("/healthz").json()
            lag = health["lag"]
            if health["log_end_offset"] == 0 or (len(lag) == 5 and not any(lag.values())):
                return
            time.sleep(0.02)
        raise AssertionError(f"workers did not catch up: {health}")
