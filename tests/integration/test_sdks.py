"""The unmodified Segment and RudderStack Python SDKs against a live remarket server."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import pytest
from rudderstack.analytics import Client as RudderClient
from segment.analytics import Client as SegmentClient

if TYPE_CHECKING:
    from tests.integration.conftest import LiveServer

pytestmark = pytest.mark.slow  # starts a server process


class _SdkClient(Protocol):
    """What both SDKs' clients offer (their methods take the same keyword arguments)."""

    def identify(self, **kwargs: Any) -> Any: ...
    def track(self, **kwargs: Any) -> Any: ...
    def page(self, **kwargs: Any) -> Any: ...
    def screen(self, **kwargs: Any) -> Any: ...
    def group(self, **kwargs: Any) -> Any: ...
    def alias(self, **kwargs: Any) -> Any: ...
    def flush(self) -> None: ...
    def shutdown(self) -> None: ...


@dataclass
class _Errors:
    """Whatever the SDK reports through ``on_error`` (must stay empty)."""

    calls: list[tuple[str, int]] = field(default_factory=list)

    def __call__(self, error: Exception, batch: list[dict[str, Any]]) -> None:
        self.calls.append((repr(error), len(batch)))


SdkFactory = Callable[[str, str, bool, bool, _Errors], _SdkClient]


def _segment(host: str, write_key: str, gzip: bool, sync: bool, errors: _Errors) -> _SdkClient:
    client: _SdkClient = SegmentClient(
        write_key=write_key,
        host=host,
        gzip=gzip,
        sync_mode=sync,
        on_error=errors,
        max_retries=2,
        upload_size=7,  # several batches per scenario, not one
        upload_interval=0.05,
        max_total_backoff_duration=10,
        timeout=10,
    )
    return client


def _rudder(host: str, write_key: str, gzip: bool, sync: bool, errors: _Errors) -> _SdkClient:
    client: _SdkClient = RudderClient(
        write_key=write_key,
        host=host,
        gzip=gzip,
        sync_mode=sync,
        on_error=errors,
        max_retries=2,
        upload_size=7,
        upload_interval=0.05,
        timeout=10,
    )
    return client


SDKS: dict[str, SdkFactory] = {"segment": _segment, "rudder": _rudder}


@dataclass
class _Scenario:
    """Ids of one run and which profile each sent messageId belongs on."""

    prefix: str
    expected: dict[str, str] = field(default_factory=dict)  # messageId -> person

    @property
    def anon(self) -> str:
        return f"{self.prefix}-anon"

    @property
    def user(self) -> str:
        return f"{self.prefix}-user"

    @property
    def new_user(self) -> str:
        return f"{self.prefix}-user-renamed"

    @property
    def other_anon(self) -> str:
        return f"{self.prefix}-other-anon"

    def mid(self, person: str) -> str:
        message_id = f"{self.prefix}-{len(self.expected):03d}-{uuid.uuid4().hex[:8]}"
        self.expected[message_id] = person
        return message_id


def _send(client: _SdkClient, s: _Scenario) -> None:
    """An anonymous visitor browses, identifies, buys, joins a group and is renamed by alias;
    a second visitor stays anonymous throughout."""
    a, b = "visitor", "other"
    client.page(anonymous_id=s.anon, name="Home", properties={"path": "/"}, message_id=s.mid(a))
    client.track(
        anonymous_id=s.anon,
        event="Product Viewed",
        properties={"sku": "A-1", "price": 12.5},
        message_id=s.mid(a),
    )
    client.screen(anonymous_id=s.anon, name="Cart", message_id=s.mid(a))
    client.track(
        anonymous_id=s.other_anon, event="Product Viewed", properties={}, message_id=s.mid(b)
    )
    client.page(anonymous_id=s.other_anon, name="Pricing", message_id=s.mid(b))
    client.identify(
        user_id=s.user,
        anonymous_id=s.anon,
        traits={"email": f"{s.prefix}@example.com", "plan": "pro"},
        message_id=s.mid(a),
    )
    client.track(
        user_id=s.user, event="Order Completed", properties={"total": 25}, message_id=s.mid(a)
    )
    client.group(user_id=s.user, group_id=f"{s.prefix}-acme", traits={"n": 3}, message_id=s.mid(a))
    client.alias(previous_id=s.user, user_id=s.new_user, message_id=s.mid(a))
    client.track(user_id=s.new_user, event="Signed In", message_id=s.mid(a))
    client.screen(user_id=s.new_user, name="Account", message_id=s.mid(a))
    client.track(
        anonymous_id=s.other_anon, event="Left", properties={"after_s": 3}, message_id=s.mid(b)
    )


