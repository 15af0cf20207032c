"""A synthetic shop's visitors: page views, product views, carts, orders and sign-ins."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

__all__ = ["Shop", "Visitor"]

_CATEGORIES: Final = ("shoes", "shirts", "jackets", "bags", "hats", "socks")
_FIRST: Final = ("Ana", "Ben", "Chloe", "Dev", "Eva", "Finn", "Gia", "Hugo", "Ines", "Jon")
_LAST: Final = ("Alves", "Berg", "Costa", "Duarte", "Engel", "Fox", "Gray", "Holm")


@dataclass(frozen=True, slots=True)
class Visitor:
    anonymous_ids: tuple[str, ...]
    user_id: str | None
    email: str | None


class Shop:
    """Generates Segment-spec events for ``visitors`` people over ``days`` up to ``end``.

    The same seed gives the same events. About a third of the visitors sign in; some of
    those come back on a second device, so identity resolution has merges to do.

    >>> shop = Shop(visitors=5, seed=1, end=datetime(2026, 1, 1))
    >>> events = list(shop.events())
    >>> {e["type"] for e in events} >= {"page", "track"}
    True
    """

    def __init__(
        self,
        *,
        visitors: int,
        end: datetime,
        days: int = 30,
        products: int = 200,
        seed: int = 0,
    ) -> None:
        if visitors < 1:
            raise ValueError("a shop needs at least one visitor")
        self._rng = random.Random(seed)
        self._n = visitors
        self._end = end
        self._days = days
        self._products: list[dict[str, Any]] = [
            {
                "product_id": f"sku-{i:04d}",
                "category": self._rng.choice(_CATEGORIES),
                "price": round(self._rng.uniform(5, 250), 2),
            }
            for i in range(products)
        ]
        self.visitors: list[Visitor] = []

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def events(self) -> Iterator[dict[str, Any]]:
        """Every event, visitor by visitor (each visitor's in time order)."""
        for index in range(self._n):
            yield from self._visit(index)

    def _visit(self, index: int) -> Iterator[dict[str, Any]]:
        rng = self._rng
        signs_in = rng.random() < 0.35
        devices = 2 if signs_in and rng.random() < 0.3 else 1
        user_id = f"user-{index:06d}" if signs_in else None
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        email = f"{first}.{last}.{index}@example.com".lower() if signs_in else None
        anon_ids = tuple(self._uuid() for _ in range(devices))
        self.visitors.append(Visitor(anon_ids, user_id, email))
        for anonymous_id in anon_ids:
            at = self._end - timedelta(seconds=rng.uniform(0, self._days * 86_400))
            for _ in range(rng.randint(1, 3)):
                yield from self._session(anonymous_id, user_id, email, (first, last), at)
                at += timedelta(hours=rng.uniform(1, 72))
                if at > self._end:
                    break

    def _session(
        self,
        anonymous_id: str,
        user_id: str | None,
        email: str | None,
        name: tuple[str, str],
        at: datetime,
    ) -> Iterator[dict[str, Any]]:
        rng = self._rng

        def event(kind: str, **fields: Any) -> dict[str, Any]:
            nonlocal at
            at += timedelta(seconds=rng.uniform(5, 120))
            base = {
                "type": kind,
                "messageId": self._uuid(),
                "anonymousId": anonymous_id,
                "timestamp": at.isoformat(),
                "context": {"library": {"name": "remarket-sim", "version": "1"}},
            }
            return base | fields

        yield event("page", name="Home", properties={"path": "/"})
        viewed = rng.sample(self._products, rng.randint(1, 6))
        for product in viewed:
            yield event("track", event="Product Viewed", properties=dict(product))
        if user_id is not None and email is not None:
            traits = {"email": email, "first_name": name[0], "last_name": name[1]}
            yield event("identify", userId=user_id, traits=traits)
        if rng.random() < 0.4:
            cart = rng.sample(viewed, rng.randint(1, len(viewed)))
            for product in cart:
                yield event("track", event="Product Added", properties=dict(product))
            if rng.random() < 0.45:
                total = round(sum(p["price"] for p in cart), 2)
                order = {"order_id": self._uuid(), "revenue": total, "currency": "EUR"}
                yield event(
                    "track",
                    event="Order Completed",
                    properties=order | {"products": cart},
                    **({"userId": user_id} if user_id else {}),
                )
