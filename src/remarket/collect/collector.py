"""The ingest pipeline's front door: from a request's bytes to events durably in the log."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import msgspec

from remarket.clock import Clock
from remarket.collect.dedupe import Deduper
from remarket.collect.quarantine import HELD, Quarantined, QuarantineStore, Rejection
from remarket.collect.sources import Source, SourceRegistry
from remarket.collect.stages import (
    Dedupe,
    Enrich,
    InFlight,
    Stage,
    Validate,
    error_field,
    partition_of,
)
from remarket.config import Settings
from remarket.errors import InvalidInput, PayloadTooLarge
from remarket.metrics import EVENTS_ACCEPTED, EVENTS_DUPLICATE, EVENTS_REJECTED
from remarket.schema.events import Batch, as_utc, encode_message
from remarket.storage.log import EventLog, LogEntry

__all__ = ["Collector", "IngestResult", "ReplayResult", "parse_batch", "replay_quarantined"]

_BATCH: Final = msgspec.json.Decoder(Batch)


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What happened to a request's events; every event is in exactly one count."""

    accepted: int
    duplicates: int
    rejected: list[Rejection] = field(default_factory=list)
    dropped: int = 0
    """Events left out on purpose: a person without analytics consent."""


def _malformed(exc: msgspec.DecodeError, body: bytes) -> InvalidInput:
    text = str(exc)
    if "truncated" in text:
        text = f"JSON is malformed: input ends early (byte {len(body)})"
    return InvalidInput(text, field="body")


def parse_batch(body: bytes) -> Batch:
    """Decode a batch body; a malformed or mistyped envelope is one InvalidInput."""
    try:
        return _BATCH.decode(body)
    except msgspec.ValidationError as exc:
        path, rule = error_field(exc)
        raise InvalidInput(rule, field=path or "body") from exc
    except msgspec.DecodeError as exc:
        raise _malformed(exc, body) from exc


class Collector:
    """Runs a request's events through the stages and appends the survivors to the log.

    The request is acknowledged only after ``ingest`` returns, i.e. after the events are
    durable in the log and the rejected ones are in the quarantine table.
    """

    def __init__(
        self,
        settings: Settings,
        log: EventLog,
        quarantine: QuarantineStore,
        clock: Clock,
        *,
        extra_stages: Sequence[Stage] = (),
        barriers: Sequence[Callable[[], Awaitable[None]]] = (),
    ) -> None:
        self._log = log
        self._quarantine = quarantine
        self._clock = clock
        self._partitions = settings.log_partitions
        self._max_event = settings.max_event_bytes
        self.deduper = Deduper(settings.dedupe_capacity)
        self._validate = Validate(settings.max_event_bytes)
        # Dedupe last: once an event's messageId is claimed nothing may reject it, or a
        # corrected resend of that event would be answered "duplicate".
        self._dedupe = Dedupe(self.deduper)
        self._stages: list[Stage] = [Enrich(), *extra_stages, self._dedupe]
        # Awaited after the stages, before the append: what a stage made that the events
        # depend on (the keys they are sealed under) must be durable first.
        self._barriers = list(barriers)

    async def warm_up(self, capacity: int) -> int:
        """Remember the messageIds of the newest events in the log (after a restart).

        Skipped for a log that de-duplicates itself: JetStream keeps its own window.
        """
        if self._log.dedupes_itself:
            return 0
        keys = await self._log.recent_dedupe_keys(capacity)
        self.deduper.warm(keys)
        return len(keys)

    async def ingest_single(
        self,
        source: Source,
        body: bytes,
        event_type: str,
        *,
        ip: str | None = None,
        user_agent: str | None = None,
    ) -> IngestResult:
        """One event from ``/v1/<type>``: an invalid event is refused, not quarantined
        (one the guard holds back is quarantined)."""
        if len(body) > self._max_event:
            raise PayloadTooLarge(
                f"event is {len(body)} bytes; max_event_bytes is {self._max_event}",
                field="max_event_bytes",
            )
        try:
            # Syntax only (Raw builds nothing): the typed decode follows in Validate, and a
            # malformed body is a 400 for the whole request, with the byte position.
            msgspec.json.decode(body, type=msgspec.Raw)
        except msgspec.DecodeError as exc:
            raise _malformed(exc, body) from exc
        batch = InFlight(
            source,
            self._clock.now(),
            [body],
            endpoint_type=event_type,
            ip=ip,
            user_agent=user_agent,
        )
        result = await self._run(batch, quarantine=False)
        invalid = [r for r in result.rejected if r.reason not in HELD]
        if invalid:
            raise InvalidInput(invalid[0].detail, field=invalid[0].field)
        return result

    async def ingest_batch(
        self,
        source: Source,
        batch: Batch,
        *,
        quarantine: bool = True,
        ip: str | None = None,
        user_agent: str | None = None,
        trusted: bool = False,
    ) -> IngestResult:
        """Events of ``/v1/batch`` or ``/v1/import``: invalid ones go to the quarantine.

        ``trusted``: an operator's own events, a quarantine replay or a historical import
        (no velocity check: one customer's years of orders are not a flood).
        """
        raws = [bytes(raw) for raw in batch.batch]
        if batch.context is not None:
            raws = [_with_batch_context(raw, batch.context) for raw in raws]
        sent_at = as_utc(batch.sent_at) if batch.sent_at is not None else None
        flight = InFlight(
            source,
            self._clock.now(),
            raws,
            sent_at=sent_at,
            ip=ip,
            user_agent=user_agent,
            trusted=trusted,
        )
        return await self._run(flight, quarantine=quarantine)

    async def _run(self, batch: InFlight, *, quarantine: bool) -> IngestResult:
        self._validate(batch)
        accepted, duplicates, rejected = await self._append(batch)
        # After the append: a retry of a request whose append failed must not quarantine
        # its rejected events twice. Events the guard held back are always kept.
        kept = rejected if quarantine else [r for r in rejected if r.reason in HELD]
        if kept:
            await asyncio.to_thread(self._quarantine.add, batch.source.id, batch.received_at, kept)
        EVENTS_ACCEPTED.labels(batch.source.name).inc(accepted)
        if duplicates:
            EVENTS_DUPLICATE.labels(batch.source.name).inc(duplicates)
        for rejection in rejected:
            EVENTS_REJECTED.labels(rejection.reason).inc()
        return IngestResult(accepted, duplicates, rejected, batch.dropped)

    async def _append(
        self, batch: InFlight, stages: Sequence[Stage] | None = None
    ) -> tuple[int, int, list[Rejection]]:
        """Run the stages after validation and append.

        Returns (accepted, duplicates, rejections). Every claim the batch makes is
        settled on every path, so a replay waiting on this batch never hangs.
        """
        append: asyncio.Future[list[int]] | None = None
        try:
            for stage in self._stages if stages is None else stages:
                stage(batch)
            for barrier in self._barriers:
                await barrier()
            partitions = self._partitions
            entries = [
                LogEntry(encode_message(e.message), partition_of(e.message, partitions), e.key)
                for e in batch.events
            ]
            append = asyncio.ensure_future(self._log.append(entries))
            offsets = await asyncio.shield(append)
        except asyncio.CancelledError:
            if batch.owner is not None and append is not None:
                _settle_when_done(self.deduper, append, batch.claimed, batch.owner)
            elif batch.owner is not None:
                self.deduper.settle(batch.claimed, batch.owner, durable=False)
            raise
        except BaseException:
            if batch.owner is not None:
                self.deduper.settle(batch.claimed, batch.owner, durable=False)
            raise
        if batch.owner is not None:
            self.deduper.settle(batch.claimed, batch.owner, durable=True)
        # A backend that de-duplicates itself (JetStream) reports a replay as offset 0.
        replays = sum(1 for o in offsets if o == 0)
        accepted, duplicates = len(entries) - replays, batch.duplicates + replays
        rejected = list(batch.rejected)
        retry = []
        for event, original in batch.waiting:
            if await original:
                duplicates += 1
            else:
                retry.append(event)
        if retry:
            # The original append failed: these events are ours to append after all.
            again = InFlight(
                batch.source,
                batch.received_at,
                batch.raw,
                endpoint_type=batch.endpoint_type,
                sent_at=batch.sent_at,
                events=retry,
            )
            # They passed every stage already: only their claims are to be made again.
            more = await self._append(again, [self._dedupe])
            accepted, duplicates = accepted + more[0], duplicates + more[1]
            rejected += more[2]
        return accepted, duplicates, rejected


