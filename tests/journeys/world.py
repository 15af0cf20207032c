"""A server on a manual clock for journey scenarios: segments' World plus journeys."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, or_, select

from remarket.api import create_app
from remarket.channels import Delivery
from remarket.channels.registry import ProviderStore
from remarket.channels.secrets import SecretBox, load_key
from remarket.channels.templates import Template, TemplateStore
from remarket.clock import ManualClock
from remarket.config import Settings
from remarket.journeys import JourneyRuntime
from remarket.storage.state import channel_outbox, journey_instances, journeys
from tests.api.harness import Server
from tests.segments.world import World

CART_ABANDONMENT: dict[str, Any] = {
    "id": "cart-abandonment",
    "entry": {"type": "event", "event": "Product Added"},
    "exit_when": [{"event": "Order Completed"}],
    "goal": {"event": "Order Completed", "within": "1d"},
    "start": "wait",
    "nodes": [
        {"id": "wait", "type": "wait", "duration": "1h", "next": "ordered"},
        {
            "id": "ordered",
            "type": "branch",
            "condition": {
                "entry": "o",
                "nodes": [
                    {
                        "id": "o",
                        "type": "performed",
                        "event": "Order Completed",
                        "window": {"last": "1h"},
                    }
                ],
            },
            "then": "done",
            "else": "mail",
        },
        {"id": "mail", "type": "send", "channel": "email", "template": "cart-reminder"},
        {"id": "done", "type": "exit"},
    ],
}


class JourneyWorld(World):
    def _busy(self) -> int:
        now = self.clock.now()
        with self.runtime.engine.connect() as conn:
            due = conn.scalar(
                select(func.count())
                .select_from(journey_instances)
                .join(journeys, journeys.c.id == journey_instances.c.journey_id)
                .where(
                    journey_instances.c.status == "active",
                    journey_instances.c.due_at <= now,
                    journeys.c.status == "active",
                )
            )
        return super()._busy() + int(due or 0)

    def put_journey(self, definition: dict[str, Any], *, activate: bool = True) -> dict[str, Any]:
        client, headers = self.server.client, self.server.admin
        response = client.put(f"/v1/journeys/{definition['id']}", json=definition, headers=headers)
        assert response.status_code == 200, response.json()
        if activate and response.json()["status"] != "active":
            response = client.post(f"/v1/journeys/{definition['id']}/activate", headers=headers)
            assert response.status_code == 200, response.json()
        body: dict[str, Any] = response.json()
        return body

    def move(self, journey_id: str, action: str) -> dict[str, Any]:
        response = self.server.client.post(
            f"/v1/journeys/{journey_id}/{action}", headers=self.server.admin
        )
        assert response.status_code == 200, response.json()
        body: dict[str, Any] = response.json()
        return body

    def funnel(self, journey_id: str) -> dict[str, Any]:
        response = self.server.client.get(
            f"/v1/journeys/{journey_id}/funnel", headers=self.server.admin
        )
        assert response.status_code == 200, response.json()
        body: dict[str, Any] = response.json()
        return body

    def email_provider(self, port: int) -> None:
        """Send e-mail through an SMTP server on 127.0.0.1:``port``."""
        settings = self.runtime.settings
        ProviderStore(self.runtime.engine, SecretBox(load_key(settings))).create(
            name="smtp",
            kind="smtp",
            config={"host": "127.0.0.1", "port": port, "sender": "shop@shop.example"}
            | {"security": "none"},
            credentials={},
            rate_per_s=None,
            now=self.clock.now(),
        )
        TemplateStore(self.runtime.engine).put(
            Template("cart-reminder", "email", "Your cart", None, "You left something behind."),
            now=self.clock.now(),
        )

    def deliver(self, timeout: float = 20.0) -> None:
        """Deliver everything due now: run a deliverer (pausing as the server's journeys
        runtime says) until nothing is due, and wait for any the server's own deliverer
        has in hand."""
        runtime = self.runtime
        journeys_now = JourneyRuntime(runtime.engine, runtime.warehouse, self.clock)

        async def main() -> None:
            delivery = Delivery(
                runtime.engine,
                runtime.settings,
                self.clock,
                journeys_now.is_paused,
                journeys_now.daily_limit,
                seed=1,
            )
            try:
                while await delivery.step():
                    pass
            finally:
                await delivery.aclose()

        deadline = time.monotonic() + timeout
        while True:
            asyncio.run(main())
            if self._undelivered() == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError("the outbox was not delivered")
            time.sleep(0.02)

    def _undelivered(self) -> int:
        """Messages due now that no deliverer has finished with (paused ones aside)."""
        c = channel_outbox.c
        with self.runtime.engine.connect() as conn:
            count = conn.scalar(
                select(func.count()).where(
                    c.status == "pending",
                    c.due_at <= self.clock.now(),
                    or_(c.reason.is_(None), c.reason != "paused"),
                )
            )
        return int(count or 0)

    def outbox(self) -> list[dict[str, Any]]:
        """Every message journeys handed to channels, oldest first."""
        with self.runtime.engine.connect() as conn:
            rows = conn.execute(select(channel_outbox).order_by(channel_outbox.c.id))
            return [dict(r._mapping) for r in rows]


@contextmanager
def journey_world(data_dir: Path, clock: ManualClock, **settings: Any) -> Iterator[JourneyWorld]:
    """A server on ``data_dir``; a second one on the same folder is a restart.
    No quiet hours unless ``channels_quiet_hours`` is given."""
    settings.setdefault("channels_quiet_hours", None)
    # A key given, not made on first use: the server and the test's deliverer would race
    # to create the key file.
    settings.setdefault("channels_key", base64.urlsafe_b64encode(bytes(range(32))).decode())
    config = Settings(
        data_dir=data_dir, log_fsync="normal", worker_poll_interval_s=0.01, **settings
    )
    with TestClient(create_app(config, clock=clock)) as client:
        server = Server.of(client, f"web-{uuid.uuid4().hex[:8]}")
        yield JourneyWorld(server, clock)
