"""Ad audiences: identifiers hashed as Meta and Google document (their published
examples), uploads in their request formats, membership followed (add and remove)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from remarket.channels.audiences import AudienceStore, e164, google_identifiers, meta_row
from tests.channels.sinks import HttpSink, Request, http_server
from tests.channels.world import World


def test_meta_documented_hashing_examples() -> None:
    # Meta's customer information parameters: "John_Smith@gmail.com" and the US number
    # "(650)555-1212" (normalised "16505551212") with the SHA-256 outputs Meta publishes.
    schema, row = meta_row("  John_Smith@gmail.com ", "(650)555-1212", "1")
    assert schema == ["EMAIL", "PHONE"]
    assert row == [
        "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f",
        "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176",
    ]


def test_google_customer_match_normalisation() -> None:
    # Google: trim, lower-case, drop the dots before @gmail.com / @googlemail.com (only
    # there), phone in E.164 with its "+" before hashing.
    def sha(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    assert google_identifiers(" Jo.Hn.Doe@GMAIL.com", None, "1") == [
        {"hashedEmail": sha("johndoe@gmail.com")}
    ]
    assert google_identifiers("jo.hn@googlemail.com", None, "1") == [
        {"hashedEmail": sha("john@googlemail.com")}
    ]
    assert google_identifiers("Jo.Hn@Example.com", None, "1") == [
        {"hashedEmail": sha("jo.hn@example.com")}
    ]
    assert google_identifiers(None, "(650) 555-1212", "1") == [
        {"hashedPhoneNumber": sha("+16505551212")}
    ]
    assert e164("12", "1") is None


@pytest.fixture
def sink() -> Iterator[HttpSink]:
    with http_server() as server:
        yield server


@pytest.fixture
def world(state_engine: Engine, tmp_path: Path) -> World:
    world = World.make(state_engine, tmp_path)
    world.segment("buyers")
    return world


def _move(world: World, pid: str, entered: bool) -> None:
    world.move("buyers", pid, entered)


def test_meta_audience_follows_segment_membership(world: World, sink: HttpSink) -> None:
    world.provider("meta", access_token="EAAB", base_url=sink.url, version="v21.0")
    world.profile("p_1", consent=("advertising",), email="John_Smith@gmail.com")
    world.profile("p_2", consent=("advertising",), email="b@example.com", phone="+44 20 7946 0018")
    world.profile("p_3", consent=(), email="c@example.com")  # no advertising consent
    _move(world, "p_1", True)
    store = AudienceStore(world.engine)
    store.create(
        "vip", segment="buyers", platform="meta", external_id="2384", now=world.clock.now()
    )
    world.deliver()  # the initial upload: p_1
    _move(world, "p_2", True)
    _move(world, "p_3", True)
    _move(world, "p_1", False)
    assert store.sync(now=world.clock.now()) == 3
    assert store.sync(now=world.clock.now()) == 0  # nothing new: nothing enqueued twice
    world.deliver()

    first, *later = [(r.method, r.path, r.json()["payload"]) for r in sink.requests]
    p_1 = {
        "schema": ["EMAIL"],
        "data": [["62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f"]],
    }
    assert first == ("POST", "/v21.0/2384/users", p_1)
    p_2 = {
        "schema": ["EMAIL", "PHONE"],
        "data": [
            [
                hashlib.sha256(b"b@example.com").hexdigest(),
                hashlib.sha256(b"442079460018").hexdigest(),
            ]
        ],
    }
    # p_3 has no advertising consent: never uploaded. Different profiles go side by side.
    assert sorted(later, key=lambda c: c[0]) == [
        ("DELETE", "/v21.0/2384/users", p_1),
        ("POST", "/v21.0/2384/users", p_2),
    ]
    assert sink.requests[0].headers["authorization"] == "Bearer EAAB"
    assert "session_id" in sink.requests[0].json()["session"]


def test_a_stale_add_is_not_uploaded(world: World, sink: HttpSink) -> None:
    world.provider("meta", access_token="t", base_url=sink.url)
    world.profile("p_1", consent=("advertising",), email="a@example.com")
    AudienceStore(world.engine).create(
        "vip", segment="buyers", platform="meta", external_id="1", now=world.clock.now()
    )
    _move(world, "p_1", True)
    _move(world, "p_1", False)
    AudienceStore(world.engine).sync(now=world.clock.now())
    world.deliver()
    # Entered then left before any upload: the add is stale, the remove goes out.
    assert [r.method for r in sink.requests] == ["DELETE"]


def test_google_customer_match_job_flow(world: World, sink: HttpSink) -> None:
    def respond(request: Request) -> tuple[int, Any]:
        if request.path.endswith("offlineUserDataJobs:create"):
            return 200, {"resourceName": "customers/1234567890/offlineUserDataJobs/77"}
        return 200, {}

    sink.respond = respond
    world.provider(
        "google",
        customer_id="123-456-7890",
        login_customer_id="999-000-1111",
        developer_token="dev",
        access_token="ya29",
        base_url=sink.url,
    )
    world.profile("p_1", consent=("advertising",), email="Jo.Hn@gmail.com", phone="6505551212")
    _move(world, "p_1", True)
    AudienceStore(world.engine).create(
        "g", segment="buyers", platform="google", external_id="555", now=world.clock.now()
    )
    world.deliver()

    create, add, run = sink.requests
    assert create.path == "/v17/customers/1234567890/offlineUserDataJobs:create"
    assert create.json() == {
        "job": {
            "type": "CUSTOMER_MATCH_USER_LIST",
            "customerMatchUserListMetadata": {"userList": "customers/1234567890/userLists/555"},
        }
    }
    assert create.headers["developer-token"] == "dev"
    assert create.headers["login-customer-id"] == "9990001111"
    assert add.path == "/v17/customers/1234567890/offlineUserDataJobs/77:addOperations"
    assert add.json()["operations"] == [
        {
            "create": {
                "userIdentifiers": [
                    {"hashedEmail": hashlib.sha256(b"john@gmail.com").hexdigest()},
                    {"hashedPhoneNumber": hashlib.sha256(b"+16505551212").hexdigest()},
                ]
            }
        }
    ]
    assert run.path == "/v17/customers/1234567890/offlineUserDataJobs/77:run"


def test_withdrawn_advertising_consent_removes_a_member(world: World, sink: HttpSink) -> None:
    from remarket.privacy import ConsentLedger

    world.provider("meta", access_token="t", base_url=sink.url)
    world.profile("p_1", consent=("advertising",), email="a@example.com")
    _move(world, "p_1", True)
    store = AudienceStore(world.engine)
    store.create("vip", segment="buyers", platform="meta", external_id="1", now=world.clock.now())
    world.deliver()
    world.clock.advance(timedelta(seconds=1))
    ConsentLedger(world.engine, clock=world.clock).set("p_1", {"advertising": False}, actor="t")
    assert store.sync(now=world.clock.now()) == 1
    assert store.sync(now=world.clock.now()) == 0
    world.deliver()
    # Still a member of the segment, but out of the ad audience.
    assert [r.method for r in sink.requests] == ["POST", "DELETE"]


def test_members_are_uploaded_together(world: World, sink: HttpSink) -> None:
    world.provider("meta", access_token="t", base_url=sink.url)
    for i in range(5):
        world.profile(f"p_{i}", consent=("advertising",), email=f"m{i}@example.com")
        _move(world, f"p_{i}", True)
    AudienceStore(world.engine).create(
        "vip", segment="buyers", platform="meta", external_id="9", now=world.clock.now()
    )
    world.deliver()
    [request] = sink.requests
    body = request.json()
    assert body["payload"]["schema"] == ["EMAIL"]
    assert sorted(body["payload"]["data"]) == sorted(
        [[hashlib.sha256(f"m{i}@example.com".encode()).hexdigest()] for i in range(5)]
    )
    assert body["session"]["estimated_num_total"] == 5
    assert body["session"]["last_batch_flag"] is True
