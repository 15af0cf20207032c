"""Pseudonymisation at collect: IP truncation or removal, user agent reduction, HMAC ids."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from remarket.collect.pseudonymise import hash_id, reduce_user_agent, truncate_ip
from remarket.config import Settings
from tests.collect.conftest import MakePipeline
from tests.collect.protected import track

KEY = "k" * 32
CHROME = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8 Build/AP1A.240505.005) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/125.0.6422.165 Mobile Safari/537.36"
)


@given(st.ip_addresses(v=4), st.integers(0, 32))
def test_ipv4_truncation_keeps_the_prefix_and_zeroes_the_rest(
    address: ipaddress.IPv4Address, prefix: int
) -> None:
    truncated = ipaddress.ip_address(truncate_ip(str(address), v4_prefix=prefix) or "")
    network = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
    assert truncated == network.network_address
    assert truncate_ip(str(truncated), v4_prefix=prefix) == str(truncated)  # idempotent


@given(st.ip_addresses(v=6), st.integers(0, 128))
def test_ipv6_truncation_keeps_the_prefix_and_zeroes_the_rest(
    address: ipaddress.IPv6Address, prefix: int
) -> None:
    truncated = ipaddress.ip_address(truncate_ip(str(address), v6_prefix=prefix) or "")
    assert truncated in ipaddress.ip_network(f"{address}/{prefix}", strict=False)
    assert int(truncated) & ((1 << (128 - prefix)) - 1) == 0


def test_default_prefixes_are_24_and_48() -> None:
    assert truncate_ip("192.0.2.201") == "192.0.2.0"
    assert truncate_ip("2001:db8:1:2:3:4:5:6") == "2001:db8:1::"
    assert truncate_ip("not an ip") is None


@pytest.mark.parametrize(
    ("agent", "reduced"),
    [
        (CHROME, "Mozilla/5 (Android) AppleWebKit/537 Chrome/125 Mobile Safari/537"),
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) Version/17.5 Safari/605.1.15",
            "Mozilla/5 (macOS) AppleWebKit/605 Version/17 Safari/605",
        ),
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) Mobile/15E148",
            "Mozilla/5 (iOS) Mobile/15",
        ),
        ("analytics-python/2.3.2", "analytics-python/2 (Other)"),
    ],
)
def test_user_agents_are_reduced_to_major_versions_and_os_family(agent: str, reduced: str) -> None:
    assert reduce_user_agent(agent) == reduced
    assert reduce_user_agent(reduced) == reduced  # idempotent


@given(st.text(max_size=300))
def test_a_reduced_user_agent_keeps_no_minor_version(agent: str) -> None:
    reduced = reduce_user_agent(agent)
    assert re.search(r"/[0-9]+[.]", reduced) is None
    assert reduce_user_agent(reduced) == reduced


def test_hmac_ids_are_stable_keyed_and_not_the_id() -> None:
    assert hash_id(b"a", "u1") == hash_id(b"a", "u1")
    assert hash_id(b"a", "u1") != hash_id(b"b", "u1")
    assert hash_id(b"a", "u1") != hash_id(b"a", "u2")
    assert len(hash_id(b"a", "u1")) == 32 and "u1" not in hash_id(b"a", "u1")


def _context(event: Any) -> dict[str, Any]:
    return dict(msgspec.json.decode(event.context))


CONTEXT = {"ip": "198.51.100.77", "userAgent": CHROME, "locale": "de-DE"}


@pytest.mark.parametrize(
    ("settings", "ip", "agent"),
    [
        ({}, "198.51.100.77", CHROME),
        ({"pseudonymise_ip": "truncate"}, "198.51.100.0", CHROME),
        ({"pseudonymise_ip": "truncate", "ip_v4_prefix": 16}, "198.51.0.0", CHROME),
        ({"pseudonymise_ip": "drop"}, None, CHROME),
        (
            {"pseudonymise_user_agent": "reduce"},
            "198.51.100.77",
            "Mozilla/5 (Android) AppleWebKit/537 Chrome/125 Mobile Safari/537",
        ),
        ({"pseudonymise_user_agent": "drop"}, "198.51.100.77", None),
    ],
    ids=["keep", "truncate-24", "truncate-16", "drop-ip", "reduce-agent", "drop-agent"],
)
def test_context_ip_and_agent_as_configured(
    make_pipeline: MakePipeline, settings: dict[str, Any], ip: str | None, agent: str | None
) -> None:
    p = make_pipeline(**settings)
    p.send(track("u1", context=CONTEXT))
    (event,) = p.logged()
    context = _context(event)
    assert context.get("ip") == ip
    assert context.get("userAgent") == agent
    assert context["locale"] == "de-DE"
    assert event.user_id == "u1"


def test_ids_are_replaced_by_their_hmac(make_pipeline: MakePipeline) -> None:
    p = make_pipeline(pseudonymise_ids=True, pseudonymisation_key=KEY)
    p.send(
        [
            {"type": "track", "event": "E", "userId": "u1", "anonymousId": "a1"},
            {"type": "alias", "userId": "u2", "previousId": "u1"},
        ]
    )
    track_event, alias = p.logged()
    key = KEY.encode()
    assert (track_event.user_id, track_event.anonymous_id) == (
        hash_id(key, "u1"),
        hash_id(key, "a1"),
    )
    assert alias.previous_id == track_event.user_id  # the same id, the same pseudonym


def test_hashing_ids_without_a_key_is_refused_at_start() -> None:
    with pytest.raises(ValidationError, match="pseudonymisation_key"):
        Settings(pseudonymise_ids=True)
