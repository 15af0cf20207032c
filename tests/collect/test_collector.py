"""The collector: events are durable in the log when it returns; failures lose nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from remarket.clock import ManualClock
from remarket.collect import Collector, QuarantineStore, Source, dedupe_key, parse_batch
from remarket.config import Settings
from remarket.errors import StorageError
from remarket.schema.events import decode_log_message
from remarket.storage.log import LogEntry, SQLiteLog
from remarket.storage.state import connect_state, upgrade_state

NOW = datetime(2026, 5, 1, 12, tzinfo=UTC)
SOURCE = Source("s1", "web", "wk_", True, NOW)


class FailingLog(SQLiteLog):
    """A real log whose disk 'fails' on demand, and whose appends can be held."""

    fail = False
    fail_next = 0
    gate: asyncio.Event | None = None

    async def append(self, entries: Sequence[LogEntry]) -> list[int]:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail or self.fail_next:
            self.fail_next = max(self.fail_next - 1, 0)
            raise StorageError("disk full")
        return await super().append(entries)


def make(tmp_path: Path) -> tuple[Collector, FailingLog]:
    settings = Settings(data_dir=tmp_path, log_partitions=4)
    engine = connect_state(settings.resolved_database_url())
    upgrade_state(engine)
    log = FailingLog(tmp_path / "log.db", fsync="normal")
    return Collector(settings, log, QuarantineStore(engine), ManualClock(NOW)), log


def body(*ids: str) -> bytes:
    events = [{"type": "track", "event": "E", "userId": "u", "messageId": i} for i in ids]
    return msgspec.json.encode({"batch": events})


def test_accepted_events_are_in_the_log_enriched(tmp_path: Path) -> None:
    collector, log = make(tmp_path)
    result = asyncio.run(collector.ingest_batch(SOURCE, parse_batch(body("a", "b"))))
    assert (result.accepted, result.duplicates) == (2, 0)
    records = asyncio.run(log.read(0, 10))
    messages = [decode_log_message(r.payload) for r in records]
    assert [m.message_id for m in messages] == ["a", "b"]
    assert {m.source_id for m in messages} == {"s1"}
    assert {m.received_at for m in messages} == {NOW}
    assert {r.partition for r in records} <= set(range(4))


def test_a_failed_append_is_an_error_and_the_retry_is_not_a_duplicate(tmp_path: Path) -> None:
    collector, log = make(tmp_path)
    log.fail = True
    with pytest.raises(StorageError):
        asyncio.run(collector.ingest_batch(SOURCE, parse_batch(body("a", "b"))))
    log.fail = False
    retry = asyncio.run(collector.ingest_batch(SOURCE, parse_batch(body("a", "b"))))
    assert (retry.accepted, retry.duplicates) == (2, 0)


def test_a_restarted_collector_still_knows_recent_message_ids(tmp_path: Path) -> None:
    collector, _ = make(tmp_path)
    asyncio.run(collector.ingest_batch(SOURCE, parse_batch(body("a", "b"))))
    fresh, _ = make(tmp_path)
    assert asyncio.run(fresh.warm_up(1_000)) == 2
    again = asyncio.run(fresh.ingest_batch(SOURCE, parse_batch(body("a", "b", "c"))))
    assert (again.accepted, again.duplicates) == (1, 2)


def test_events_without_message_id_get_one(tmp_path: Path) -> None:
    collector, log = make(tmp_path)
    raw = msgspec.json.encode({"batch": [{"type": "track", "event": "E", "userId": "u"}] * 2})
    assert asyncio.run(collector.ingest_batch(SOURCE, parse_batch(raw))).accepted == 2
    ids = [decode_log_message(r.payload).message_id for r in asyncio.run(log.read(0, 10))]
    assert len(set(ids)) == 2 and all(ids)


def test_batch_context_is_merged_under_the_event_context(tmp_path: Path) -> None:
    collector, log = make(tmp_path)
    raw = msgspec.json.encode(
        {
            "batch": [{"type": "track", "event": "E", "userId": "u", "context": {"ip": "1.2.3.4"}}],
            "context": {"ip": "9.9.9.9", "locale": "de-DE"},
        }
    )
    asyncio.run(collector.ingest_batch(SOURCE, parse_batch(raw)))
    (record,) = asyncio.run(log.read(0, 10))
    context = msgspec.json.decode(decode_log_message(record.payload).context)
    assert context == {"ip": "1.2.3.4", "locale": "de-DE"}


@pytest.mark.parametrize(
    "original_fails", [False, True], ids=["original-durable", "original-fails"]
)
def test_a_replay_is_not_acknowledged_before_the_original_is_durable(
    tmp_path: Path, original_fails: bool
) -> None:
    collector, log = make(tmp_path)

    async def scenario() -> tuple[object, object]:
        log.gate = asyncio.Event()
        log.fail_next = 1 if original_fails else 0
        first = asyncio.create_task(collector.ingest_batch(SOURCE, parse_batch(body("a", "b"))))
        await asyncio.sleep(0.01)  # the original now holds its claims and waits on the log
        replay = asyncio.create_task(collector.ingest_batch(SOURCE, parse_batch(body("a", "b"))))
        await asyncio.sleep(0.01)
        assert not replay.done(), "a replay must wait while the original is in flight"
        log.gate.set()
        outcome = await asyncio.gather(first, replay, return_exceptions=True)
        return outcome[0], outcome[1]

    first, replay = asyncio.run(scenario())
    stored = [decode_log_message(r.payload).message_id for r in asyncio.run(log.read(0, 10))]
    assert sorted(stored) == ["a", "b"]
    if original_fails:
        assert isinstance(first, StorageError)
        assert (replay.accepted, replay.duplicates) == (2, 0)  # type: ignore[union-attr]
    else:
        assert (first.accepted, replay.duplicates) == (2, 2)  # type: ignore[union-attr]


def test_clock_skew_out_of_range_is_rejected_not_a_crash(tmp_path: Path) -> None:
    collector, _ = make(tmp_path)
    raw = msgspec.json.encode(
        {
            "batch": [
                {
                    "type": "track",
                    "event": "E",
                    "userId": "u",
                    "messageId": "bad",
                    "timestamp": "0001-01-02T00:00:00Z",
                    "sentAt": "9999-12-31T00:00:00Z",
                },
                {"type": "track", "event": "E", "userId": "u", "messageId": "good"},
            ]
        }
    )
    result = asyncio.run(collector.ingest_batch(SOURCE, parse_batch(raw)))
    assert result.accepted == 1
    assert [(r.index, r.field) for r in result.rejected] == [(0, "sentAt")]
    # The rejected event's messageId was never claimed: a corrected resend is stored.
    fixed = body("bad")
    assert asyncio.run(collector.ingest_batch(SOURCE, parse_batch(fixed))).accepted == 1


def test_a_failing_stage_leaves_no_claim_behind(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, log_partitions=4)
    engine = connect_state(settings.resolved_database_url())
    upgrade_state(engine)
    log = SQLiteLog(tmp_path / "log.db", fsync="normal")

    def explode(batch: object) -> None:
        raise RuntimeError("stage bug")

    broken = Collector(
        settings, log, QuarantineStore(engine), ManualClock(NOW), extra_stages=[explode]
    )
    with pytest.raises(RuntimeError):
        asyncio.run(broken.ingest_batch(SOURCE, parse_batch(body("a"))))
    assert broken.deduper.claim([dedupe_key(SOURCE.id, "a")], None) == [True]


def test_a_cancelled_request_whose_append_commits_is_not_stored_twice(tmp_path: Path) -> None:
    collector, log = make(tmp_path)

    async def scenario() -> tuple[int, int]:
        log.gate = asyncio.Event()
        first = asyncio.create_task(collector.ingest_batch(SOURCE, parse_batch(body("m1"))))
        await asyncio.sleep(0.01)
        replay = asyncio.create_task(collector.ingest_batch(SOURCE, parse_batch(body("m1"))))
        await asyncio.sleep(0.01)
        first.cancel()  # the client went away; the append it started goes on
        await asyncio.sleep(0.01)
        log.gate.set()
        result = await replay
        return result.accepted, result.duplicates

    assert asyncio.run(scenario()) == (0, 1)
    stored = [decode_log_message(r.payload).message_id for r in asyncio.run(log.read(0, 10))]
    assert stored == ["m1"]
