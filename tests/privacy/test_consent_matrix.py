"""The consent matrix: every purpose by every channel and model use.

Six people, each granting exactly one purpose. Every channel is offered every person
(e-mail to a real SMTP server, SMS, push, webhook, a Meta and a Google audience to local
HTTP servers that answer as those APIs do), and a segment uses a model score of every
person: each use happens for the one person whose purpose it needs and for nobody else.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from remarket.channels.audiences import AudienceStore
from remarket.clock import ManualClock
from remarket.privacy import PURPOSES
from remarket.schema.segment import SegmentDefinition
from remarket.segments import SCORES_DDL, compile_segment, desugar
from remarket.segments.membership import Transition, write_transitions
from tests.channels.sinks import HttpSink, MailSink, Request, http_server, smtp_server
from tests.channels.world import World
from tests.segments.world import running

MESSAGES = ("email", "sms", "push", "webhook")
AUDIENCES = ("meta", "google")
NEEDS = {
    "email": "email",
    "sms": "sms",
    "push": "push",
    "webhook": "personalization",  # REMARKET_CHANNELS_WEBHOOK_PURPOSE's default
    "meta": "advertising",
    "google": "advertising",
    "model": "personalization",
}


def _email_of(purpose: str) -> str:
    return f"{purpose}@example.com"


@pytest.fixture
def platforms() -> Iterator[HttpSink]:
    """One HTTP server for Twilio, FCM, the webhook, Meta and Google (told apart by path)."""

    def respond(request: Request) -> tuple[int, Any]:
        if request.path.endswith("offlineUserDataJobs:create"):
            return 200, {"resourceName": "customers/1234567890/offlineUserDataJobs/7"}
        return 200, {}

    with http_server() as sink:
        sink.respond = respond
        yield sink


@pytest.fixture
def mail() -> Iterator[tuple[MailSink, int]]:
    with smtp_server() as server:
        yield server


def _uploaded(sink: HttpSink) -> dict[str, set[str]]:
    """Hashed e-mail addresses added, per platform."""
    added: dict[str, set[str]] = {"meta": set(), "google": set()}
    for request in sink.requests:
        if request.method == "POST" and request.path.endswith("/users"):
            added["meta"].update(row[0] for row in request.json()["payload"]["data"])
        elif request.path.endswith(":addOperations"):
            for operation in request.json()["operations"]:
                for user in operation["create"]["userIdentifiers"]:
                    if "hashedEmail" in user:  # one identifier per entry
                        added["google"].add(user["hashedEmail"])
    return added


def test_each_channel_reaches_only_those_who_granted_its_purpose(
    state_engine: Engine, tmp_path: Path, platforms: HttpSink, mail: tuple[MailSink, int]
) -> None:
    world = World.make(state_engine, tmp_path)
    url = platforms.url
    mail_sink, port = mail
    world.provider("smtp", host="127.0.0.1", port=port, sender="shop@shop.example", security="none")
    world.provider("twilio", account_sid="AC1", auth_token="t", sender="+15550001", base_url=url)
    world.provider("fcm", project_id="shop", access_token="ya29", base_url=url)
    world.provider("webhook", url=f"{url}/hook", secret="whsec")
    world.provider("meta", access_token="EAAB", base_url=url)
    world.provider(
        "google", customer_id="1234567890", developer_token="d", access_token="ya29", base_url=url
    )
    for channel in ("email", "sms", "push"):
        world.template(f"t-{channel}", channel, "Hello", subject="Hi")
    for n, purpose in enumerate(PURPOSES):
        world.profile(
            f"p_{purpose}",
            consent=(purpose,),
            email=_email_of(purpose),
            phone=f"+1650555{n:04d}",
            push_token=f"device-{purpose}",
        )
        for channel in MESSAGES:
            template = None if channel == "webhook" else f"t-{channel}"
            world.enqueue(f"{channel}-{purpose}", f"p_{purpose}", channel, template_id=template)
    world.segment("all")
    store = AudienceStore(world.engine)
    for platform in AUDIENCES:
        store.create(
            f"all-{platform}",
            segment="all",
            platform=platform,
            external_id="5",
            now=world.clock.now(),
        )
    world.clock.advance(timedelta(seconds=1))
    with world.engine.begin() as conn:
        write_transitions(
            conn, [Transition("all", 1, f"p_{p}", True, world.clock.now()) for p in PURPOSES]
        )
    store.sync(now=world.clock.now())
    world.deliver()

    hashed = {hashlib.sha256(_email_of(p).encode()).hexdigest(): p for p in PURPOSES}
    uploaded = _uploaded(platforms)
    for purpose in PURPOSES:
        for channel in MESSAGES:
            row = world.row(f"{channel}-{purpose}")
            if NEEDS[channel] == purpose:
                assert row.status == "sent", (channel, purpose, row.reason, row.last_error)
            else:
                assert (row.status, row.reason) == ("skipped", "no_consent"), (channel, purpose)
        for platform in AUDIENCES:
            reached = {hashed[h] for h in uploaded[platform]}
            assert (purpose in reached) is (NEEDS[platform] == purpose), (platform, purpose)
    assert sorted(m["To"] for m in mail_sink.messages()) == [_email_of("email")]


def test_a_model_score_is_used_only_with_personalization_consent(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2026, 5, 4, 9, 0, tzinfo=UTC))
    with running(tmp_path, clock) as world:
        world.send(*({"type": "identify", "userId": f"u-{p}"} for p in PURPOSES))
        world.settle()
        ids = {world.profile(user_id=f"u-{p}"): p for p in PURPOSES}
        clock.advance(timedelta(minutes=1))
        for pid, purpose in ids.items():
            response = world.server.client.put(
                f"/v1/profiles/{pid}/consent",
                json={"purposes": {purpose: True}},
                headers=world.server.admin,
            )
            assert response.status_code == 200, response.json()
        world.settle()
        clock.advance(timedelta(minutes=1))
        warehouse = world.runtime.warehouse
        warehouse.query(SCORES_DDL)
        for pid in ids:  # every person scored well above the threshold
            warehouse.query("INSERT INTO scores VALUES (?, 'buy_7d', 0.9, ?)", [pid, clock.now()])
        definition = SegmentDefinition.model_validate(
            {
                "name": "likely-buyers",
                "entry": "root",
                "nodes": [
                    {
                        "id": "root",
                        "type": "score",
                        "model": "buy_7d",
                        "operator": "gt",
                        "value": 0.5,
                    }
                ],
            }
        )
        sql = compile_segment(desugar(definition), clock.now(), dialect="duckdb")
        members = {str(row[0]) for row in warehouse.query(sql)}
    assert {ids[pid] for pid in members} == {NEEDS["model"]}
