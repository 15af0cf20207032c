"""Sealed events and their keys: round trip, shredding, tampering, group commit, collect."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select

from remarket.clock import ManualClock
from remarket.collect import Collector, QuarantineStore, SourceRegistry
from remarket.collect.seal import SealPII
from remarket.collect.stages import partition_of
from remarket.config import Settings
from remarket.privacy.keyring import Keyring
from remarket.privacy.seal import Opener, Sealer
from remarket.schema.events import Message, decode_log_message, encode_message
from remarket.storage.log import SQLiteLog
from remarket.storage.state.tables import erasures, pii_key_handles, pii_keys, privacy_secrets

PII = ("email", "phone", "name", "address", "ip")
_VALUES = st.one_of(
    st.text(max_size=20),
    st.integers(),
    st.none(),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
)
_OBJECTS = st.dictionaries(st.sampled_from([*PII, "plan", "sku", "traits"]), _VALUES, max_size=6)
_IDS = st.text(min_size=1, max_size=30)


def _canonical(message: Message) -> dict[str, Any]:
    """The message as JSON data (key order in objects does not matter)."""
    data: dict[str, Any] = json.loads(encode_message(message))
    data.pop("sealed", None)
    return data


def _message(
    kind: str, anon: str | None, user: str | None, obj: dict[str, Any], ctx: dict[str, Any]
) -> Message:
    body: dict[str, Any] = {"type": kind, "messageId": "m-1", "context": ctx}
    if anon is not None:
        body["anonymousId"] = anon
    if user is not None:
        body["userId"] = user
    if kind == "track":
        body |= {"event": "Viewed", "properties": obj}
    elif kind == "identify":
        body["traits"] = obj
    elif kind == "alias":
        body |= {"userId": user or "u", "previousId": anon or "p"}
    return decode_log_message(json.dumps(body).encode())


@pytest.fixture
def ring(engine: Engine) -> Keyring:
    return Keyring(engine)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kind=st.sampled_from(["track", "identify", "alias"]),
    anon=st.one_of(st.none(), _IDS),
    user=_IDS,
    obj=_OBJECTS,
    ctx=st.fixed_dictionaries(
        {},
        optional={
            "ip": st.text(max_size=15),
            "traits": _OBJECTS,
            "library": st.just({"name": "x"}),
        },
    ),
)
def test_sealing_hides_pii_and_ids_and_opening_restores_them(
    ring: Keyring, kind: str, anon: str | None, user: str, obj: dict[str, Any], ctx: dict[str, Any]
) -> None:
    original = _message(kind, anon, user, obj, ctx)
    message = _message(kind, anon, user, obj, ctx)
    Sealer(ring, PII).seal(message)
    sealed = json.loads(encode_message(message))
    # Only handles in place of ids; no declared PII key at the top of any object.
    for field in ("anonymousId", "userId", "previousId"):
        assert field not in sealed or sealed[field].startswith("h_")
    for field in ("properties", "traits", "context"):
        assert not set(sealed.get(field, {})) & set(PII)
    inner = sealed.get("context", {}).get("traits")
    assert not isinstance(inner, dict) or not set(inner) & set(PII)
    ring.flush()
    (opened,), dropped = Opener(ring).open([(1, decode_log_message(encode_message(message)))])
    assert dropped == 0
    assert _canonical(opened[1]) == _canonical(original)


def _identify(user: str, message_id: str) -> Message:
    return decode_log_message(
        json.dumps(
            {
                "type": "identify",
                "userId": user,
                "messageId": message_id,
                "traits": {"email": f"{user}@x.y"},
            }
        ).encode()
    )


def _sealed(ring: Keyring, user: str = "u-1", message_id: str = "m-1") -> Message:
    message = _identify(user, message_id)
    Sealer(ring).seal(message)
    ring.flush()
    return decode_log_message(encode_message(message))


def test_an_opener_forgets_the_keys_an_erasure_destroys(ring: Keyring) -> None:
    """The opener caches ciphers by blob header: an erasure in this process drops them."""
    opener = Opener(ring)
    ann, bob = _sealed(ring, "ann"), _sealed(ring, "bob")
    ann_again = decode_log_message(encode_message(ann))
    assert opener.open([(1, ann), (2, bob)])[1] == 0  # both keys cached now
    assert ring.destroy([ring.handle("user_id", "ann")]) == 1
    rows, dropped = opener.open([(3, ann_again)])
    assert dropped == 1 and rows == []


def test_a_destroyed_key_leaves_its_events_unreadable_and_others_readable(ring: Keyring) -> None:
    ann, bob = _sealed(ring, "ann"), _sealed(ring, "bob")
    assert ring.destroy([ring.handle("user_id", "ann")]) == 1
    # A fresh keyring (a replay in another process) cannot open it either.
    rows, dropped = Opener(Keyring(ring._engine)).open([(1, ann), (2, bob)])
    assert dropped == 1 and [offset for offset, _ in rows] == [2]
    assert rows[0][1].user_id == "bob"


def test_a_sealed_blob_moved_onto_another_event_does_not_open(ring: Keyring) -> None:
    one, two = _sealed(ring, "ann", "m-1"), _sealed(ring, "ann", "m-2")
    two.sealed = one.sealed
    assert Opener(ring).open([(1, two)])[1] == 1
    garbled = _sealed(ring, "ann", "m-3")
    garbled.sealed = b"\x01garbage"
    assert Opener(ring).open([(1, garbled)])[1] == 1


def test_keys_are_per_identity_and_group_committed(ring: Keyring, engine: Engine) -> None:
    handle = ring.handle("anonymous_id", "a-1")
    assert handle == ring.handle("anonymous_id", "a-1") != ring.handle("user_id", "a-1")
    assert ring.key_for(handle)[0] == ring.key_for(handle)[0]
    ring.key_for(ring.handle("anonymous_id", "a-2"))

    def stored() -> int:
        with ring.store.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(pii_keys)) or 0)

    assert stored() == 0
    asyncio.run(ring.durable())
    assert stored() == 2
    # Another process shares the handle secret, so handles agree.
    assert Keyring(engine).handle("anonymous_id", "a-1") == handle


def _key_pair(ring: Keyring, user: str, message: Message) -> tuple[str, str]:
    """(handle, key id) of a sealed message: the header after the version byte."""
    assert message.sealed is not None
    return ring.handle("user_id", user), message.sealed[17:25].hex()


def _indexed(engine: Engine) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        return sorted(conn.execute(select(pii_key_handles.c.handle, pii_key_handles.c.key_id)))


@pytest.mark.parametrize("indexed_first", [False, True])
def test_keys_are_found_by_handle_before_and_after_indexing(
    ring: Keyring, engine: Engine, indexed_first: bool
) -> None:
    """New key rows are appends; the handle index is filled later, in bulk. Erasure,
    residue counts and opening find a key in either state."""
    messages = {user: _sealed(ring, user) for user in ("ann", "bob", "cy")}
    handles = {user: ring.handle("user_id", user) for user in messages}
    pairs = sorted(_key_pair(ring, user, m) for user, m in messages.items())
    assert _indexed(ring.store) == []
    if indexed_first:
        assert ring.index_pending() == 3
        assert _indexed(ring.store) == pairs
        assert ring.index_pending() == 0
    assert ring.count([handles["ann"]]) == (2 if indexed_first else 1)
    assert ring.destroy([handles["ann"]]) == 1
    assert ring.count([handles["ann"]]) == 0
    fresh = Keyring(engine)
    rows, dropped = Opener(fresh).open([(n, m) for n, m in enumerate(messages.values())])
    assert dropped == 1 and sorted(m.user_id or "" for _, m in rows) == ["bob", "cy"]
    # Indexing after the erasure enters the survivors only.
    ring.index_pending()
    assert _indexed(ring.store) == [p for p in pairs if p[0] != handles["ann"]]


def test_a_worker_batch_indexes_the_keys_made_since_the_last(ring: Keyring, engine: Engine) -> None:
    sealed = _sealed(ring, "ann")
    pair = _key_pair(ring, "ann", sealed)
    assert _indexed(ring.store) == []
    # The people's part of split workers leaves the index to the events' part.
    assert len(Opener(Keyring(engine), indexes=False)([(1, sealed)])) == 1
    assert _indexed(ring.store) == []
    assert len(Opener(Keyring(engine))([(1, sealed)])) == 1
    assert _indexed(ring.store) == [pair]


def test_a_handle_is_the_keyed_sha256_of_the_identifier(ring: Keyring, engine: Engine) -> None:
    # Handles in stores and logs written earlier must keep matching: the function is fixed.
    with engine.connect() as conn:
        secret = conn.scalar(select(privacy_secrets.c.value))
    expected = hmac.new(bytes(secret), b"user_id:ann", hashlib.sha256).hexdigest()[:32]
    assert ring.handle("user_id", "ann") == "h_" + expected


def test_every_sealed_event_gets_its_own_nonce(ring: Keyring) -> None:
    batches = [[_identify(f"u-{i % 3}", f"m-{n}-{i}") for i in range(50)] for n in range(3)]
    sealer = Sealer(ring)
    for batch in batches:
        sealer.seal_all(batch)
    nonces = [m.sealed[25:37] for batch in batches for m in batch if m.sealed is not None]
    assert len(nonces) == 150 == len(set(nonces))


def test_after_an_erasure_a_sealer_seals_under_a_fresh_key(ring: Keyring) -> None:
    sealer = Sealer(ring)
    before = _identify("ann", "m-1")
    sealer.seal(before)
    ring.flush()
    assert ring.destroy([ring.handle("user_id", "ann")]) == 1
    # The sealer had the destroyed key cached: it must not seal with it any more.
    after = _identify("ann", "m-2")
    sealer.seal(after)
    assert after.sealed is not None and before.sealed is not None
    assert after.sealed[17:25] != before.sealed[17:25]  # another key id
    asyncio.run(ring.durable())
    rows, dropped = Opener(Keyring(ring._engine)).open([(1, before), (2, after)])
    assert dropped == 1 and [offset for offset, _ in rows] == [2]
    assert rows[0][1].user_id == "ann"


def test_a_sealer_drops_its_keys_when_another_process_erases(ring: Keyring, engine: Engine) -> None:
    sealer = Sealer(ring)
    before = _identify("ann", "m-1")
    sealer.seal(before)
    ring.flush()
    other = Keyring(engine)
    other.destroy([other.handle("user_id", "ann")])
    with engine.begin() as conn:  # what Erasure records: how other processes learn of it
        conn.execute(
            erasures.insert().values(
                profile_hash="x",
                actor="test",
                requested_at=datetime.now(UTC),
                completed_at=datetime.now(UTC),
                counts={},
            )
        )
    assert ring.refresh()
    after = _identify("ann", "m-2")
    sealer.seal(after)
    ring.flush()
    (row,), dropped = Opener(Keyring(engine)).open([(2, after)])
    assert dropped == 0 and row[1].user_id == "ann"


def test_a_keyring_drops_cached_keys_after_another_process_erases(
    ring: Keyring, engine: Engine
) -> None:
    from remarket.privacy.erasers import standard_erasers
    from remarket.privacy.erasure import Erasure
    from remarket.storage.warehouse import DuckDBWarehouse

    message = _sealed(ring, "ann")
    other = Keyring(engine)
    warehouse = DuckDBWarehouse(None)
    erasure = Erasure(engine, other, standard_erasers(engine, other, warehouse), pii_fields=PII)
    erasure.erase(erasure.subject([], [("user_id", "ann")]), "test")
    # ``ring`` still has the key cached; the opener looks at the erasure records first.
    assert Opener(ring)([(1, message)]) == []
    warehouse.close()


def _collector(
    tmp_path: Any, engine: Engine, sealer: Sealer | None, ring: Keyring
) -> tuple[Collector, SQLiteLog, Any]:
    settings = Settings(data_dir=tmp_path, log_fsync="off")
    log = SQLiteLog(tmp_path / "log.db", fsync="off")
    stage = SealPII(sealer, ring)
    collector = Collector(
        settings,
        log,
        QuarantineStore(engine),
        ManualClock(datetime(2026, 1, 1, tzinfo=UTC)),
        extra_stages=[stage],
        barriers=[stage.durable],
    )
    source, _ = SourceRegistry(engine).create("web")
    return collector, log, source


@pytest.mark.parametrize("encrypt", [True, False], ids=["on", "off"])
def test_collect_seals_before_the_log_and_refuses_client_seals(
    tmp_path: Any, engine: Engine, ring: Keyring, encrypt: bool
) -> None:
    from remarket.collect import parse_batch

    collector, log, source = _collector(tmp_path, engine, Sealer(ring) if encrypt else None, ring)
    events = [
        {
            "type": "track",
            "anonymousId": "a-1",
            "event": "Viewed",
            "messageId": "m1",
            "context": {"ip": "1.2.3.4"},
        },
        {
            "type": "track",
            "anonymousId": "a-1",
            "event": "Viewed",
            "messageId": "m2",
            "sealed": "1.h_x.y.z",
        },
    ]

    async def run() -> tuple[Any, list[Any]]:
        result = await collector.ingest_batch(
            source, parse_batch(msgspec.json.encode({"batch": events}))
        )
        again = await collector.ingest_batch(
            source, parse_batch(msgspec.json.encode({"batch": events[:1]}))
        )
        assert again.duplicates == 1  # dedupe still works on sealed events
        records = await log.read(0, 10)
        await log.close()
        return result, records

    result, records = asyncio.run(run())
    assert result.accepted == 1 and [r.field for r in result.rejected] == ["sealed"]
    (record,) = records
    assert (b"1.2.3.4" in record.payload, b"a-1" in record.payload) == (not encrypt, not encrypt)
    stored = decode_log_message(record.payload)
    # The partition follows the device: every event of a-1 lands in one partition.
    assert record.partition == partition_of(stored, 16)
    if encrypt:
        with ring.store.connect() as conn:  # the key was committed before the append returned
            assert conn.scalar(select(func.count()).select_from(pii_keys)) == 1
        (opened,), _ = Opener(ring).open([(1, stored)])
        assert opened[1].anonymous_id == "a-1"
