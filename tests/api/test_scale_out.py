"""The whole server on the scale-out stores: PostgreSQL state and warehouse, NATS log."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from remarket.api import create_app
from remarket.config import Settings
from tests.api.harness import Server

pytestmark = [pytest.mark.postgres, pytest.mark.nats]


@pytest.fixture
def scaled(pg_database: str, nats_url: str, unique_name: str) -> Iterator[Server]:
    settings = Settings(
        database_url=SecretStr(pg_database.replace("postgresql://", "postgresql+psycopg://")),
        warehouse_url=SecretStr(pg_database),
        log_url=SecretStr(nats_url),
        nats_stream=unique_name.upper(),
        nats_subject_prefix=f"rm.{unique_name}",
        worker_poll_interval_s=0.05,
    )
    with TestClient(create_app(settings)) as client:
        yield Server.of(client)
    import asyncio

    import nats

    async def drop_stream() -> None:
        nc = await nats.connect(nats_url)
        await nc.jetstream().delete_stream(unique_name.upper())
        await nc.close()

    asyncio.run(drop_stream())


def test_events_flow_through_nats_into_postgres(scaled: Server) -> None:
    batch = [
        {"type": "track", "anonymousId": "a1", "event": "Product Viewed", "messageId": f"m{i}"}
        for i in range(20)
    ]
    batch.append(
        {
            "type": "identify",
            "anonymousId": "a1",
            "userId": "u1",
            "messageId": "m-id",
            "traits": {"email": "x@example.com"},
        }
    )
    assert scaled.send("/v1/batch", {"batch": batch}).json()["accepted"] == 21
    again = scaled.send("/v1/batch", {"batch": batch}).json()
    assert (again["accepted"], again["duplicates"]) == (0, 21)
    scaled.drain()
    profile = scaled.client.get(
        "/v1/profiles", params={"user_id": "u1"}, headers=scaled.admin
    ).json()
    assert profile["event_count"] == 21
    assert profile["traits"] == {"email": "x@example.com"}
    events = scaled.client.get(
        f"/v1/profiles/{profile['profile_id']}/events", params={"limit": 100}, headers=scaled.admin
    ).json()["events"]
    assert sorted(e["message_id"] for e in events) == sorted(e["messageId"] for e in batch)
    assert scaled.runtime.warehouse.dialect == "postgres"
