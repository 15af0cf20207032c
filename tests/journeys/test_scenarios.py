"""Journeys end to end through the HTTP API on a manual clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from remarket.clock import ManualClock
from tests.journeys.world import CART_ABANDONMENT, journey_world

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def test_cart_without_order_gets_one_email_after_an_hour(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    with journey_world(tmp_path / "var", clock) as world:
        world.put_journey(CART_ABANDONMENT)
        world.send({"type": "identify", "userId": "ann", "traits": {"email": "ann@example.com"}})
        world.send({"type": "track", "userId": "ann", "event": "Product Added"})
        world.settle()
        assert world.outbox() == []
        world.advance(timedelta(minutes=59))
        world.settle()
        assert world.outbox() == []
        world.advance(timedelta(minutes=2))
        world.settle()
        sent = world.outbox()
        assert [(m["channel"], m["template_id"], m["node_id"]) for m in sent] == [
            ("email", "cart-reminder", "mail")
        ]
        funnel = world.funnel("cart-abandonment")
        assert funnel["entered"] == 1 and funnel["exited"] == {"completed": 1}


def test_order_within_the_hour_sends_nothing(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    with journey_world(tmp_path / "var", clock) as world:
        world.put_journey(CART_ABANDONMENT)
        world.send({"type": "track", "userId": "bob", "event": "Product Added"})
        world.settle()
        world.advance(timedelta(minutes=30))
        world.send({"type": "track", "userId": "bob", "event": "Order Completed"})
        world.settle()
        world.advance(timedelta(hours=2))
        world.settle()
        assert world.outbox() == []
        funnel = world.funnel("cart-abandonment")
        assert funnel["exited"] == {"exit_event": 1}
        assert funnel["converted"] == 1
