"""A server on a manual clock for segment scenarios: send events, move time, look."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from remarket.api import Runtime, create_app
from remarket.clock import ManualClock
from remarket.config import Settings
from remarket.storage.state import segment_outbox, segment_timers, segments
from tests.api.harness import Server


@dataclass
class World:
    server: Server
    clock: ManualClock

    @property
    def runtime(self) -> Runtime:
        return self.server.runtime

    def send(self, *events: dict[str, Any]) -> None:
        stamped = [
            {"messageId": str(uuid.uuid4()), "timestamp": self.clock.now().isoformat()} | e
            for e in events
        ]
        response = self.server.send("/v1/batch", {"batch": stamped})
        assert response.status_code == 200, response.text
        assert response.json()["accepted"] == len(stamped), response.json()

    def advance(self, delta: timedelta) -> datetime:
        return self.clock.advance(delta)

    def _busy(self) -> int:
        now = self.clock.now()
        with self.runtime.engine.connect() as conn:
            outbox = conn.scalar(select(func.count()).select_from(segment_outbox)) or 0
            due = conn.scalar(select(func.count()).where(segment_timers.c.due_at <= now)) or 0
            pending = (
                conn.scalar(
                    select(func.count()).where(
                        segments.c.pending.is_(True), segments.c.deleted_at.is_(None)
                    )
                )
                or 0
            )
        return int(outbox) + int(due) + int(pending)

    def settle(self, timeout: float = 20.0) -> None:
        """Wait until workers, timers, backfills and the outbox have nothing left to do."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.server.drain(timeout)
            if self._busy() == 0:
                end = self.server.client.get("/healthz").json()["log_end_offset"]
                self.server.drain(timeout)
                again = self.server.client.get("/healthz").json()["log_end_offset"]
                if end == again and self._busy() == 0:
                    return
            time.sleep(0.02)
        raise AssertionError("segment workers did not settle")

    def profile(self, **identifier: str) -> str:
        response = self.server.client.get(
            "/v1/profiles", params=identifier, headers=self.server.admin
        )
        assert response.status_code == 200, response.json()
        return str(response.json()["profile_id"])

    def members(self, segment: str) -> set[str]:
        response = self.server.client.get(
            f"/v1/segments/{segment}/members", params={"limit": 1000}, headers=self.server.admin
        )
        assert response.status_code == 200, response.json()
        return {m["profile_id"] for m in response.json()["members"]}

    def published(self) -> list[tuple[str, str, str | None]]:
        """Segment transitions in the warehouse: (event, segment, user or anonymous id)."""
        rows = self.runtime.warehouse.query(
            "SELECT event, properties, user_id, anonymous_id FROM events "
            "WHERE source_id = 'segments' ORDER BY \"offset\""
        )
        out = []
        for event, properties, user_id, anonymous_id in rows:
            props = msgspec.json.decode(properties) if isinstance(properties, str) else properties
            out.append((event, props["segment"], user_id or anonymous_id))
        return out

    def save(self, definition: dict[str, Any]) -> dict[str, Any]:
        response = self.server.client.put(
            f"/v1/segments/{definition['name']}", json=definition, headers=self.server.admin
        )
        assert response.status_code == 200, response.json()
        body: dict[str, Any] = response.json()
        return body


@contextmanager
def running(data_dir: Path, clock: ManualClock) -> Iterator[World]:
    """A server on ``data_dir``: a second one on the same folder is a restart."""
    settings = Settings(data_dir=data_dir, log_fsync="normal", worker_poll_interval_s=0.01)
    with TestClient(create_app(settings, clock=clock)) as client:
        # Fresh keys each start (on a restart the old ones would do as well).
        server = Server.of(client, f"web-{uuid.uuid4().hex[:8]}")
        yield World(server, clock)
