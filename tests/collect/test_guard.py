"""The guard at collect: block lists, rate limits, bot flags, velocity anomalies."""

from __future__ import annotations

import asyncio
import ipaddress
from datetime import timedelta

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from remarket.collect import SourceRegistry, parse_batch, replay_quarantined
from remarket.collect.bots import BotDetector
from remarket.collect.guard import NetworkSet, TokenBuckets
from remarket.collect.velocity import Velocity
from remarket.errors import Blocked, RateLimited
from tests.collect.conftest import MakePipeline
from tests.collect.protected import SOURCE, track

CRAWLERS = [
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
    "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
    "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.0)",
    "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
]
HEADLESS = [
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "HeadlessChrome/120.0.6099.71 Safari/537.36",
    "Mozilla/5.0 (Unknown; Linux x86_64) AppleWebKit/538.1 (KHTML, like Gecko) "
    "PhantomJS/2.1.1 Safari/538.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome-Lighthouse",
]
PEOPLE = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
    "analytics-python/2.3.2",
    "python-requests/2.32.3",
    "curl/8.5.0",
]


@pytest.mark.parametrize("agent", CRAWLERS)
def test_crawlers_are_detected(agent: str) -> None:
    assert BotDetector().kind(agent) == "crawler"


@pytest.mark.parametrize("agent", HEADLESS)
def test_headless_browsers_are_detected(agent: str) -> None:
    assert BotDetector().kind(agent) == "headless"


@pytest.mark.parametrize("agent", PEOPLE)
def test_browsers_and_server_side_sdks_are_not_bots(agent: str) -> None:
    assert BotDetector().kind(agent) is None


@given(st.ip_addresses(), st.data())
def test_a_network_contains_exactly_its_addresses(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, data: st.DataObject
) -> None:
    prefix = data.draw(st.integers(0, address.max_prefixlen))
    network = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
    probe = data.draw(st.ip_addresses(v=address.version))
    assert NetworkSet([str(network)]).contains(str(probe)) == (probe in network)


def test_ipv4_mapped_ipv6_addresses_match_ipv4_networks() -> None:
    assert NetworkSet(["198.51.100.0/24"]).contains("::ffff:198.51.100.7")


def test_token_bucket_says_how_long_to_wait() -> None:
    buckets = TokenBuckets(rate=100, burst=200)
    assert buckets.take("k", 200, now=0.0) == 0.0
    assert buckets.take("k", 50, now=0.0) == pytest.approx(0.5)
    assert buckets.take("k", 50, now=0.5) == 0.0
    assert buckets.take("other", 200, now=0.5) == 0.0  # keys are independent


def test_velocity_flags_a_subject_at_many_times_its_usual_rate() -> None:
    velocity = Velocity(factor=100, floor=1)
    for window in range(5):  # usually 2 events a window
        assert velocity.hit("u1", window, 2) == 0
    assert velocity.hit("u1", 5, 200) == 0  # 100 x 2: at the threshold, not over
    assert velocity.hit("u1", 5, 10) == 10
    (spike,) = velocity.take_spikes()
    assert (spike.subject, spike.window, spike.threshold) == ("u1", 5, 200)
    assert velocity.hit("u1", 5, 1) == 1  # reported once per window, still held
    assert velocity.take_spikes() == []


def test_a_blocked_network_is_refused_and_counted(make_pipeline: MakePipeline) -> None:
    p = make_pipeline()
    store = p.protection.guard.store
    store.add_block("203.0.113.0/24", "scraper", actor="test", at=p.clock.now())
    store.add_block("2001:db8::/32", "scraper", actor="test", at=p.clock.now())
    p.protection.guard.refresh()
    for ip in ("203.0.113.99", "2001:db8:ffff::1"):
        with pytest.raises(Blocked):
            p.protection.guard.screen(ip)
    p.protection.guard.screen("203.0.114.1")
    p.protection.guard.screen("2001:db9::1")
    p.flush()
    assert store.totals() == {"blocked": 2}


def test_rate_limits_per_write_key_and_per_ip(make_pipeline: MakePipeline) -> None:
    p = make_pipeline(
        guard_key_events_per_s=10,
        guard_key_burst=20,
        guard_ip_events_per_s=5,
        guard_ip_burst=10,
    )
    guard = p.protection.guard
    guard.admit(SOURCE.id, "198.51.100.1", 10)
    with pytest.raises(RateLimited) as ip_limited:
        guard.admit(SOURCE.id, "198.51.100.1", 4)
    assert (ip_limited.value.field, ip_limited.value.retry_after) == ("ip", 1)
    guard.admit(SOURCE.id, "198.51.100.2", 6)  # another IP; the key has 20 - 10 - 4 - 6 = 0
    with pytest.raises(RateLimited) as key_limited:
        guard.admit(SOURCE.id, "198.51.100.3", 15)
    assert key_limited.value.field == "Authorization"
    assert key_limited.value.retry_after == 2  # 15 tokens at 10/s
    p.clock.advance(timedelta(seconds=2))
    guard.admit(SOURCE.id, "198.51.100.3", 10)
    guard.admit(SOURCE.id, "127.0.0.1", 10)  # loopback is exempt from the IP limit


