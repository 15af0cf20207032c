"""Consent at collect: events of a person without analytics consent are dropped or kept
only pseudonymised, decided per event from the ledger's cache and the event's own consent."""

from __future__ import annotations

from typing import Any

import msgspec
from sqlalchemy import Engine

from remarket.collect.pseudonymise import hash_id
from remarket.privacy import ConsentLedger
from remarket.storage.state import identities, profiles
from tests.collect.conftest import MakePipeline
from tests.collect.protected import NOW, Pipeline, track

KEY = "consent-test-key-0123456789abcdef"


def _person(engine: Engine, profile_id: str, analytics: bool | None, **ids: str) -> None:
    with engine.begin() as conn:
        conn.execute(profiles.insert().values(profile_id=profile_id, event_count=0))
        for kind, value in ids.items():
            conn.execute(identities.insert().values(kind=kind, value=value, profile_id=profile_id))
    if analytics is not None:
        ConsentLedger(engine).set(profile_id, {"analytics": analytics}, actor="test", at=NOW)


def _setup(make_pipeline: MakePipeline, state_url: str, **settings: Any) -> Pipeline:
    p = make_pipeline(state_url, **settings)
    _person(p.engine, "p_no", False, user_id="u-no", anonymous_id="a-no")
    _person(p.engine, "p_yes", True, user_id="u-yes")
    _person(p.engine, "p_new", None, user_id="u-new")
    p.sync()
    return p


def test_a_denied_person_is_dropped_and_counted(
    make_pipeline: MakePipeline, state_url: str
) -> None:
    p = _setup(make_pipeline, state_url)
    result = p.send(
        [
            *track("u-no"),
            {"type": "page", "anonymousId": "a-no"},  # the same person, by device
            *track("u-yes"),
            *track("u-new"),  # no decision: collected as before
            *track("u-unknown"),
        ]
    )
    assert (result.accepted, result.dropped, result.rejected) == (3, 2, [])
    assert sorted(str(m.user_id) for m in p.logged()) == ["u-new", "u-unknown", "u-yes"]
    p.flush()
    assert p.protection.guard.store.totals() == {"consent_dropped": 2}


def test_consent_required_keeps_only_explicit_grants(
    make_pipeline: MakePipeline, state_url: str
) -> None:
    p = _setup(make_pipeline, state_url, consent_required=True)
    result = p.send([*track("u-no"), *track("u-yes"), *track("u-new"), *track("u-unknown")])
    assert (result.accepted, result.dropped) == (1, 3)
    assert [m.user_id for m in p.logged()] == ["u-yes"]


def test_pseudonymise_mode_keeps_a_pseudonym_only(
    make_pipeline: MakePipeline, state_url: str
) -> None:
    p = _setup(make_pipeline, state_url, consent_action="pseudonymise", pseudonymisation_key=KEY)
    context = {"ip": "198.51.100.7", "userAgent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/127.0"}
    result = p.send(
        [
            *track("u-no", context={**context, "traits": {"email": "no@example.com"}}),
            {"type": "identify", "userId": "u-no", "traits": {"email": "no@example.com"}},
            *track("u-yes", context=context),
        ]
    )
    assert (result.accepted, result.dropped) == (3, 0)
    kept_track, kept_identify, allowed = p.logged()
    assert kept_track.user_id == kept_identify.user_id == hash_id(KEY.encode(), "u-no")
    assert msgspec.json.decode(kept_track.context) == {"userAgent": "Mozilla/5 (Linux) Firefox/127"}
    assert bytes(kept_identify.traits) == b"{}"
    assert allowed.user_id == "u-yes"
    assert msgspec.json.decode(allowed.context) == context  # untouched
    p.flush()
    assert p.protection.guard.store.totals() == {"consent_pseudonymised": 2}


def test_consent_carried_by_an_event_applies_at_once(
    make_pipeline: MakePipeline, state_url: str
) -> None:
    p = _setup(make_pipeline, state_url)
    withdraw = {"type": "identify", "userId": "u-yes", "traits": {"consent": {"analytics": False}}}
    result = p.send([*track("u-yes"), withdraw, *track("u-yes")])
    # The withdrawal itself is kept (the ledger learns it from the log); what follows is not.
    assert (result.accepted, result.dropped) == (2, 1)
    assert p.send(track("u-yes")).dropped == 1
    grant = {"consent": {"categoryPreferences": {"Analytics": True}}}
    assert p.send(track("u-no", context=grant)).accepted == 1
    assert p.send(track("u-no")).accepted == 1  # until the ledger says otherwise


def test_consent_given_to_a_merged_profile_counts_for_the_survivor(
    make_pipeline: MakePipeline, state_url: str
) -> None:
    p = make_pipeline(state_url)
    _person(p.engine, "p_live", None, user_id="u-live", anonymous_id="a-live")
    _person(p.engine, "p_old", False)
    with p.engine.begin() as conn:
        conn.execute(
            profiles.update().where(profiles.c.profile_id == "p_old").values(merged_into="p_live")
        )
    p.sync()
    assert p.send([*track("u-live"), {"type": "page", "anonymousId": "a-live"}]).dropped == 2


def test_with_pseudonymised_ids_the_cache_is_looked_up_by_pseudonym(
    make_pipeline: MakePipeline, state_url: str
) -> None:
    p = make_pipeline(state_url, pseudonymise_ids=True, pseudonymisation_key=KEY)
    # The profiles worker only ever saw pseudonyms.
    _person(p.engine, "p1", False, user_id=hash_id(KEY.encode(), "u1"))
    p.sync()
    result = p.send([*track("u1"), *track("u2")])
    assert (result.accepted, result.dropped) == (1, 1)
    assert [m.user_id for m in p.logged()] == [hash_id(KEY.encode(), "u2")]
