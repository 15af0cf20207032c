"""Scale-out event log on NATS JetStream: one file-backed stream, one subject per partition.

Offsets are JetStream stream sequences. ``append`` publishes without waiting between
messages and returns once every PubAck is in; the ``Nats-Msg-Id`` header carries the
entry's dedupe key, so JetStream itself drops a replay inside the duplicate window.
Reads use short-lived ephemeral pull consumers (no acks, state in memory) that start
at the wanted sequence and are deleted when the read ends. A PubAck means the server
has written the message (it survives the server being killed), not that it fsynced:
that takes ``sync_interval: always`` in the server's config (NATS 2.10+) or replicas.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Final
from urllib.parse import urlsplit

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from remarket.errors import StorageError
from remarket.storage.log.base import LogEntry, LogRecord

__all__ = ["NatsLog"]

_logger = logging.getLogger(__name__)
_MSG_ID: Final = "Nats-Msg-Id"
_STATUS: Final = "Status"
# Bounds what one pull request makes the server push at us: a large read is fetched
# in chunks so a slow client never trips the server's slow-consumer cut-off.
_PULL_BATCH: Final = 1_000
# A read's consumer outlives a crashed reader by this much before the server drops it.
_CONSUMER_IDLE_S: Final = 30.0
_NAME: Final = re.compile(r"[A-Za-z0-9_-]+")


async def _log_error(exc: Exception) -> None:
    # The client reports each failed (re)connect here; one line each is enough.
    _logger.warning("NATS: %s", str(exc) or type(exc).__name__)


@contextmanager
def _storage_errors(action: str) -> Iterator[None]:
    try:
        yield
    except (NatsError, TimeoutError) as exc:
        detail = str(exc) or ("timed out" if isinstance(exc, TimeoutError) else repr(exc))
        raise StorageError(f"NATS JetStream {action} failed: {detail}") from exc


def _offset_key(consumer: str) -> str:
    # KV keys allow few characters; names outside them are base64-encoded behind a
    # prefix that contains a dot, which a plain name never does, so no two collide.
    if _NAME.fullmatch(consumer):
        return consumer
    return "b64." + base64.urlsafe_b64encode(consumer.encode()).decode().rstrip("=")


def _consumer_name(key: str) -> str:
    if not key.startswith("b64."):
        return key
    encoded = key.removeprefix("b64.")
    return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()


def _sequences(reply: str) -> tuple[int, int]:
    """Stream sequence and count still pending, from a pulled message's reply subject."""
    tokens = reply.split(".")
    # $JS.ACK.<stream>.<consumer>.<delivered>.<seq>.<cseq>.<time>.<pending>; newer
    # servers may add <domain>.<account> after ACK and a random token at the end.
    at = 5 if len(tokens) == 9 else 7
    return int(tokens[at]), int(tokens[at + 3])


class _Inbox:
    """Collects, in order, what the pull requests of one read deliver.

    ``only``, when set, names the subjects to keep because the server did not filter.
    """

    def __init__(self) -> None:
        self.kept: list[tuple[int, Msg]] = []
        self.pending = 0
        self.only: set[str] | None = None
        self._seen = 0
        self._batch = 0
        self._goal = 0
        self._done: asyncio.Future[None] | None = None

    def expect(self, batch: int, goal: int) -> asyncio.Future[None]:
        """A future done once ``batch`` messages came, ``goal`` were kept, or the
        server ended the request early."""
        self._seen, self._batch, self._goal = 0, batch, goal
        self._done = asyncio.get_running_loop().create_future()
        return self._done

    async def deliver(self, msg: Msg) -> None:
        done = self._done
        if done is None or done.done():
            return
        headers = msg.headers or {}
        if (status := headers.get(_STATUS)) is not None:
            self.pending = 0
            if status in ("404", "408"):  # no messages (yet), or the wait expired
                done.set_result(None)
            else:
                reason = headers.get("Description", "")
                done.set_exception(StorageError(f"NATS JetStream pull failed: {status} {reason}"))
            return
        self._seen += 1
        seq, self.pending = _sequences(msg.reply)
        if self.only is None or msg.subject in self.only:
            self.kept.append((seq, msg))
        if self._seen >= self._batch or len(self.kept) >= self._goal:
            done.set_result(None)


