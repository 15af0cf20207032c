"""The consent ledger, and the worker that feeds it from identify traits and CMP context."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select

from remarket.clock import ManualClock
from remarket.errors import OffsetConflict
from remarket.privacy import (
    PURPOSES,
    AuditLog,
    ConsentLedger,
    ConsentRecord,
    ConsentSink,
    Keyring,
    consents_in,
    decode_tc_string,
    is_allowed,
)
from remarket.profiles import ProfileStore
from remarket.schema.events import Message, decode_log_message
from remarket.storage.state import consent_history, profiles

T0 = datetime(2026, 3, 1, tzinfo=UTC)
# TC strings (core segment only) consenting to TCF purposes 1-10 (all that remarket
# maps) and to none: encoded as tests/privacy/test_tcf.py's encoder does.
ALL_TCF = "CAAAAAAAAAAAAABABBENABEAAP_AAA"
NONE_TCF = "CAAAAAAAAAAAAABABBENABEAAAAAAA"


def message(kind: str, at: datetime, **fields: Any) -> Message:
    body = {"type": kind, "messageId": f"m-{kind}-{at.timestamp()}", "timestamp": at.isoformat()}
    return decode_log_message(json.dumps(body | fields).encode())


def test_tcf_fixtures_mean_what_they_say() -> None:
    assert decode_tc_string(ALL_TCF).purposes_consent == frozenset(range(1, 11))
    assert decode_tc_string(NONE_TCF).purposes_consent == frozenset()


def test_only_an_explicit_grant_allows() -> None:
    granted = ConsentRecord("p", "email", "granted", "api", "consent", T0, "a")
    denied = ConsentRecord("p", "sms", "denied", "api", "consent", T0, "b")
    for purpose in PURPOSES:
        assert is_allowed({"email": granted, "sms": denied}, purpose) is (purpose == "email")
    with pytest.raises(ValueError, match="purpose must be one of"):
        is_allowed({}, "telepathy")


def test_set_keeps_history_and_the_newest_state(engine: Engine) -> None:
    clock = ManualClock(T0)
    ledger = ConsentLedger(engine, clock=clock)
    ledger.set("p_1", {"email": True, "sms": True}, actor="k1")
    clock.advance(timedelta(hours=1))
    ledger.set("p_1", {"email": False}, actor="k1", source="preference_center")
    clock.advance(timedelta(hours=1))
    ledger.set("p_1", {"email": False}, actor="k1", legal_basis="legitimate_interests")
    current = ledger.current("p_1")
    assert {p: r.state for p, r in current.items()} == {"email": "denied", "sms": "granted"}
    assert current["email"].legal_basis == "legitimate_interests"
    assert current["email"].at == T0 + timedelta(hours=2)
    history = ledger.history("p_1")
    assert [(r.purpose, r.state, r.source) for r in history] == [
        ("email", "granted", "api"),
        ("sms", "granted", "api"),
        ("email", "denied", "preference_center"),
        ("email", "denied", "api"),
    ]
    assert ledger.allowed("p_1", "sms") and not ledger.allowed("p_1", "email")
    assert not ledger.allowed("p_1", "push")
    assert ledger.current("p_unknown") == {}


def test_set_is_audited_by_the_profile_hash(engine: Engine) -> None:
    """The audit log outlives an erasure: it names the profile as erasure records do."""
    ConsentLedger(engine).set("p_1", {"advertising": False}, actor="k9")
    (entry,) = AuditLog(engine).entries()
    assert (entry.actor, entry.action) == ("k9", "consent.set")
    assert entry.target == Keyring(engine).digest("p_1") != "p_1"
    assert json.loads(entry.details) == {
        "purposes": {"advertising": "denied"},
        "source": "api",
        "legal_basis": "consent",
    }


@pytest.mark.parametrize(
    ("states", "kwargs", "rule"),
    [
        ({}, {}, "at least one purpose"),
        ({"telepathy": True}, {}, "purpose must be one of"),
        ({"email": True}, {"legal_basis": "whim"}, "legal_basis must be one of"),
    ],
    ids=["empty", "unknown-purpose", "unknown-basis"],
)
def test_set_refuses_bad_input(
    engine: Engine, states: dict[str, bool], kwargs: dict[str, Any], rule: str
) -> None:
    with pytest.raises(ValueError, match=rule):
        ConsentLedger(engine).set("p_1", states, actor="k", **kwargs)


def test_a_merged_profile_brings_its_consent(engine: Engine) -> None:
    clock = ManualClock(T0)
    ledger = ConsentLedger(engine, clock=clock)
    ledger.set("p_old", {"email": True, "sms": True}, actor="k")
    clock.advance(timedelta(minutes=1))
    ledger.set("p_new", {"sms": False}, actor="k")
    with engine.begin() as conn:
        conn.execute(
            insert(profiles),
            [
                {"profile_id": "p_new", "merged_into": None, "event_count": 2},
                {"profile_id": "p_old", "merged_into": "p_new", "event_count": 0},
            ],
        )
    for asked in ("p_new", "p_old"):
        current = ledger.current(asked)
        assert {p: r.state for p, r in current.items()} == {"email": "granted", "sms": "denied"}
        assert len(ledger.history(asked)) == 3


def test_consent_carried_by_events() -> None:
    identify = message(
        "identify", T0, userId="u1", traits={"consent": {"Email": True, "sms": "yes", "x": True}}
    )
    assert consents_in(identify) == [("email", True, "identify")]
    tcf = message("page", T0, anonymousId="a", context={"consent": {"tcString": ALL_TCF}})
    assert sorted(consents_in(tcf)) == [
        ("advertising", True, "tcf"),
        ("analytics", True, "tcf"),
        ("personalization", True, "tcf"),
    ]
    prebid = message("track", T0, userId="u", event="E", context={"gdpr_consent": NONE_TCF})
    assert {granted for _, granted, _ in consents_in(prebid)} == {False}
    segment = message(
        "track",
        T0,
        userId="u",
        event="E",
        context={"consent": {"categoryPreferences": {"Advertising": False, "Functional": True}}},
    )
    assert consents_in(segment) == [("advertising", False, "context")]
    broken = message("page", T0, userId="u", context={"consent": {"tcString": "not a tc string"}})
    assert consents_in(broken) == []
    assert consents_in(message("track", T0, userId="u", event="consent given")) == []


def apply(
    engine: Engine, store: ProfileStore, sink: ConsentSink, rows: list[Message], start: int
) -> int:
    numbered = [(start + i + 1, m) for i, m in enumerate(rows)]
    through = start + len(rows)
    store.apply("profiles", numbered, through, expected=start)
    sink.apply(numbered, through, start)
    return through


def test_the_sink_applies_event_consent_to_the_right_profile(engine: Engine) -> None:
    store = ProfileStore(engine)
    ledger = ConsentLedger(engine, clock=ManualClock(T0))
    sink = ConsentSink(ledger)
    first = [
        message("page", T0, anonymousId="a1", context={"consent": {"tcString": ALL_TCF}}),
        message(
            "page", T0 + timedelta(seconds=1), anonymousId="a1", context={"gdpr_consent": ALL_TCF}
        ),
        message("page", T0, anonymousId="other"),
    ]
    offset = apply(engine, store, sink, first, 0)
    assert sink.committed() == offset
    later = [
        message(
            "identify",
            T0 + timedelta(minutes=5),
            anonymousId="a1",
            userId="u1",
            traits={"consent": {"email": True}},
        ),
        message(
            "page",
            T0 + timedelta(minutes=6),
            userId="u1",
            context={"consent": {"tcString": NONE_TCF}},
        ),
    ]
    offset = apply(engine, store, sink, later, offset)
    profile_id = store.find(("user_id", "u1"))
    assert profile_id is not None
    current = ledger.current(profile_id)
    assert {p: r.state for p, r in current.items()} == {
        "advertising": "denied",
        "analytics": "denied",
        "personalization": "denied",
        "email": "granted",
    }
    assert {r.source for r in current.values()} == {"tcf", "identify"}
    # The repeated TC string made no history: 3 grants, the e-mail grant, 3 denials.
    assert len(ledger.history(profile_id)) == 7
    other = store.find(("anonymous_id", "other"))
    assert other is not None and ledger.current(other) == {}


def test_the_sink_is_fenced_by_its_offset(engine: Engine) -> None:
    store = ProfileStore(engine)
    sink = ConsentSink(ConsentLedger(engine))
    rows = [message("identify", T0, userId="u1", traits={"consent": {"sms": True}})]
    apply(engine, store, sink, rows, 0)
    with pytest.raises(OffsetConflict):
        sink.apply([(1, rows[0])], 1, 0)
    with pytest.raises(OffsetConflict):
        sink.apply([(2, rows[0])], 2, 5)
    with engine.connect() as conn:
        assert len(conn.execute(select(consent_history)).all()) == 1
    assert sink.committed() == 1