def _profile(server: LiveServer, **query: str) -> dict[str, Any]:
    with server.process.api() as api:
        response = api.get("/v1/profiles", params=query)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _profile_message_ids(server: LiveServer, profile_id: str) -> list[str]:
    """Every messageId on the profile's event pages (duplicates kept, to be counted)."""
    ids: list[str] = []
    cursor: str | None = None
    with server.process.api() as api:
        while True:
            params: dict[str, str | int] = {"limit": 4}  # small pages: pagination is exercised
            if cursor is not None:
                params["cursor"] = cursor
            response = api.get(f"/v1/profiles/{profile_id}/events", params=params)
            assert response.status_code == 200, response.text
            page = response.json()
            ids.extend(e["message_id"] for e in page["events"])
            cursor = page["next_cursor"]
            if cursor is None:
                return ids


def _run(server: LiveServer, sdk: str, gzip: bool, sync: bool) -> _Scenario:
    errors = _Errors()
    client = SDKS[sdk](server.base_url, server.write_key, gzip, sync, errors)
    scenario = _Scenario(prefix=f"{sdk}-{'gz' if gzip else 'plain'}-{uuid.uuid4().hex[:8]}")
    try:
        _send(client, scenario)
        client.flush()
    finally:
        if not sync:
            client.shutdown()
    assert errors.calls == [], f"the SDK reported errors: {errors.calls}"
    server.process.wait_for_lag_zero()
    return scenario


@pytest.mark.parametrize("sync", [False, True], ids=["queued", "sync_mode"])
@pytest.mark.parametrize("gzip", [True, False], ids=["gzip", "plain"])
@pytest.mark.parametrize("sdk", sorted(SDKS))
def test_sdk_events_arrive_once_on_the_right_profile(
    live_server: LiveServer, sdk: str, gzip: bool, sync: bool
) -> None:
    s = _run(live_server, sdk, gzip, sync)

    visitor = _profile(live_server, anonymous_id=s.anon)
    other = _profile(live_server, anonymous_id=s.other_anon)
    # The identify joined the anonymous visitor and the user; the alias added the new id.
    assert _profile(live_server, user_id=s.user)["profile_id"] == visitor["profile_id"]
    assert _profile(live_server, user_id=s.new_user)["profile_id"] == visitor["profile_id"]
    assert other["profile_id"] != visitor["profile_id"]
    assert {(i["kind"], i["value"]) for i in visitor["identities"]} >= {
        ("anonymous_id", s.anon),
        ("user_id", s.user),
        ("user_id", s.new_user),
    }

    for person, profile in (("visitor", visitor), ("other", other)):
        want = sorted(m for m, p in s.expected.items() if p == person)
        got = _profile_message_ids(live_server, profile["profile_id"])
        duplicated = [m for m, n in Counter(got).items() if n > 1]
        assert duplicated == [], f"{person}: delivered more than once: {duplicated}"
        assert sorted(got) == want, f"{person}: events missing or on the wrong profile"
        assert profile["event_count"] == len(want)


@pytest.mark.parametrize("sdk", sorted(SDKS))
def test_sdk_identify_traits_reach_the_profile(live_server: LiveServer, sdk: str) -> None:
    s = _run(live_server, sdk, gzip=True, sync=False)

    traits = _profile(live_server, user_id=s.user)["traits"]
    assert traits.get("plan") == "pro", f"identify traits from {sdk} not on the profile: {traits}"