def _settle_when_done(
    deduper: Deduper,
    append: asyncio.Future[list[int]],
    claimed: list[bytes],
    owner: asyncio.Future[bool],
) -> None:
    """The request was cancelled, but its append goes on (the log may still commit it):
    settle the claims by the append's real outcome, so a replay is neither stored twice
    nor left waiting."""

    def done(future: asyncio.Future[list[int]]) -> None:
        durable = not future.cancelled() and future.exception() is None
        deduper.settle(claimed, owner, durable=durable)

    append.add_done_callback(done)


_OBJECT: Final = msgspec.json.Decoder(dict[str, object])


def _with_batch_context(raw: bytes, shared: dict[str, Any]) -> bytes:
    """Segment merges a batch-level context into each event's (the event's wins)."""
    try:
        event = _OBJECT.decode(raw)
    except msgspec.MsgspecError:
        return raw  # left for validation to reject with its own reason
    own = event.get("context")
    event["context"] = {**shared, **own} if isinstance(own, dict) else shared
    return msgspec.json.encode(event)


async def replay_quarantined(
    collector: Collector,
    store: QuarantineStore,
    sources: SourceRegistry,
    entries: Sequence[Quarantined],
    now: datetime,
    *,
    actor: str = "cli",
) -> ReplayResult:
    """Send quarantined events through the pipeline again (after a fix upstream).

    Entries that now pass are appended and marked replayed (audited as ``actor``); the
    rest stay, unchanged.
    """
    by_id = {s.id: s for s in sources.list()}
    done: list[int] = []
    still: list[Rejection] = []
    for entry in entries:
        source = by_id.get(entry.source_id)
        if source is None:
            still.append(Rejection(entry.id, "unknown_source", "source_id", entry.source_id, b""))
            continue
        result = await collector.ingest_batch(
            source, Batch(batch=[msgspec.Raw(entry.payload)]), quarantine=False, trusted=True
        )
        if result.rejected:
            first = result.rejected[0]
            still.append(Rejection(entry.id, first.reason, first.field, first.detail, b""))
        else:
            # At once, not after the loop: a failure further on must not replay it again.
            await asyncio.to_thread(store.mark_replayed, [entry.id], now, actor=actor)
            done.append(entry.id)
    return ReplayResult(replayed=done, still_invalid=still)


@dataclass(frozen=True, slots=True)
class ReplayResult:
    replayed: list[int]
    still_invalid: list[Rejection]
