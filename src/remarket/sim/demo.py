"""The end-to-end demo: a synthetic shop's traffic sent through the public HTTP API."""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from remarket.sim.shop import Shop

__all__ = ["run_demo"]


def _batches(events: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    it = iter(events)
    return [list(chunk) for chunk in iter(lambda: list(itertools.islice(it, size)), [])]


def _wait_for_workers(client: httpx.Client, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        health: dict[str, Any] = client.get("/healthz").raise_for_status().json()
        lag = health["lag"]
        if (lag and not any(lag.values())) or time.monotonic() > deadline:
            return health
        time.sleep(0.2)


_SEGMENTS: list[dict[str, Any]] = [
    {
        "name": "cart-abandoners",
        "description": "Added to cart in the last 7 days, no order within an hour",
        "entry": "root",
        "nodes": [{"id": "root", "type": "cart_abandoned", "within": "1h"}],
    },
    {
        "name": "big-spenders",
        "description": "More than 300 EUR of orders in 90 days",
        "entry": "root",
        "nodes": [
            {
                "id": "root",
                "type": "aggregate",
                "event": "Order Completed",
                "function": "sum",
                "property": "revenue",
                "window": {"last": "90d"},
                "operator": "gt",
                "value": 300,
            }
        ],
    },
]


def _demo_segments(admin: httpx.Client, timeout: float) -> dict[str, int]:
    """Define two remarketing segments; wait for their backfill; return their sizes."""
    for definition in _SEGMENTS:
        admin.put(f"/v1/segments/{definition['name']}", json=definition).raise_for_status()
    deadline = time.monotonic() + timeout
    while True:
        listed = {s["name"]: s for s in admin.get("/v1/segments").raise_for_status().json()}
        done = all(listed[d["name"]]["status"] == "live" for d in _SEGMENTS)
        if done or time.monotonic() > deadline:
            return {d["name"]: listed[d["name"]]["size"] for d in _SEGMENTS}
        time.sleep(0.2)


def run_demo(
    base_url: str,
    api_key: str,
    *,
    visitors: int = 3000,
    seed: int | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Create a source, send a shop's traffic, wait for the workers, show what landed.

    Returns the figures it printed (for tests).
    """
    console = console or Console()
    with httpx.Client(
        base_url=base_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30
    ) as admin:
        return _run(admin, base_url, visitors, seed, console)


def _run(
    admin: httpx.Client, base_url: str, visitors: int, seed: int | None, console: Console
) -> dict[str, Any]:
    name = f"demo-shop-{datetime.now(UTC):%Y%m%d-%H%M%S-%f}"
    source = admin.post("/v1/sources", json={"name": name}).raise_for_status().json()
    shop = Shop(visitors=visitors, end=datetime.now(UTC), seed=seed or time.time_ns())
    events = list(shop.events())
    batches = _batches(events, 100)
    accepted = 0
    started = time.perf_counter()
    with (
        httpx.Client(base_url=base_url, auth=(source["write_key"], ""), timeout=30) as ingest,
        Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress,
    ):
        task = progress.add_task(f"Sending {len(events):,} events", total=len(events))
        for batch in batches:
            reply = ingest.post("/v1/batch", json={"batch": batch}).raise_for_status().json()
            accepted += reply["accepted"]
            progress.advance(task, len(batch))
    elapsed = time.perf_counter() - started
    _wait_for_workers(admin, timeout=60)
    stats: dict[str, Any] = admin.get("/v1/stats").raise_for_status().json()
    segments = _demo_segments(admin, timeout=60)
    signed_in = next(v for v in shop.visitors if v.user_id and len(v.anonymous_ids) > 1)
    profile = admin.get("/v1/profiles", params={"user_id": signed_in.user_id}).json()
    recent = admin.get(f"/v1/profiles/{profile['profile_id']}/events", params={"limit": 5}).json()

    table = Table(title="What landed", show_header=False)
    table.add_row("events sent", f"{len(events):,} in {len(batches):,} batches")
    table.add_row("accepted", f"{accepted:,} ({len(events) / elapsed:,.0f} events/s)")
    table.add_row("visitors", f"{len(shop.visitors):,}")
    table.add_row("profiles", f"{stats['profiles']:,}")
    table.add_row("events in warehouse", f"{stats['warehouse_events']:,}")
    table.add_row("quarantined", f"{stats['quarantine_pending']:,}")
    for name, size in segments.items():
        table.add_row(f"segment {name}", f"{size:,} members")
    console.print(table)
    console.print(
        f"Sample profile [bold]{profile['profile_id']}[/] "
        f"({len(signed_in.anonymous_ids)} devices merged on sign-in):"
    )
    console.print_json(data={k: profile[k] for k in ("traits", "identities", "event_count")})
    for event in recent["events"]:
        label = event["event"] or event["name"] or ""
        console.print(f"  {event['timestamp']}  {event['type']:<8} {label}")
    return {
        "segments": segments,
        "sent": len(events),
        "accepted": accepted,
        "visitors": len(shop.visitors),
        "sample_profile": profile,
        **stats,
    }
