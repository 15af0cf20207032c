"""Test helpers for ad audiences through the API: Meta and Google as local HTTP servers
(which can refuse removals for a while), and a shop with a segment bound to both."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select

from remarket.storage.state import channel_outbox
from tests.api.harness import Server
from tests.channels.sinks import HttpSink, Request, http_server

JOB = "customers/1234567890/offlineUserDataJobs/77"
SEGMENT = {
    "name": "pros",
    "entry": "root",
    "nodes": [{"id": "root", "type": "trait", "path": "plan", "operator": "eq", "value": "pro"}],
}

Person = tuple[dict[str, str], str, bool]
"""A person's ``userId``, ``email`` and ``phone``; their plan; their advertising consent."""


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Platforms:
    meta: HttpSink
    google: HttpSink
    refusing: threading.Event  # while set, both answer 503 to a removal


def google_removal(request: Request) -> bool:
    return request.path.endswith(":addOperations") and "remove" in request.json()["operations"][0]


def _respond(refusing: threading.Event, removal: Callable[[Request], bool]) -> Any:
    def respond(request: Request) -> tuple[int, Any]:
        if refusing.is_set() and removal(request):
            return 503, {"error": "try later"}
        if request.path.endswith("offlineUserDataJobs:create"):
            return 200, {"resourceName": JOB}
        return 200, {}

    return respond


@contextmanager
def ad_platforms() -> Iterator[Platforms]:
    refusing = threading.Event()
    with http_server() as meta, http_server() as google:
        meta.respond = _respond(refusing, lambda r: r.method == "DELETE")
        google.respond = _respond(refusing, google_removal)
        yield Platforms(meta, google, refusing)


def wait(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def outbox(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(channel_outbox).order_by(channel_outbox.c.id)))


def shop(server: Server, platforms: Platforms, people: dict[str, Person]) -> dict[str, str]:
    """Both providers, the segment ``pros``, the people (by tag), and the audiences
    ``vip-meta`` and ``vip-google`` of the segment, once every upload is done; the
    profile ids by tag."""
    admin = server.admin
    assert server.client.post("/v1/segments", json=SEGMENT, headers=admin).status_code == 201
    for body in (
        {
            "name": "meta",
            "kind": "meta",
            "config": {"base_url": platforms.meta.url},
            "credentials": {"access_token": "EAAB"},
        },
        {
            "name": "google",
            "kind": "google",
            "config": {"base_url": platforms.google.url, "customer_id": "123-456-7890"},
            "credentials": {"developer_token": "dev", "access_token": "ya29"},
        },
    ):
        created = server.client.post("/v1/channels/providers", json=body, headers=admin)
        assert created.status_code == 201, created.json()
    batch = [
        {
            "type": "identify",
            "userId": person["userId"],
            "messageId": f"{tag}-identify",
            "traits": {"email": person["email"], "phone": person["phone"], "plan": plan},
        }
        for tag, (person, plan, _) in people.items()
    ]
    assert server.send("/v1/batch", {"batch": batch}).status_code == 200
    server.drain()
    ids: dict[str, str] = {}
    for tag, (person, _, advertising) in people.items():
        found = server.client.get(
            "/v1/profiles", params={"user_id": person["userId"]}, headers=admin
        )
        ids[tag] = found.json()["profile_id"]
        consent = server.client.put(
            f"/v1/profiles/{ids[tag]}/consent",
            json={"purposes": {"advertising": advertising}},
            headers=admin,
        )
        assert consent.status_code == 200
    pros = sum(1 for _, plan, _ in people.values() if plan == "pro")

    def members() -> int:
        page = server.client.get("/v1/segments/pros/members", headers=admin).json()
        return len(page["members"])

    wait(lambda: members() == pros, "the segment's members")
    for audience in (
        {"id": "vip-meta", "segment": "pros", "platform": "meta", "external_id": "2384"},
        {"id": "vip-google", "segment": "pros", "platform": "google", "external_id": "555"},
    ):
        created = server.client.post("/v1/channels/audiences", json=audience, headers=admin)
        assert created.status_code == 201, created.json()
    wait(
        lambda: (
            all(r.status != "pending" for r in outbox(server.runtime.engine))
            and len(platforms.google.requests) == 3
        ),
        "the uploads",
    )
    return ids
