"""A server on a manual clock for journey scenarios: segments' World plus journeys."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from remarket.clock import ManualClock
from remarket.storage.state import channel_outbox, journey_instances, journeys
from tests.segments.world import World, running

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

    def outbox(self) -> list[dict[str, Any]]:
        """Every message journeys handed to channels, oldest first."""
        with self.runtime.engine.connect() as conn:
            rows = conn.execute(select(channel_outbox).order_by(channel_outbox.c.id))
            return [dict(r._mapping) for r in rows]


@contextmanager
def journey_world(data_dir: Path, clock: ManualClock) -> Iterator[JourneyWorld]:
    """A server on ``data_dir``; a second one on the same folder is a restart."""
    with running(data_dir, clock) as world:
        yield JourneyWorld(world.server, world.clock)
