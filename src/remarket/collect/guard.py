"""The abuse guard at collect: block lists, rate limits, bot flags and velocity anomalies.

Per request (before the events are decoded): the client's IP against the block lists
(403) and against its rate limit, the write key against its rate limit (429 with
Retry-After). Per event (a pipeline stage): bots are flagged by user agent (the event
stays in the log, counted, and the workers keep it out of the warehouse, profiles and
segments); a profile or IP far above its usual rate has the excess quarantined with the
reason ``velocity_anomaly`` and a report stored. Counters and reports are kept in memory
and written to the state store every ``guard_refresh_s``
(:class:`~remarket.collect.protection.Protection`).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from itertools import islice
from typing import Any, Final

import msgspec

from remarket.clock import Clock
from remarket.collect.bots import BotDetector
from remarket.collect.context import context_string
from remarket.collect.guard_store import GuardStore
from remarket.collect.stages import Event, InFlight
from remarket.collect.velocity import Spike, Velocity
from remarket.config import Settings
from remarket.errors import Blocked, RateLimited

__all__ = ["ANOMALY", "Guard", "NetworkSet", "TokenBuckets"]

ANOMALY: Final = "velocity_anomaly"
"""The quarantine reason of events held back by the velocity check."""

_log = logging.getLogger(__name__)
_NO_SOURCE: Final = "-"  # counters of requests refused before their write key is known
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class NetworkSet:
    """IPv4 and IPv6 networks; membership costs one set lookup per distinct prefix length.

    >>> nets = NetworkSet(["10.0.0.0/8", "2001:db8::/32"])
    >>> nets.contains("10.1.2.3"), nets.contains("2001:db8:1::9"), nets.contains("11.0.0.1")
    (True, True, False)
    """

    def __init__(self, networks: Iterable[str] = ()) -> None:
        self._by_version: dict[int, dict[int, set[int]]] = {4: {}, 6: {}}
        for text in networks:
            net = ipaddress.ip_network(text, strict=False)
            self._by_version[net.version].setdefault(net.prefixlen, set()).add(
                int(net.network_address) >> (net.max_prefixlen - net.prefixlen)
            )
        self.empty = not any(self._by_version.values())

    def contains(self, ip: str | IPAddress | None) -> bool:
        if self.empty or ip is None:
            return False
        if isinstance(ip, str):
            try:
                ip = ipaddress.ip_address(ip)
            except ValueError:
                return False
        if self._matches(ip):
            return True
        # An IPv4 client seen through an IPv6 socket: blocked by its IPv4 networks too.
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        return mapped is not None and self._matches(mapped)

    def _matches(self, ip: IPAddress) -> bool:
        value, bits = int(ip), ip.max_prefixlen
        return any(
            value >> (bits - prefix) in heads
            for prefix, heads in self._by_version[ip.version].items()
        )


class _Bucket(msgspec.Struct, gc=False):
    """Tokens left at a time (untracked by the garbage collector, like the messages)."""

    tokens: float
    at: float


class TokenBuckets:
    """A token bucket per key: ``rate`` events per second, at most ``burst`` at once.

    >>> b = TokenBuckets(rate=10, burst=20)
    >>> b.take("k", 20, now=0.0), b.take("k", 5, now=0.0), b.take("k", 5, now=0.5)
    (0.0, 0.5, 0.0)
    """

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self._max = max_keys
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, key: str, n: int, now: float) -> float:
        """Take ``n`` tokens: 0.0 if granted, else the seconds until they would be."""
        # A request larger than the burst passes when the bucket is full, or never would.
        n = min(n, self.burst)
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= self._max:
                    for old in list(islice(self._buckets, self._max // 10 or 1)):
                        del self._buckets[old]
                bucket = self._buckets[key] = _Bucket(float(self.burst), now)
            tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
            if tokens >= n:
                bucket.tokens = tokens - n
                return 0.0
            bucket.tokens = tokens
            return (n - tokens) / self.rate


def _networks(texts: Iterable[str], setting: str) -> NetworkSet:
    try:
        return NetworkSet(texts)
    except ValueError as exc:
        raise ValueError(f"{setting}: {exc}") from exc


class Guard:
    """The guard of one collector process (thread-safe where the API calls it)."""

    def __init__(self, settings: Settings, store: GuardStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._exempt = _networks(settings.guard_exempt_networks, "guard_exempt_networks")
        self._proxies = _networks(settings.guard_trusted_proxies, "guard_trusted_proxies")
        self._blocked = NetworkSet()
        self.key_limit = (
            TokenBuckets(settings.guard_key_events_per_s, settings.guard_key_burst)
            if settings.guard_key_events_per_s > 0
            else None
        )
        self.ip_limit = (
            TokenBuckets(settings.guard_ip_events_per_s, settings.guard_ip_burst)
            if settings.guard_ip_events_per_s > 0
            else None
        )
        self._bots = BotDetector() if settings.guard_bot_detection else None
        self._window_s = settings.guard_velocity_window_s
        self._profiles = Velocity(settings.guard_velocity_factor, settings.guard_velocity_floor)
        self._ips = Velocity(settings.guard_velocity_factor, settings.guard_velocity_ip_floor)
        self._counts: defaultdict[tuple[str, str], int] = defaultdict(int)
        self._reports: list[dict[str, Any]] = []
        self.subject_of: Callable[[str], str] = str
        """How a profile's id is stored in an anomaly report (the pseudonymiser's hash
        when ids are pseudonymised)."""

    # -- per request -------------------------------------------------------------

    def client_ip(self, peer: str | None, forwarded_for: str | None) -> str | None:
        """The client's address: the peer's, or, behind a trusted proxy, the nearest
        address in X-Forwarded-For that is not a trusted proxy. None when it is not an
        IP address (a Unix socket, a test client): no IP checks apply then."""
        client = peer
        if peer is not None and forwarded_for is not None and self._proxies.contains(peer):
            for hop in reversed(forwarded_for.split(",")):
                hop = hop.strip()
                if hop and not self._proxies.contains(hop):
                    client = hop
                    break
        if client is None:
            return None
        try:
            return str(ipaddress.ip_address(client))
        except ValueError:
            return None

    def screen(self, ip: str | None) -> None:
        """Refuse a blocked client before its request body is read."""
        if self._blocked.contains(ip):
            self.count(_NO_SOURCE, "blocked")
            raise Blocked(f"requests from {ip} are blocked", field="ip")

    def admit(self, source_id: str, ip: str | None, events: int) -> None:
        """Take ``events`` from the write key's and the IP's rate limits, or raise."""
        now = self._clock.now().timestamp()
        if self.key_limit is not None:
            wait = self.key_limit.take(source_id, events, now)
            if wait:
                self.count(source_id, "rate_limited_key", events)
                raise RateLimited(
                    f"this write key may send {self.key_limit.rate:g} events/s",
                    retry_after=math.ceil(wait),
                    field="Authorization",
                )
        if self.ip_limit is not None and ip is not None and not self._exempt.contains(ip):
            wait = self.ip_limit.take(ip, events, now)
            if wait:
                self.count(source_id, "rate_limited_ip", events)
                raise RateLimited(
                    f"one client IP may send {self.ip_limit.rate:g} events/s",
                    retry_after=math.ceil(wait),
                    field="ip",
                )

    # -- per event (a pipeline stage) --------------------------------------------

    def __call__(self, batch: InFlight) -> None:
        events = batch.events
        if not events:
            return
        bots, default_agent = self._bots, batch.user_agent
        people: list[Event] = []  # one pass: flags, and who counts for the velocity check
        subjects: list[str] = []
        bot_counts: dict[str, int] = {}
        for event in events:
            m = event.message
            kind = None
            if bots is not None:
                agent = context_string(bytes(m.context), "userAgent") or default_agent
                if agent:
                    kind = bots.kind(agent)
            m.bot = kind  # also clears a flag a client sent
            if kind is not None:
                bot_counts[kind] = bot_counts.get(kind, 0) + 1
                continue  # a bot's rate is not a person's
            # Ids are text by now (validation made them so).
            subject = m.user_id if m.user_id is not None else m.anonymous_id
            if subject is not None:
                people.append(event)
                subjects.append(subject)  # type: ignore[arg-type]
        if batch.trusted:
            return  # an operator's own events: not counted, no velocity check
        source_id = batch.source.id
        for found, n in bot_counts.items():
            self._counts[source_id, f"bot_{found}"] += n
        window = int(batch.received_at.timestamp()) // self._window_s
        held: dict[int, str] = {}
        ip = batch.ip
        if ip is not None and not self._exempt.contains(ip):
            over = self._ips.hit(ip, window, len(events))
            for event in events[len(events) - over :] if over else ():
                held[event.index] = "ip"
        for at in self._profiles.hit_each(subjects, window):
            event = people[at]
            if event.index not in held:
                held[event.index] = "anonymousId" if event.message.user_id is None else "userId"
        if held:
            kept = []
            for event in events:
                if event.index in held:
                    batch.reject(event.index, ANOMALY, held[event.index], "over its usual rate")
                else:
                    kept.append(event)
            batch.events = kept
            self._counts[source_id, "anomaly"] += len(held)
            self._report(batch, window)

    def _report(self, batch: InFlight, window: int) -> None:
        spikes = [("profile", s) for s in self._profiles.take_spikes()]
        spikes += [("ip", s) for s in self._ips.take_spikes()]
        for kind, spike in spikes:
            self._reports.append(self._anomaly(kind, spike, batch.source.id, window))

    def _anomaly(self, kind: str, spike: Spike, source_id: str, window: int) -> dict[str, Any]:
        subject = self.subject_of(spike.subject) if kind == "profile" else spike.subject
        _log.warning(
            "velocity anomaly: %s %s over %d events in %d s (usual %.1f)",
            kind,
            subject,
            spike.threshold,
            self._window_s,
            spike.baseline,
        )
        return {
            "kind": kind,
            "subject": subject[:512],
            "source_id": source_id,
            "window_start": datetime.fromtimestamp(window * self._window_s, UTC),
            "baseline": round(spike.baseline),
            "threshold": spike.threshold,
            "detected_at": self._clock.now(),
        }

    # -- counters, reports and block lists ---------------------------------------

    def count(self, source_id: str, kind: str, n: int = 1) -> None:
        """Count ``n`` events of ``kind`` (bot_crawler, blocked, consent_dropped, ...)."""
        self._counts[source_id, kind] += n

    def pending(self) -> dict[tuple[str, str], int]:
        """Counts not yet flushed to the state store."""
        return dict(self._counts)

    def take(self) -> tuple[str, dict[tuple[str, str], int], list[dict[str, Any]]]:
        """The day, counts and anomaly reports gathered since the last call (on the
        event loop, which is where they are counted)."""
        counts, self._counts = self._counts, defaultdict(int)
        reports, self._reports = self._reports, []
        return self._clock.now().date().isoformat(), dict(counts), reports

    def give_back(self, counts: dict[tuple[str, str], int], reports: list[dict[str, Any]]) -> None:
        """What :meth:`take` returned and could not be stored: kept for the next time."""
        for key, n in counts.items():
            self._counts[key] += n
        self._reports[:0] = reports

    def refresh(self) -> None:
        """Reload the block lists from the state store (blocking)."""
        self._blocked = NetworkSet(b.network for b in self._store.blocks())

    @property
    def store(self) -> GuardStore:
        return self._store
