"""Erasure and export end to end, on the embedded stores and on PostgreSQL + NATS JetStream.

After ``DELETE /v1/profiles/{id}``: nothing of the person is found in any store (nor in
the clear in the log), the export is empty, a full replay of the log into empty stores
does not bring them back, and the other person is untouched.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import Engine, select

from remarket.api import Runtime, create_app
from remarket.api.erasure import subject_for_value
from remarket.config import Settings
from remarket.metrics import EVENTS_UNREADABLE
from remarket.privacy.erasers import scan_log
from remarket.privacy.export import export_document
from remarket.privacy.keyring import Keyring
from remarket.privacy.rights import build_rights
from remarket.profiles import ProfileStore
from remarket.storage.log import open_log
from remarket.storage.state import connect_state
from remarket.storage.state.tables import pii_keys
from remarket.storage.warehouse import DuckDBWarehouse
from tests.api.harness import Server
from tests.privacy.replay import replay_log

ANN = {"anonymousId": "a-ann-7f3e", "userId": "u-ann-4411", "email": "ann.lee@example.com"}
BOB = {"anonymousId": "a-bob-91c2", "userId": "u-bob-5522", "email": "bob.ray@example.com"}
SEGMENT = {
    "name": "pros",
    "entry": "root",
    "nodes": [{"id": "root", "type": "trait", "path": "plan", "operator": "eq", "value": "pro"}],
}


def _events(person: dict[str, str], tag: str) -> list[dict[str, Any]]:
    anon, user, email = person["anonymousId"], person["userId"], person["email"]
    ip = {"ip": f"203.0.113.{len(tag)}", "library": {"name": "analytics.js"}}
    events: list[dict[str, Any]] = [
        {
            "type": "track",
            "anonymousId": anon,
            "event": "Product Viewed",
            "messageId": f"{tag}-view-{i}",
            "properties": {"product_id": f"sku-{i}", "name": "Red Shoe"},
            "context": ip,
        }
        for i in range(5)
    ]
    events.append(
        {
            "type": "identify",
            "anonymousId": anon,
            "userId": user,
            "messageId": f"{tag}-identify",
            "traits": {"email": email, "phone": "+33 6 12 34 56 78", "name": tag, "plan": "pro"},
            "context": ip,
        }
    )
    events.append(
        {"type": "alias", "userId": user, "previousId": f"{anon}-old", "messageId": f"{tag}-alias"}
    )
    events.append(
        {
            "type": "track",
            "userId": user,
            "event": "Order Completed",
            "messageId": f"{tag}-order",
            "properties": {"revenue": 42, "address": {"city": "Lyon"}},
        }
    )
    return events


def _populate(server: Server) -> dict[str, str]:
    """Both people: events, consent, a segment, a quarantined event; their profile ids."""
    assert server.client.post("/v1/segments", json=SEGMENT, headers=server.admin).status_code == 201
    for person, tag in ((ANN, "ann"), (BOB, "bob")):
        body = {"batch": _events(person, tag)}
        body["batch"].append({"type": "track", "anonymousId": person["anonymousId"], "event": 5})
        result = server.send("/v1/batch", body).json()
        assert (result["accepted"], result["quarantined"]) == (8, 1), result
    server.drain()
    ids = {}
    for person, tag in ((ANN, "ann"), (BOB, "bob")):
        found = server.client.get(
            "/v1/profiles", params={"user_id": person["userId"]}, headers=server.admin
        ).json()
        ids[tag] = found["profile_id"]
        consent = server.client.put(
            f"/v1/profiles/{ids[tag]}/consent",
            json={"purposes": {"email": True, "advertising": False}},
            headers=server.admin,
        )
        assert consent.status_code == 200
    # The segment's Entered events went through the log too.
    for _ in range(200):
        server.drain()
        members = server.client.get("/v1/segments/pros/members", headers=server.admin).json()
        if len(members["members"]) == 2:
            break
        asyncio.run(asyncio.sleep(0.05))
    server.drain()
    return ids


def _snapshot(server: Server, profile_id: str) -> dict[str, Any]:
    profile = server.client.get(f"/v1/profiles/{profile_id}", headers=server.admin).json()
    events = server.client.get(
        f"/v1/profiles/{profile_id}/events", params={"limit": 100}, headers=server.admin
    ).json()["events"]
    consent = server.client.get(f"/v1/profiles/{profile_id}/consent", headers=server.admin).json()
    return {
        "profile": profile,
        "events": sorted(e["message_id"] for e in events),
        "consent": consent["current"],
    }


def _scenario(
    server: Server, tmp_path: Path, *, parquet: Path | None
) -> tuple[dict[str, str], dict[str, Any]]:
    runtime = server.runtime
    ids = _populate(server)
    if parquet is not None:
        assert isinstance(runtime.warehouse, DuckDBWarehouse)
        runtime.warehouse.export_parquet(parquet)
    bob_before = _snapshot(server, ids["bob"])
    assert len(bob_before["events"]) >= 8
    # Before: the checks do see the person (so "0" afterwards means something).
    before = runtime.rights.erasure.residue(
        subject_for_value(runtime.rights.erasure, ANN["userId"])
    )
    assert before["state.profiles"] >= 1 and before["pii_keys"] >= 1
    assert before[f"warehouse.{runtime.warehouse.dialect}"] >= 8
    assert before["state.quarantine"] == 1 and before["state.consent_history"] >= 1
    assert before["state.segment_members"] == 1

    erased = server.client.delete(f"/v1/profiles/{ids['ann']}", headers=server.admin)
    assert erased.status_code == 200, erased.json()
    record = erased.json()
    assert record["counts"]["pii_keys"] >= 2
    assert record["counts"][f"warehouse.{runtime.warehouse.dialect}"] >= 8
    # The record and the audit entry hold no PII, only a keyed hash of the profile id.
    listed = server.client.get("/v1/erasures", headers=server.admin).json()["erasures"]
    audit = server.client.get("/v1/audit", headers=server.admin).json()["entries"]
    assert listed[-1]["profile_hash"] == record["profile_hash"]
    assert audit[-1]["action"] == "profile.erase" and audit[-1]["target"] == record["profile_hash"]
    text = json.dumps([listed, audit[-1]])
    # (Each of her values: a bare "ann" would also match store names like "channel".)
    for secret in (*ANN.values(), ids["ann"]):
        assert secret not in text

    server.drain()
    # Nothing remains, whichever way the person is looked for.
    erasure = runtime.rights.erasure
    for value in (ids["ann"], ANN["userId"], ANN["anonymousId"], ANN["email"]):
        residue = erasure.residue(subject_for_value(erasure, value))
        assert sum(residue.values()) == 0, (value, residue)
    # The export is empty, and the API no longer knows the profile.
    document = export_document(erasure.subject([ids["ann"]]), runtime.rights.exporters)
    assert document["profile"] is None and document["events"] == []
    assert document["consents"] == {"current": [], "history": []}
    assert document["segments"] == {"memberships": [], "history": []}
    assert document["journeys"] == {"walks": [], "steps": []}
    assert document["decisions"] == {"assignments": []}
    assert document["messages"] == {"outbox": [], "suppressions": []}
    for path in (f"/v1/profiles/{ids['ann']}", f"/v1/profiles/{ids['ann']}/export"):
        assert server.client.get(path, headers=server.admin).status_code == 404
    # Bob is untouched.
    assert _snapshot(server, ids["bob"]) == bob_before
    exported = server.client.get(f"/v1/profiles/{ids['bob']}/export", headers=server.admin).json()
    assert exported["profile"]["traits"]["email"] == BOB["email"]
    assert len(exported["events"]) == len(bob_before["events"])
    assert exported["consents"]["history"] and exported["segments"]["memberships"]
    return ids, bob_before


def _scan_log(settings: Settings, values: list[str]) -> int:
    async def scan() -> int:
        log = await open_log(settings)
        try:
            return await scan_log(log, [json.dumps(v).encode() for v in values])
        finally:
            await log.close()

    return asyncio.run(scan())


def _check_replay(
    settings: Settings, live_state: Engine, tmp_path: Path, bob_before: dict[str, Any]
) -> None:
    unreadable = EVENTS_UNREADABLE._value.get()
    engine, warehouse = replay_log(settings, live_state, tmp_path / "replay")
    try:
        # Ann's events (8, plus her segment transition) could not be opened.
        assert EVENTS_UNREADABLE._value.get() - unreadable >= 9
        store = ProfileStore(engine)
        for kind, value in (("user_id", ANN["userId"]), ("anonymous_id", ANN["anonymousId"])):
            assert store.find((kind, value)) is None
        bob = store.find(("user_id", BOB["userId"]))
        assert bob is not None
        view = store.get(bob)
        assert view is not None
        assert view.traits["email"] == BOB["email"]
        assert view.event_count == bob_before["profile"]["event_count"]
        rights = build_rights(settings, engine, warehouse, Keyring(engine))
        for value in (ANN["userId"], ANN["anonymousId"], ANN["email"]):
            residue = rights.erasure.residue(subject_for_value(rights.erasure, value))
            assert sum(residue.values()) == 0, residue
        assert warehouse.residue([BOB["userId"], BOB["anonymousId"]], [bob]) >= 8
    finally:
        warehouse.close()
        engine.dispose()


def _key_secrets(runtime: Runtime, person: dict[str, str]) -> list[bytes]:
    handles = [
        runtime.keyring.handle("anonymous_id", person["anonymousId"]),
        runtime.keyring.handle("user_id", person["userId"]),
    ]
    with runtime.keyring.store.connect() as conn:
        rows = conn.execute(select(pii_keys.c.secret).where(pii_keys.c.handle.in_(handles)))
        return [bytes(secret) for (secret,) in rows]


def _files_holding(folder: Path, needles: list[bytes]) -> dict[str, int]:
    """Files under ``folder`` whose raw bytes hold any of ``needles``: how many each."""
    found = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if count := sum(needle in data for needle in needles):
            found[str(path.relative_to(folder))] = count
    return found


def test_erasure_on_embedded_stores(tmp_path: Path) -> None:
    parquet = tmp_path / "parquet"
    settings = Settings(
        data_dir=tmp_path / "var",
        log_fsync="normal",
        worker_poll_interval_s=0.01,
        parquet_export_dirs=[parquet],
    )
    with TestClient(create_app(settings)) as client:
        server = Server.of(client)
        ids, bob_before = _scenario(server, tmp_path, parquet=parquet)
        state_url = settings.resolved_database_url()
    # The log holds neither of them in the clear (sealed), and Parquet lost only Ann.
    assert _scan_log(settings, [*ANN.values(), *BOB.values(), ids["ann"]]) == 0
    live_state = connect_state(state_url)
    _check_replay(settings, live_state, tmp_path, bob_before)
    live_state.dispose()


def test_erased_data_is_gone_from_the_embedded_files(tmp_path: Path) -> None:
    """Physically: deleted rows linger in files (SQLite's write-ahead log and free pages,
    DuckDB's blocks) until overwritten. After an erasure no file holds the person's
    destroyed keys, and only DuckDB's holds their ids: the next start compacts it (a copy
    of the database, too slow for the erasure itself), after which no file holds them."""
    data_dir = tmp_path / "var"
    settings = Settings(data_dir=data_dir, log_fsync="normal", worker_poll_interval_s=0.01)
    with TestClient(create_app(settings)) as client:
        server = Server.of(client)
        runtime = server.runtime
        ids = _populate(server)
        ann_keys, bob_keys = _key_secrets(runtime, ANN), _key_secrets(runtime, BOB)
        ann_ids = [ANN["anonymousId"].encode(), ANN["userId"].encode(), ids["ann"].encode()]
        assert len(ann_keys) >= 2 and len(bob_keys) >= 2
        # The scan does see keys and ids in the files (so "none" below means something).
        assert _files_holding(data_dir, ann_keys) and _files_holding(data_dir, ann_ids)

        erased = server.client.delete(f"/v1/profiles/{ids['ann']}", headers=server.admin)
        assert erased.status_code == 200, erased.json()
        server.drain()

        assert _files_holding(data_dir, ann_keys) == {}
        in_duckdb = {"warehouse.duckdb", "warehouse.duckdb.wal"}
        assert set(_files_holding(data_dir, ann_ids)) <= in_duckdb
        assert sum(_files_holding(data_dir, bob_keys).values()) == len(bob_keys)
        bob_before = _snapshot(server, ids["bob"])

    with TestClient(create_app(settings)) as client:  # a restart, with the same keys
        runtime = client.app.state.runtime  # type: ignore[attr-defined]
        again = Server(client, runtime, server.write_key, server.admin_key)
        assert _files_holding(data_dir, ann_ids) == {}
        assert _snapshot(again, ids["bob"]) == bob_before


@pytest.fixture
def scaled_settings(pg_database: str, nats_url: str, unique_name: str) -> Iterator[Settings]:
    yield Settings(
        database_url=SecretStr(pg_database.replace("postgresql://", "postgresql+psycopg://")),
        warehouse_url=SecretStr(pg_database),
        log_url=SecretStr(nats_url),
        nats_stream=unique_name.upper(),
        nats_subject_prefix=f"rm.{unique_name}",
        worker_poll_interval_s=0.02,
    )
    import nats

    async def drop_stream() -> None:
        nc = await nats.connect(nats_url)
        await nc.jetstream().delete_stream(unique_name.upper())
        await nc.close()

    asyncio.run(drop_stream())


@pytest.mark.postgres
@pytest.mark.nats
def test_erasure_on_postgres_and_jetstream(scaled_settings: Settings, tmp_path: Path) -> None:
    with TestClient(create_app(scaled_settings)) as client:
        server = Server.of(client)
        ids, bob_before = _scenario(server, tmp_path, parquet=None)
    assert _scan_log(scaled_settings, [*ANN.values(), *BOB.values(), ids["ann"]]) == 0
    live_state = connect_state(scaled_settings.resolved_database_url())
    _check_replay(scaled_settings, live_state, tmp_path, bob_before)
    live_state.dispose()