class NatsLog:
    """The event log on a NATS JetStream server; belongs to the event loop that opened it.

    Illustrative (needs a server)::

        log = await NatsLog.connect("nats://127.0.0.1:4222", stream="EVENTS",
                                    subject_prefix="events", partitions=16,
                                    duplicate_window_s=86_400)
        [offset] = await log.append([LogEntry(b"{}", 3, b"message-id")])
        records = await log.read(offset - 1, 100, wait=1.0, partitions={3})
        await log.close()
    """

    _offsets: KeyValue  # set by connect

    dedupes_itself = True

    def __init__(
        self, nc: Client, *, stream: str, subject_prefix: str, partitions: int, timeout: float
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream(timeout=timeout)
        self._stream = stream
        self._bucket = f"{stream}_offsets"
        self._prefix = subject_prefix
        self._partitions = partitions
        self._timeout = timeout
        self._closed = False
        # PubAcks come back to one inbox, each to its own reply subject, so publishes
        # need not wait in turn. nats-py's publish_async does the same at about twice
        # the CPU per message, and client CPU is what bounds append throughput.
        self._ack_inbox = nc.new_inbox()
        self._acks_sent = 0
        self._awaiting_ack: dict[str, asyncio.Future[int]] = {}

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        stream: str,
        subject_prefix: str,
        partitions: int,
        duplicate_window_s: float,
        max_age_s: float = 0.0,
        timeout: float = 10.0,
    ) -> NatsLog:
        """Connect, then create the stream and the offsets bucket or bring them up to date.

        ``max_age_s`` > 0: the stream forgets messages older than that (retention of the
        scale-out log); 0 leaves the stream's own setting (unlimited when created here).
        """
        if not _NAME.fullmatch(stream):
            raise ValueError(f"stream name must match [A-Za-z0-9_-]+, got {stream!r}")
        if not all(_NAME.fullmatch(token) for token in subject_prefix.split(".")):
            raise ValueError(
                f"subject prefix must be [A-Za-z0-9_-]+ tokens and dots, got {subject_prefix!r}"
            )
        if partitions < 1 or duplicate_window_s <= 0:
            raise ValueError("partitions and duplicate_window_s must be positive")
        if max_age_s < 0 or 0 < max_age_s < duplicate_window_s:
            raise ValueError("max_age_s must be 0 (unlimited) or at least duplicate_window_s")
        nc = Client()
        try:
            with _storage_errors(f"connect to {urlsplit(url).netloc.rpartition('@')[2]}"):
                async with asyncio.timeout(timeout):
                    # Reconnect forever: while the server is away, appends fail after
                    # `timeout` with a StorageError instead of the connection dying.
                    await nc.connect(
                        url, name="remarket-log", max_reconnect_attempts=-1, error_cb=_log_error
                    )
            log = cls(
                nc,
                stream=stream,
                subject_prefix=subject_prefix,
                partitions=partitions,
                timeout=timeout,
            )
            with _storage_errors(f"setup of stream {stream}"):
                await log._setup(duplicate_window_s, max_age_s)
        except BaseException:
            await nc.close()
            raise
        return log

    async def _setup(self, duplicate_window: float, max_age: float) -> None:
        js, name, subjects = self._js, self._stream, [f"{self._prefix}.*"]
        try:
            config = (await js.stream_info(name)).config
        except NotFoundError:
            await js.add_stream(
                name=name,
                subjects=subjects,
                storage=StorageType.FILE,
                duplicate_window=duplicate_window,
                max_age=max_age or None,
            )
        else:
            if config.storage != StorageType.FILE:
                raise StorageError(f"stream {name} has {config.storage} storage, needs file")
            owned = {"subjects": subjects, "duplicate_window": duplicate_window}
            if max_age:
                owned["max_age"] = max_age
            if any(getattr(config, key) != value for key, value in owned.items()):
                # Keep what an operator tuned (limits, replicas); set only what we own.
                await js.update_stream(config.evolve(**owned))
        try:
            self._offsets = await js.key_value(self._bucket)
        except BucketNotFoundError:
            self._offsets = await js.create_key_value(
                bucket=self._bucket, history=1, storage=StorageType.FILE
            )
        await self._nc.subscribe(f"{self._ack_inbox}.*", cb=self._on_ack)

    # -- writing ---------------------------------------------------------------

    async def append(self, entries: Sequence[LogEntry]) -> list[int]:
        if not entries:
            return []
        if self._closed:
            raise StorageError("the event log is closed")
        for entry in entries:
            if not 0 <= entry.partition < self._partitions:
                raise ValueError(
                    f"partition must be in [0, {self._partitions}), got {entry.partition}"
                )
        tokens: list[str] = []
        try:
            with _storage_errors(f"append to stream {self._stream}"):
                async with asyncio.timeout(self._timeout):
                    # One connection sends in call order and the server sequences in
                    # arrival order, so offsets grow in append order.
                    futures: list[asyncio.Future[int]] = []
                    for entry in entries:
                        self._acks_sent += 1
                        token = str(self._acks_sent)
                        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
                        self._awaiting_ack[token] = future
                        tokens.append(token)
                        futures.append(future)
                        await self._nc.publish(
                            f"{self._prefix}.{entry.partition}",
                            entry.payload,
                            reply=f"{self._ack_inbox}.{token}",
                            headers={_MSG_ID: entry.dedupe_key.hex()},
                        )
                    return await asyncio.gather(*futures)
        finally:
            for token in tokens:
                if (waiting := self._awaiting_ack.pop(token, None)) is not None:
                    waiting.cancel()

    async def _on_ack(self, msg: Msg) -> None:
        future = self._awaiting_ack.pop(msg.subject[len(self._ack_inbox) + 1 :], None)
        if future is None or future.done():
            return
        try:
            if msg.headers and msg.headers.get(_STATUS) == "503":
                raise ValueError("no stream takes the subject")
            ack = json.loads(msg.data)
            if (error := ack.get("error")) is None:
                future.set_result(0 if ack.get("duplicate") else int(ack["seq"]))
                return
            detail = f"{error.get('description')} (code {error.get('err_code')})"
        except (ValueError, KeyError, AttributeError) as exc:
            detail = str(exc)
        future.set_exception(StorageError(f"NATS JetStream append failed: {detail}"))

    # -- reading ---------------------------------------------------------------

    async def read(
        self,
        after: int,
        limit: int,
        *,
        wait: float = 0.0,
        partitions: Collection[int] | None = None,
    ) -> list[LogRecord]:
        if limit <= 0 or (partitions is not None and not partitions):
            return []
        subjects = None if partitions is None else {f"{self._prefix}.{p}" for p in partitions}
        with _storage_errors(f"read from stream {self._stream}"):
            msgs = await self._scan(max(after, 0) + 1, limit, wait, subjects)
        start = len(self._prefix) + 1
        return [LogRecord(seq, int(m.subject[start:]), m.data) for seq, m in msgs]

    async def _scan(
        self,
        start: int,
        limit: int,
        wait: float,
        subjects: set[str] | None,
        *,
        headers_only: bool = False,
    ) -> list[tuple[int, Msg]]:
        """Up to ``limit`` messages and their sequences from ``start`` on, in ``subjects``."""
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=_CONSUMER_IDLE_S,
            mem_storage=True,
            headers_only=headers_only or None,
        )
        if subjects is not None and len(subjects) == 1:
            config.filter_subject = next(iter(subjects))
        elif subjects is not None:
            config.filter_subjects = sorted(subjects)
        inbox = _Inbox()
        sub = await self._nc.subscribe(self._nc.new_inbox(), cb=inbox.deliver)
        try:
            info = await self._js.add_consumer(self._stream, config)
            try:
                if config.filter_subjects and not info.config.filter_subjects:
                    # A server before 2.10 ignores filter_subjects: keep ours here.
                    inbox.only = subjects
                inbox.pending = info.num_pending or 0
                await self._pull(sub, info.name, inbox, limit, wait)
            finally:
                await self._drop_consumer(info.name)
        finally:
            await sub.unsubscribe()
        return inbox.kept[:limit]

    async def _pull(
        self, sub: Subscription, consumer: str, inbox: _Inbox, limit: int, wait: float
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{self._stream}.{consumer}"
        while len(inbox.kept) < limit:
            if inbox.pending > 0:
                batch = min(inbox.pending, _PULL_BATCH)
                if inbox.only is None:
                    batch = min(batch, limit - len(inbox.kept))
                request: dict[str, object] = {"batch": batch, "no_wait": True}
                goal, patience = limit, self._timeout
            else:
                remaining = deadline - loop.time()
                if inbox.kept or remaining <= 0:
                    return
                # Lingers on the server until a message comes or it expires (408).
                batch = min(limit, _PULL_BATCH)
                request = {"batch": batch, "expires": int(remaining * 1e9)}
                goal, patience = 1, remaining + self._timeout
            done = inbox.expect(batch, goal)
            await self._nc.publish(next_subject, json.dumps(request).encode(), reply=sub.subject)
            await asyncio.wait_for(done, patience)

    async def _drop_consumer(self, name: str) -> None:
        try:
            await self._js.delete_consumer(self._stream, name)
        except (NatsError, TimeoutError):
            # The server drops an idle consumer by itself after _CONSUMER_IDLE_S, and
            # failing a read that already has its records would only force a retry.
            pass

    async def end_offset(self) -> int:
        with _storage_errors(f"info of stream {self._stream}"):
            info = await self._js.stream_info(self._stream)
        return info.state.last_seq

    async def recent_dedupe_keys(self, limit: int) -> list[bytes]:
        if limit <= 0:
            return []
        with _storage_errors(f"read from stream {self._stream}"):
            state = (await self._js.stream_info(self._stream)).state
            if state.last_seq == 0:
                return []
            start = max(state.first_seq, state.last_seq - limit + 1)
            msgs = await self._scan(start, limit, 0.0, None, headers_only=True)
        keys = ((m.headers or {}).get(_MSG_ID) for _, m in reversed(msgs))
        return [bytes.fromhex(key) for key in keys if key is not None]

    # -- consumer offsets --------------------------------------------------------

    async def commit(self, consumer: str, offset: int) -> None:
        with _storage_errors(f"commit of consumer {consumer!r}"):
            await self._offsets.put(_offset_key(consumer), str(offset).encode())

    async def committed(self) -> dict[str, int]:
        with _storage_errors("read of consumer offsets"):
            # Listing keys from the bucket stream's subjects needs no consumer, unlike
            # KeyValue.keys(), whose watcher lingers on the server for minutes.
            info = await self._js.stream_info(f"KV_{self._bucket}", subjects_filter=">")
            keys = [s.removeprefix(f"$KV.{self._bucket}.") for s in info.state.subjects or {}]
            entries = await asyncio.gather(*(self._offsets.get(key) for key in keys))
        return {_consumer_name(e.key): int(e.value) for e in entries if e.value is not None}

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._nc.is_closed:
            with _storage_errors("close"):
                await self._nc.drain()
