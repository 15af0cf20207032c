"""The deliverer: claims due outbox rows, guards, renders, sends and records the outcome."""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Final, TypeVar

from sqlalchemy import Connection, Engine, Row, delete, or_, select, update

from remarket.channels.audiences import AudienceProvider, AudienceStore
from remarket.channels.guards import (
    MESSAGING,
    SEND,
    Verdict,
    address_of,
    cap_reached,
    journey_sent_today,
    purpose_of,
    quiet_until,
    suppressed,
    zone_of,
)
from remarket.channels.outbox import RESENT
from remarket.channels.providers import Envelope, Provider, SendFailed
from remarket.channels.registry import ProviderStore
from remarket.channels.removals import is_erasure_removal
from remarket.channels.secrets import SecretBox, load_key
from remarket.channels.templates import Template, TemplateStore, render, template_context
from remarket.clock import Clock
from remarket.config import Settings
from remarket.errors import InvalidInput, NotFound
from remarket.privacy.consent import ConsentLedger
from remarket.privacy.transactions import immediate
from remarket.schema.events import as_utc
from remarket.storage.state import (
    channel_audiences,
    channel_outbox,
    profile_traits,
    profiles,
    segment_members,
)
from remarket.storage.state.reads import any_row

__all__ = ["Delivery", "unsubscribe_url"]

_log = logging.getLogger(__name__)

_PAUSED_RECHECK: Final = timedelta(seconds=0.5)
_RATE_WAIT_MAX: Final = 1.0
_PROVIDER_REFRESH_S: Final = 0.5
_AUDIENCE_SYNC_S: Final = 5.0
_NO_PROVIDER_WAIT: Final = timedelta(seconds=30)
_T = TypeVar("_T")


