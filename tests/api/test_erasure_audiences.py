"""Erasure tells the ad platforms: ``DELETE /v1/profiles/{id}`` queues the person's removal
from the Meta and Google audiences they were uploaded to (hashed identifiers only), and
the server's deliverer sends it in each platform's documented request format.

The platforms are local HTTP servers; the deliverer is the one the server runs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from remarket.api.erasure import subject_for_value
from remarket.config import Settings
from tests.api.harness import Server
from tests.api.platforms import (
    JOB,
    Platforms,
    ad_platforms,
    google_removal,
    outbox,
    sha,
    shop,
    wait,
)

ANN = {"userId": "u-ann-4411", "email": " Ann.Lee@Gmail.com", "phone": "+33 6 12 34 56 78"}
BOB = {"userId": "u-bob-5522", "email": "bob.ray@example.com", "phone": "+44 20 7946 0018"}
CAROL = {"userId": "u-carol-7788", "email": "carol@example.com", "phone": "+1 650 555 1212"}
DAVE = {"userId": "u-dave-9900", "email": "dave@example.com", "phone": "+1 650 555 3434"}


@pytest.fixture
def platforms() -> Iterator[Platforms]:
    with ad_platforms() as found:
        yield found


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Quick retries, so a removal the platform refused at first goes out within the test.
    quick = {"channels_backoff_s": 0.05, "channels_backoff_max_s": 0.2, "channels_max_attempts": 50}
    return settings.model_copy(update=quick)


def _outbox(server: Server) -> list[Any]:
    return outbox(server.runtime.engine)


def _pending(server: Server, value: str) -> int:
    erasure = server.runtime.rights.erasure
    return sum(erasure.pending(subject_for_value(erasure, value)).values())


def _residue(server: Server, value: str) -> int:
    erasure = server.runtime.rights.erasure
    return sum(erasure.residue(subject_for_value(erasure, value)).values())


def test_erasure_removes_the_person_from_meta_and_google_audiences(
    server: Server, platforms: Platforms
) -> None:
    ids = shop(server, platforms, {"ann": (ANN, "pro", True), "bob": (BOB, "pro", True)})
    # Both were uploaded: one Meta request and one Google job with two identities each.
    [add] = platforms.meta.requests
    assert add.method == "POST" and len(add.json()["payload"]["data"]) == 2
    before_meta, before_google = len(platforms.meta.requests), len(platforms.google.requests)

    platforms.refusing.set()  # the removals wait at the platforms: pending meanwhile
    erased = server.client.delete(f"/v1/profiles/{ids['ann']}", headers=server.admin)
    assert erased.status_code == 200, erased.json()
    assert erased.json()["counts"]["queued.audiences"] == 2

    # What is queued holds hashes only: no profile id, no e-mail, phone or user id.
    queued = [r for r in _outbox(server) if r.variables.get("cause") == "erasure"]
    assert len(queued) == 2
    text = json.dumps([[r.profile_id, r.idempotency_key, r.variables] for r in queued])
    for secret in (ids["ann"], *ANN.values(), ANN["email"].strip().lower(), "33612345678"):
        assert secret not in text
    wait(lambda: any(r.method == "DELETE" for r in platforms.meta.requests), "a first try")
    for value in (ids["ann"], ANN["userId"]):
        assert _residue(server, value) == 0, value
    assert _pending(server, ids["ann"]) == 2  # reported apart: not residue, not done

    platforms.refusing.clear()
    wait(lambda: _pending(server, ids["ann"]) == 0, "the removals to be delivered")

    meta_removals = [r for r in platforms.meta.requests[before_meta:] if r.method == "DELETE"]
    assert meta_removals, "Meta received no removal"
    removal = meta_removals[-1]
    assert removal.path == "/v21.0/2384/users"
    assert removal.headers["authorization"] == "Bearer EAAB"
    # Meta: e-mail trimmed and lower-cased, phone as digits with country code.
    assert removal.json()["payload"] == {
        "schema": ["EMAIL", "PHONE"],
        "data": [[sha("ann.lee@gmail.com"), sha("33612345678")]],
    }
    assert removal.json()["session"]["last_batch_flag"] is True
    google = [r for r in platforms.google.requests[before_google:] if google_removal(r)]
    assert google, "Google received no remove operation"
    assert google[-1].path == f"/v17/{JOB}:addOperations"
    # Google: the dots before @gmail.com go, phone in E.164 with its "+".
    assert google[-1].json()["operations"] == [
        {
            "remove": {
                "userIdentifiers": [
                    {"hashedEmail": sha("annlee@gmail.com")},
                    {"hashedPhoneNumber": sha("+33612345678")},
                ]
            }
        }
    ]
    assert platforms.google.requests[-1].path == f"/v17/{JOB}:run"

    # Delivered removals leave nothing behind; nothing of Ann remains anywhere.
    assert not [r for r in _outbox(server) if r.variables.get("cause") == "erasure"]
    for value in (ids["ann"], ANN["userId"], ANN["email"]):
        assert _residue(server, value) == 0, value
        assert _pending(server, value) == 0, value
    # Bob is untouched: still a member, still uploaded, named in no removal.
    bob_rows = [r for r in _outbox(server) if r.profile_id == ids["bob"]]
    assert {(r.variables["audience"], r.status) for r in bob_rows} == {
        ("vip-meta", "sent"),
        ("vip-google", "sent"),
    }
    bob_hash = sha(BOB["email"])
    assert all(bob_hash not in r.body.decode() for r in meta_removals)
    members = server.client.get("/v1/segments/pros/members", headers=server.admin).json()
    assert [m["profile_id"] for m in members["members"]] == [ids["bob"]]


def test_erasure_of_someone_never_uploaded_queues_nothing(
    server: Server, platforms: Platforms
) -> None:
    # Carol is in the segment without advertising consent (never uploaded), Dave is in
    # no segment at all; Bob's upload shows the audiences work.
    ids = shop(
        server,
        platforms,
        {"bob": (BOB, "pro", True), "carol": (CAROL, "pro", False), "dave": (DAVE, "free", True)},
    )
    carol_rows = [r for r in _outbox(server) if r.profile_id == ids["carol"]]
    assert {r.reason for r in carol_rows} == {"no_consent"}
    for tag in ("carol", "dave"):
        erased = server.client.delete(f"/v1/profiles/{ids[tag]}", headers=server.admin)
        assert erased.status_code == 200, erased.json()
        assert erased.json()["counts"]["queued.audiences"] == 0
        assert _pending(server, ids[tag]) == 0
        assert _residue(server, ids[tag]) == 0
    assert not [r for r in _outbox(server) if r.variables.get("cause") == "erasure"]
    assert [r.method for r in platforms.meta.requests] == ["POST"]
