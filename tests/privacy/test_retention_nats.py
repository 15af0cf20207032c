"""The scale-out log's retention: the JetStream stream's max_age, set from the settings."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client

from remarket.storage.log.nats import NatsLog

pytestmark = pytest.mark.nats


async def _max_age(url: str, stream: str) -> float | None:
    nc = Client()
    await nc.connect(url)
    try:
        js = nc.jetstream()
        return (await js.stream_info(stream)).config.max_age
    finally:
        await nc.close()


async def _drop(url: str, stream: str) -> None:
    nc = Client()
    await nc.connect(url)
    try:
        js = nc.jetstream()
        await js.delete_stream(stream)
        await js.delete_key_value(f"{stream}_offsets")
    finally:
        await nc.close()


def test_max_age_is_set_on_creation_and_on_a_later_start(nats_url: str, unique_name: str) -> None:
    async def scenario() -> tuple[float | None, float | None, float | None]:
        async def connect(max_age: float) -> NatsLog:
            return await NatsLog.connect(
                nats_url,
                stream=unique_name,
                subject_prefix=f"{unique_name}.events",
                partitions=2,
                duplicate_window_s=60,
                max_age_s=max_age,
            )

        log = await connect(0)
        await log.close()
        unlimited = await _max_age(nats_url, unique_name)
        log = await connect(30 * 86_400)
        await log.close()
        thirty_days = await _max_age(nats_url, unique_name)
        log = await connect(0)  # 0 keeps what the stream has
        await log.close()
        kept = await _max_age(nats_url, unique_name)
        return unlimited, thirty_days, kept

    try:
        unlimited, thirty_days, kept = asyncio.run(scenario())
    finally:
        asyncio.run(_drop(nats_url, unique_name))
    assert not unlimited
    assert thirty_days == kept == 30 * 86_400


def test_max_age_shorter_than_the_duplicate_window_is_refused(nats_url: str) -> None:
    with pytest.raises(ValueError, match="max_age_s"):
        asyncio.run(
            NatsLog.connect(
                nats_url,
                stream="x",
                subject_prefix="x",
                partitions=1,
                duplicate_window_s=60,
                max_age_s=10,
            )
        )