def unsubscribe_url(box: SecretBox, settings: Settings, profile_id: str) -> str:
    """The signed one-click link of a profile's e-mails."""
    token = box.sign({"p": profile_id, "c": "email"})
    return f"{settings.channels_public_url.rstrip('/')}/v1/unsubscribe/{token}"


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What to record for one claimed row."""

    status: str  # sent | skipped | dead | pending
    reason: str | None = None
    due_at: datetime | None = None
    error: str | None = None
    failed: bool = False
    attempted: bool = True
    reserved: bool = False  # counted against the journey's daily limit while in flight


@dataclass(slots=True)
class _Live:
    id: str
    stamp: str
    provider: Provider
    rate_per_s: int | None
    next_free: float = 0.0


class Delivery:
    """Delivers the channel outbox, each message at most once per attempt, guarded.

    ``step()`` claims a batch of due rows (a lease keeps other deliverers off them),
    and for each: a paused journey's row is put back; the guards decide send, skip or
    defer; the template is rendered; the provider sends; the outcome is recorded at
    once, so a crash repeats at most the messages in flight (see :mod:`remarket.channels`
    for the guarantee). ``is_paused(journey_id)`` and ``daily_limit(journey_id)`` come
    from the journeys runtime.
    """

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        clock: Clock,
        is_paused: Callable[[str], bool] = lambda _journey: False,
        daily_limit: Callable[[str], int | None] = lambda _journey: None,
        *,
        lease: timedelta = timedelta(seconds=60),
        poll_interval: float = 0.2,
        concurrency: int = 8,
        seed: int | None = None,
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._clock = clock
        self._is_paused = is_paused
        self._daily_limit = daily_limit
        self._lease = lease
        self._poll = poll_interval
        self._concurrency = concurrency
        # Sends of a journey in flight now, so its daily limit holds under concurrency.
        self._in_flight: dict[str, int] = {}
        self._in_flight_lock = threading.Lock()
        # The deliverer's own threads: one for the guards (reads, rendering), one for its
        # writes (claims, marks, outcomes), which so never wait on each other in SQLite's
        # busy handler. In the shared pool, an outcome queued behind guard checks (and
        # other workers' jobs) and six guard threads fought the event loop for the GIL:
        # 16-36 ms (mean, loaded 2-core machine) passed between the SMTP server taking a
        # message and its record, a window in which a crash repeats it; now 10-12 ms.
        self._guards = ThreadPoolExecutor(1, thread_name_prefix="remarket-delivery-guards")
        self._writes = ThreadPoolExecutor(1, thread_name_prefix="remarket-delivery-writes")
        self._random = random.Random(seed)
        self._box = SecretBox(load_key(settings))
        self._providers = ProviderStore(engine, self._box)
        self._templates = TemplateStore(engine)
        self._template_cache: dict[str, Template] = {}
        self._consent = ConsentLedger(engine, clock=clock)
        self._audiences = AudienceStore(engine)
        self._live: dict[tuple[str, str], _Live] = {}
        self._refreshed = float("-inf")
        self._postgres = engine.dialect.name == "postgresql"

    # -- the loop ----------------------------------------------------------------

    async def run(self, stop: threading.Event) -> None:
        """Step until ``stop`` is set; idle steps wait ``poll_interval``. Every few
        seconds, audiences are synced with their segments first."""
        loop = asyncio.get_running_loop()
        synced = float("-inf")
        try:
            while not stop.is_set():
                try:
                    if loop.time() - synced >= _AUDIENCE_SYNC_S:
                        synced = loop.time()
                        await asyncio.to_thread(self._audiences.sync, now=self._clock.now())
                    done = await self.step()
                except Exception:
                    _log.exception("delivery step failed; retrying")
                    done = 0
                if not done:
                    await asyncio.sleep(self._poll)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Close the providers' connections and the deliverer's threads (it is done)."""
        live, self._live = self._live, {}
        for entry in {id(e.provider): e for e in live.values()}.values():
            await entry.provider.aclose()
        self._guards.shutdown()
        self._writes.shutdown()

    async def _in(self, pool: ThreadPoolExecutor, call: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(pool, call)

    async def step(self) -> int:
        """Handle one batch of due rows; how many were claimed.

        One profile's rows go one after the other (so its caps count each send);
        ``concurrency`` profiles are served side by side. Rows not started before half
        the lease has passed are left for the next claim.
        """
        now = self._clock.now()
        rows = await self._in(self._writes, functools.partial(self._claim, now))
        if not rows:
            return 0
        await self._refresh_providers()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._lease.total_seconds() / 2
        by_profile: dict[str, list[Row[Any]]] = {}
        uploads: list[Row[Any]] = []
        for row in rows:
            if row.channel == "audience":
                uploads.append(row)
            else:
                by_profile.setdefault(row.profile_id, []).append(row)
        queue = list(by_profile.values())
        started: set[int] = {row.id for row in uploads}

        async def upload() -> None:
            for row, outcome in await self._upload(uploads) if uploads else []:
                await self._in(self._writes, functools.partial(self._record, row, outcome))

        async def worker() -> None:
            while queue:
                for row in queue.pop():
                    if loop.time() > deadline:
                        return
                    started.add(row.id)
                    outcome = await self._deliver(row)
                    await self._in(self._writes, functools.partial(self._record, row, outcome))
                    if outcome.reserved and row.journey_id is not None:
                        self._release(row.journey_id)

        await asyncio.gather(
            upload(), *(worker() for _ in range(min(self._concurrency, len(queue))))
        )
        left = [row.id for row in rows if row.id not in started]
        if left:
            await self._in(self._writes, functools.partial(self._unclaim, left))
        return len(rows)

    def _unclaim(self, ids: list[int]) -> None:
        """Give back rows claimed but not started (their attempt did not happen)."""
        with self._engine.begin() as conn:
            conn.execute(
                update(channel_outbox)
                .where(channel_outbox.c.id.in_(ids), channel_outbox.c.status == "pending")
                .values(lease_until=None, attempts=channel_outbox.c.attempts - 1)
            )

    # -- claiming and recording ----------------------------------------------------

    def _claim(self, now: datetime) -> list[Row[Any]]:
        due = (
            (channel_outbox.c.status == "pending")
            & (channel_outbox.c.due_at <= now)
            & or_(channel_outbox.c.lease_until.is_(None), channel_outbox.c.lease_until <= now)
        )
        if not any_row(self._engine, select(channel_outbox.c.id).where(due)):
            return []  # before BEGIN IMMEDIATE, which would take SQLite's write lock
        with immediate(self._engine) as conn:
            query = (
                select(channel_outbox)
                .where(due)
                .order_by(channel_outbox.c.due_at, channel_outbox.c.id)
                .limit(self._settings.channels_batch_size)
            )
            if self._postgres:
                query = query.with_for_update(skip_locked=True)
            rows = list(conn.execute(query).all())
            if rows:
                # The attempt is counted before the send: a message that kills the
                # process every time still ends in the dead letters.
                conn.execute(
                    update(channel_outbox)
                    .where(channel_outbox.c.id.in_([r.id for r in rows]))
                    .values(
                        lease_until=now + self._lease,
                        attempts=channel_outbox.c.attempts + 1,
                    )
                )
        return rows

    def _mark_sending(self, ids: list[int]) -> None:
        """Commit that these rows' send begins (before the provider is reached): until
        their outcome is recorded, they are in doubt."""
        with self._engine.begin() as conn:
            conn.execute(
                update(channel_outbox)
                .where(channel_outbox.c.id.in_(ids), channel_outbox.c.status == "pending")
                .values(in_doubt=True)
            )

    def _record(self, row: Row[Any], outcome: _Outcome) -> None:
        now = self._clock.now()
        # ``row`` is as claimed: in doubt then if a deliverer died while sending it. It
        # stays in doubt whatever this attempt's outcome (deferred, paused, skipped: the
        # provider may have it all the same); this attempt's own mark is resolved.
        doubt = bool(row.in_doubt)
        values: dict[str, Any] = {"status": outcome.status, "in_doubt": doubt}
        values["reason"] = RESENT if doubt and outcome.status == "sent" else outcome.reason
        if not outcome.attempted:
            values["attempts"] = channel_outbox.c.attempts - 1
        if outcome.failed:
            values["failures"] = channel_outbox.c.failures + 1
            values["last_error"] = (outcome.error or "")[:2000]
        if outcome.status == "pending":
            values["due_at"] = outcome.due_at or now
            values["lease_until"] = now + _PAUSED_RECHECK if outcome.reason == "paused" else None
        else:
            values["finished_at"] = now
            values["lease_until"] = None
        mine = (channel_outbox.c.id == row.id, channel_outbox.c.status == "pending")
        with self._engine.begin() as conn:
            if outcome.status in ("sent", "skipped") and is_erasure_removal(row.variables):
                # Done with an erased person: nothing of them (not even hashes) stays.
                conn.execute(delete(channel_outbox).where(*mine))
            else:
                conn.execute(update(channel_outbox).where(*mine).values(values))

    # -- one message -----------------------------------------------------------------

    async def _decide(self, row: Row[Any]) -> _Outcome | tuple[Envelope, _Live]:
        """The outcome without sending (paused, skipped, deferred, unrenderable), or
        what to send through which provider."""
        if row.journey_id is not None and self._is_paused(row.journey_id):
            return _Outcome("pending", "paused", due_at=as_utc(row.due_at), attempted=False)
        try:
            verdict, envelope, provider = await self._in(
                self._guards, functools.partial(self._prepare, row)
            )
        except InvalidInput as exc:
            # A template that cannot render will not render on a retry either.
            return _Outcome("dead", "render_failed", error=exc.detail, failed=True)
        if verdict.action == "skip":
            return _Outcome("skipped", verdict.reason)
        if verdict.action == "defer":
            return _Outcome("pending", verdict.reason, due_at=verdict.until, attempted=False)
        assert envelope is not None and provider is not None
        return envelope, provider

    async def _deliver(self, row: Row[Any]) -> _Outcome:
        decided = await self._decide(row)
        if isinstance(decided, _Outcome):
            return decided
        envelope, provider = decided
        outcomes = await self._send([row], provider, lambda: provider.provider.send(envelope))
        return replace(outcomes[0], reserved=True)

    async def _send(
        self, rows: list[Row[Any]], provider: _Live, send: Callable[[], Awaitable[None]]
    ) -> list[_Outcome]:
        """Run ``send`` (one message, or one upload of many rows) within the provider's
        rate limit; the provider's answer is every row's outcome."""
        wait = self._rate_wait(provider)
        if wait > _RATE_WAIT_MAX:
            later = self._clock.now() + timedelta(seconds=wait)
            return [_Outcome("pending", "rate_limited", due_at=later, attempted=False)] * len(rows)
        if wait > 0:
            await asyncio.sleep(wait)
        ids = [row.id for row in rows]
        await self._in(self._writes, functools.partial(self._mark_sending, ids))
        try:
            await send()
        except SendFailed as exc:
            return [self._failure(row, exc) for row in rows]
        return [_Outcome("sent")] * len(rows)

    async def _upload(self, rows: list[Row[Any]]) -> list[tuple[Row[Any], _Outcome]]:
        """Audience rows: guarded one by one, uploaded together per audience and op."""
        decided = await asyncio.gather(*(self._decide(row) for row in rows))
        done: list[tuple[Row[Any], _Outcome]] = []
        groups: dict[tuple[str, str, str], list[tuple[Row[Any], Envelope, _Live]]] = {}
        for row, result in zip(rows, decided, strict=True):
            if isinstance(result, _Outcome):
                done.append((row, result))
                continue
            envelope, provider = result
            group = (provider.id, str(envelope.data["audience"]), str(envelope.data["op"]))
            groups.setdefault(group, []).append((row, envelope, provider))
        for members in groups.values():
            provider = members[0][2]
            uploader = provider.provider
            assert isinstance(uploader, AudienceProvider)
            envelopes = [m[1] for m in members]
            outcomes = await self._send(
                [m[0] for m in members], provider, functools.partial(uploader.send_many, envelopes)
            )
            done.extend(zip([m[0] for m in members], outcomes, strict=True))
        return done

    def _failure(self, row: Row[Any], exc: SendFailed) -> _Outcome:
        attempts = int(row.attempts) + 1
        if exc.permanent or attempts >= self._settings.channels_max_attempts:
            reason = "rejected" if exc.permanent else "attempts_exhausted"
            return _Outcome("dead", reason, error=exc.detail, failed=True)
        # Exponential backoff with "equal jitter": at least half the step, at most all.
        step = min(
            self._settings.channels_backoff_max_s,
            self._settings.channels_backoff_s * 2 ** (attempts - 1),
        )
        delay = step / 2 + self._random.uniform(0, step / 2)
        due = self._clock.now() + timedelta(seconds=delay)
        return _Outcome("pending", "retrying", due_at=due, error=exc.detail, failed=True)

    def _rate_wait(self, live: _Live) -> float:
        """Seconds until the provider may send again (and reserve that slot)."""
        if not live.rate_per_s:
            return 0.0
        loop = asyncio.get_running_loop()
        now = loop.time()
        slot = max(now, live.next_free)
        wait = slot - now
        if wait <= _RATE_WAIT_MAX:
            live.next_free = slot + 1.0 / live.rate_per_s
        return wait

    # -- guards and rendering (in a worker thread: they read the state store) ----------

    def _prepare(self, row: Row[Any]) -> tuple[Verdict, Envelope | None, _Live | None]:
        now = self._clock.now()
        channel: str = row.channel
        with self._engine.connect() as conn:
            live_id = self._live_id(conn, row.profile_id)
            family = sorted({row.profile_id, live_id})
            # Taking someone out of an audience is always allowed: no consent needed,
            # no suppression holds it back (and caps and quiet hours are for messages).
            removal = channel == "audience" and row.variables.get("op") == "remove"
            if not removal:
                if not self._consent.allowed(live_id, purpose_of(channel, self._settings)):
                    return Verdict("skip", "no_consent"), None, None
                if suppressed(conn, family, channel):
                    return Verdict("skip", "suppressed"), None, None
            traits = self._traits(conn, live_id)
            provider = self._provider_for(conn, row)
            if provider is None:
                # Not the person's doing: the message waits for a provider to be set up.
                return Verdict("defer", "no_provider", now + _NO_PROVIDER_WAIT), None, None
            if channel == "audience":
                return self._audience(conn, row, live_id, traits, provider)
            to = address_of(
                channel, traits, row.variables, self._settings.channels_phone_country_code
            )
            if to is None:
                return Verdict("skip", "no_address"), None, None
            if cap_reached(conn, family, channel, now, self._settings):
                return Verdict("skip", "frequency_cap"), None, None
            if channel in MESSAGING:
                zone = zone_of(traits, self._settings.channels_default_timezone)
                until = quiet_until(now, zone, self._settings.channels_quiet_hours)
                if until is not None:
                    return Verdict("defer", "quiet_hours", until), None, None
            envelope = self._envelope(row, live_id, traits, to)
            if row.journey_id is not None and not self._reserve(conn, row.journey_id, now):
                return Verdict("skip", "journey_daily_limit"), None, None
        return SEND, envelope, provider

    def _reserve(self, conn: Connection, journey_id: str, now: datetime) -> bool:
        """Count a send against the journey's daily limit (released when recorded)."""
        limit = self._daily_limit(journey_id)
        if limit is None:
            return True
        # The count is read under the lock: a send recorded and released between the
        # read and the check would otherwise be counted neither as sent nor in flight.
        with self._in_flight_lock:
            sent = journey_sent_today(conn, journey_id, now)
            if sent + self._in_flight.get(journey_id, 0) >= limit:
                return False
            self._in_flight[journey_id] = self._in_flight.get(journey_id, 0) + 1
        return True

    def _release(self, journey_id: str) -> None:
        with self._in_flight_lock:
            left = self._in_flight.get(journey_id, 0) - 1
            if left > 0:
                self._in_flight[journey_id] = left
            else:
                self._in_flight.pop(journey_id, None)

    @staticmethod
    def _live_id(conn: Connection, profile_id: str) -> str:
        merged = conn.scalar(
            select(profiles.c.merged_into).where(profiles.c.profile_id == profile_id)
        )
        return merged or profile_id

    @staticmethod
    def _traits(conn: Connection, profile_id: str) -> dict[str, Any]:
        rows = conn.execute(
            select(profile_traits.c.key, profile_traits.c.value).where(
                profile_traits.c.profile_id == profile_id
            )
        )
        return {key: value for key, value in rows}

    def _envelope(self, row: Row[Any], live_id: str, traits: dict[str, Any], to: str) -> Envelope:
        channel: str = row.channel
        if channel == "webhook":
            data = {
                "variables": row.variables,
                "event": row.trigger,
                "journey": {
                    "id": row.journey_id,
                    "version": row.journey_version,
                    "node": row.node_id,
                },
            }
            return Envelope(row.idempotency_key, live_id, channel, to, data=data)
        template = self._template(row.template_id)
        if template.channel != channel:
            raise InvalidInput(
                f"template {template.id!r} is for {template.channel}, not {channel}",
                field="template_id",
            )
        context = template_context(
            live_id, traits, trigger=row.trigger, variables=dict(row.variables)
        )
        link = unsubscribe_url(self._box, self._settings, live_id) if channel == "email" else None
        push_data = row.variables.get("data") if channel == "push" else None
        return Envelope(
            row.idempotency_key,
            live_id,
            channel,
            to,
            content=render(template, context),
            data=dict(push_data) if isinstance(push_data, dict) else {},
            unsubscribe_url=link,
        )

    def _template(self, template_id: str | None) -> Template:
        if template_id is None:
            raise InvalidInput("the message names no template", field="template_id")
        try:
            cached = self._template_cache.get(template_id)
            return cached if cached is not None else self._templates.get(template_id)
        except NotFound as exc:
            raise InvalidInput(exc.detail, field="template_id") from exc

    def _audience(
        self,
        conn: Connection,
        row: Row[Any],
        live_id: str,
        traits: dict[str, Any],
        provider: _Live,
    ) -> tuple[Verdict, Envelope | None, _Live | None]:
        op = row.variables.get("op")
        audience = conn.execute(
            select(channel_audiences).where(channel_audiences.c.id == row.variables.get("audience"))
        ).one_or_none()
        if audience is None:
            return Verdict("skip", "audience_gone"), None, None
        if is_erasure_removal(row.variables):
            # The person is gone: what the platform holds of them was hashed at erasure.
            data = {"audience": audience.external_id, "op": op, "hashed": row.variables["hashed"]}
            envelope = Envelope(row.idempotency_key, live_id, "audience", "", data=data)
            return SEND, envelope, provider
        member = conn.scalar(
            select(segment_members.c.profile_id).where(
                segment_members.c.segment == audience.segment,
                segment_members.c.profile_id.in_(sorted({row.profile_id, live_id})),
            )
        )
        # Uploads follow membership now: an add for someone who has left since (or a
        # remove for someone back in) is stale, and a later row carries the change. A
        # remove for withdrawn consent holds whatever the membership.
        withdrawn = op == "remove" and row.variables.get("cause") == "consent"
        if not withdrawn and (op == "add") != (member is not None):
            return Verdict("skip", "stale"), None, None
        email, phone = traits.get("email"), traits.get("phone")
        if not isinstance(email, str) and not isinstance(phone, str):
            return Verdict("skip", "no_address"), None, None
        data = {
            "audience": audience.external_id,
            "op": op,
            "email": email if isinstance(email, str) else None,
            "phone": phone if isinstance(phone, str) else None,
        }
        return SEND, Envelope(row.idempotency_key, live_id, "audience", "", data=data), provider

    # -- providers -------------------------------------------------------------------

    def _provider_for(self, conn: Connection, row: Row[Any]) -> _Live | None:
        kind = ""
        if row.channel == "audience":
            kind = (
                conn.scalar(
                    select(channel_audiences.c.platform).where(
                        channel_audiences.c.id == row.variables.get("audience")
                    )
                )
                or ""
            )
        return self._live.get((row.channel, kind))

    async def _refresh_providers(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() - self._refreshed < _PROVIDER_REFRESH_S:
            return
        self._refreshed = loop.time()
        # Templates too: an edit reaches the sends within the refresh interval.
        templates = await asyncio.to_thread(self._templates.all)
        self._template_cache = {t.id: t for t in templates}
        active = await asyncio.to_thread(self._providers.active)
        known = {e.id: e for e in self._live.values()}
        live: dict[tuple[str, str], _Live] = {}
        for spec in active:
            entry = known.get(spec.id)
            if entry is None or entry.stamp != spec.stamp:
                entry = _Live(spec.id, spec.stamp, spec.build(), spec.rate_per_s)
                known[spec.id] = entry
            live[(spec.channel, spec.kind)] = entry
            live[(spec.channel, "")] = entry
        in_use = {id(e.provider) for e in live.values()}
        for old in {id(e.provider): e for e in self._live.values()}.values():
            if id(old.provider) not in in_use:
                await old.provider.aclose()
        self._live = live
