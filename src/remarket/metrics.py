"""Prometheus metrics that every layer reports to and `/metrics` exposes."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "EVENTS_ACCEPTED",
    "EVENTS_DUPLICATE",
    "EVENTS_REJECTED",
    "EVENTS_UNREADABLE",
    "GUARD_EVENTS",
    "LOG_LAG",
    "REQUEST_LATENCY",
    "WORKER_EVENTS",
]

EVENTS_ACCEPTED: Final = Counter(
    "remarket_events_accepted", "Events appended to the log.", ["source"]
)
EVENTS_DUPLICATE: Final = Counter(
    "remarket_events_duplicate", "Events dropped as replays of a known messageId.", ["source"]
)
EVENTS_REJECTED: Final = Counter(
    "remarket_events_rejected", "Events refused or quarantined, by reason.", ["reason"]
)
GUARD_EVENTS: Final = Counter(
    "remarket_guard_events",
    "Events the guard and the consent filter caught, by kind (bot_crawler, rate_limited_ip, "
    "blocked, anomaly, consent_dropped, ...); counted when stored, every guard_refresh_s.",
    ["kind"],
)
LOG_LAG: Final = Gauge(
    "remarket_log_lag", "Log records not yet applied by a consumer.", ["consumer"]
)
WORKER_EVENTS: Final = Counter(
    "remarket_worker_events", "Log records applied by a consumer.", ["consumer"]
)
REQUEST_LATENCY: Final = Histogram(
    "remarket_request_seconds",
    "HTTP request latency by route and status class.",
    ["route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
EVENTS_UNREADABLE: Final = Counter(
    "remarket_events_unreadable",
    "Sealed log records skipped by workers because their key was destroyed (erasure).",
)