def test_bots_are_flagged_in_the_log_and_counted(make_pipeline: MakePipeline) -> None:
    p = make_pipeline()
    events = [
        *track("person", context={"userAgent": PEOPLE[0]}),
        *track("crawler", context={"userAgent": CRAWLERS[0]}),
        *track("headless"),  # no agent in the event: the request's
        *track("spoofer", bot="crawler"),  # a client cannot set the flag itself
    ]
    result = p.send(events, agent=HEADLESS[0])
    assert result.accepted == 4
    flags = {m.user_id: m.bot for m in p.logged()}
    assert flags == {
        "person": None,
        "crawler": "crawler",
        "headless": "headless",
        "spoofer": "headless",
    }
    p.flush()
    assert p.protection.guard.store.totals() == {"bot_crawler": 1, "bot_headless": 2}


def test_a_velocity_anomaly_is_quarantined_and_reported(make_pipeline: MakePipeline) -> None:
    p = make_pipeline(guard_velocity_factor=10, guard_velocity_floor=2)
    assert p.send(track("calm", 20)).accepted == 20  # at the threshold, 10 x 2
    result = p.send([*track("calm", 5), *track("burst", 25)])
    assert result.accepted == 20 + 0  # calm's 5 are over (20 + 5 > 20); burst's 5 over
    assert sorted({r.reason for r in result.rejected}) == ["velocity_anomaly"]
    assert len(result.rejected) == 10
    assert {r.field for r in result.rejected} == {"userId"}
    held = p.quarantine.list()
    assert len(held) == 10 and {h.reason for h in held} == {"velocity_anomaly"}
    p.flush()
    reports = p.protection.guard.store.anomalies()
    assert sorted((a.kind, a.subject, a.threshold) for a in reports) == [
        ("profile", "burst", 20),
        ("profile", "calm", 20),
    ]
    assert p.protection.guard.store.totals() == {"anomaly": 10}


def test_an_ip_far_above_its_usual_rate_is_held(make_pipeline: MakePipeline) -> None:
    p = make_pipeline(guard_velocity_factor=10, guard_velocity_ip_floor=3)
    users = [{"type": "track", "event": "E", "userId": f"u{i}"} for i in range(40)]
    result = p.send(users, ip="198.51.100.9")
    assert result.accepted == 30
    assert {r.field for r in result.rejected} == {"ip"}
    assert p.send(users, ip="127.0.0.1").accepted == 40  # exempt network


def test_an_anomaly_from_a_single_event_endpoint_is_quarantined_not_refused(
    make_pipeline: MakePipeline,
) -> None:
    p = make_pipeline(guard_velocity_factor=2, guard_velocity_floor=1)
    body = msgspec.json.encode(track("u1")[0])
    results = [asyncio.run(p.collector.ingest_single(SOURCE, body, "track")) for _ in range(3)]
    assert [(r.accepted, len(r.rejected)) for r in results] == [(1, 0), (1, 0), (0, 1)]
    assert [h.reason for h in p.quarantine.list()] == ["velocity_anomaly"]


def test_replayed_quarantined_events_skip_the_velocity_check(make_pipeline: MakePipeline) -> None:
    p = make_pipeline(guard_velocity_factor=2, guard_velocity_floor=1)
    source, _ = SourceRegistry(p.engine).create("web")
    body = msgspec.json.encode({"batch": track("u1", 5)})
    first = asyncio.run(p.collector.ingest_batch(source, parse_batch(body)))
    assert (first.accepted, len(first.rejected)) == (2, 3)
    result = asyncio.run(
        replay_quarantined(
            p.collector, p.quarantine, SourceRegistry(p.engine), p.quarantine.list(), p.clock.now()
        )
    )
    assert len(result.replayed) == 3 and not result.still_invalid
    assert len(p.logged()) == 5


def test_the_client_ip_comes_from_x_forwarded_for_only_behind_a_trusted_proxy(
    make_pipeline: MakePipeline,
) -> None:
    guard = make_pipeline(guard_trusted_proxies=["10.0.0.0/8"]).protection.guard
    forwarded = "203.0.113.5, 198.51.100.1, 10.1.1.1"
    # The nearest hop that is not one of our proxies: earlier hops are the client's word.
    assert guard.client_ip("10.0.0.2", forwarded) == "198.51.100.1"
    assert guard.client_ip("192.0.2.9", forwarded) == "192.0.2.9"  # spoofed header ignored
    assert guard.client_ip("10.0.0.2", "10.0.0.3") == "10.0.0.2"
    assert guard.client_ip("2001:DB8::1", None) == "2001:db8::1"
    assert guard.client_ip("testclient", None) is None
    assert guard.client_ip(None, forwarded) is None


@given(
    st.lists(st.integers(0, 40), min_size=1, max_size=12),
    st.integers(2, 20),
    st.sampled_from(["one", "each"]),
)
def test_velocity_holds_exactly_the_events_past_the_threshold(
    counts: list[int], factor: int, how: str
) -> None:
    """Window by window: the events over factor x max(baseline, floor) are held, whether
    they arrive as one count or one by one."""
    velocity, reference = Velocity(factor=factor, floor=1), Velocity(factor=factor, floor=1)
    for window, n in enumerate(counts):
        if how == "one":
            held = velocity.hit("s", window, n)
        else:
            held = len(velocity.hit_each(["s"] * n, window))
        assert held == sum(reference.hit("s", window) for _ in range(n))
        threshold = velocity.take_spikes()
        assert len(threshold) == (1 if held else 0)
        assert held == (max(0, n - int(threshold[0].threshold)) if held else 0)
        reference.take_spikes()
