"""Per-identity encryption keys for crypto-shredding: handles, creation, lookup, destruction.

At collect time an event's profile is not known yet, so keys belong to identifiers: the
key of ``("anonymous_id", "a-1")`` is named by its *handle*, an HMAC of the identifier
under a server secret, and stored in the key store (``pii_keys``: a file of its own
beside an embedded state store, :mod:`remarket.storage.state.keystore`). Erasure computes
the handles of every identifier of the profile and deletes their keys; events sealed
under them (:mod:`remarket.privacy.seal`) can then be neither read nor linked again.

Keys are made in memory on first use and written in group commits: :meth:`Keyring.durable`
returns once every key made so far is committed, and the collector awaits it before it
appends events sealed under them. A handle may end up with several keys (one per process
that met it first; a fresh one after an erasure): each sealed event names its key.

Rows are stored in key order (a per-keyring prefix and a counter: a new key is an append)
and indexed by handle in ``pii_key_handles`` later, in bulk (:meth:`Keyring.index_pending`,
run by the workers before they open a batch). Until then a row is found by handle through
the small partial index of unindexed rows, so erasure never depends on that step.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import secrets
import threading
import time
from collections.abc import Collection, Iterable
from typing import Final

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    func,
    not_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from remarket.clock import Clock, SystemClock
from remarket.entropy import random_bytes
from remarket.storage.state.bulk import bulk_insert
from remarket.storage.state.keystore import key_store, key_write
from remarket.storage.state.reads import any_row
from remarket.storage.state.tables import erasures, pii_key_handles, pii_keys, privacy_secrets

__all__ = ["HANDLE_PREFIX", "Keyring", "handle_secret", "keyed_digest"]

HANDLE_PREFIX: Final = "h_"
"""Handles start with it, so an id in the log that is a handle is recognisable."""

_SECRET_NAME: Final = "handle_hmac"
_LOOKUP_CHUNK: Final = 400
_CACHE_LIMIT: Final = 1_000_000
_INDEX_BATCH: Final = 20_000
_INDEX_CHUNK: Final = 500
# Indexing and erasure take turns on PostgreSQL (SQLite has one writer anyway): an erasure
# reading the handle index while rows are being moved into it could miss them.
_PG_LOCK: Final = text("SELECT pg_advisory_xact_lock(7262715263)")


def handle_secret(engine: Engine, clock: Clock) -> bytes:
    """The HMAC secret of handles and digests, made once per state store (every process
    must share it). A read, but the first time."""
    query = select(privacy_secrets.c.value).where(privacy_secrets.c.name == _SECRET_NAME)
    with engine.connect() as conn:
        value = conn.scalar(query)
    if value is None:
        insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        with engine.begin() as conn:
            conn.execute(
                insert(privacy_secrets)
                .values(name=_SECRET_NAME, value=secrets.token_bytes(32), created_at=clock.now())
                .on_conflict_do_nothing(index_elements=[privacy_secrets.c.name])
            )
            value = conn.scalar(query)  # ours, or the one another process made first
    assert value is not None  # inserted above if missing
    return bytes(value)


def keyed_digest(secret: bytes, text: str) -> str:
    """HMAC-SHA256 (hex) of ``text`` under the handle secret: how records that outlive a
    person (erasures, the audit log) name their profile."""
    return hmac.new(secret, text.encode(), hashlib.sha256).hexdigest()


class Keyring:
    """Names, makes, finds and destroys the per-identity keys.

    Thread-safe: the collector (event loop), workers (threads) and erasure (API threads)
    share one. Erasure drops the keys it destroys from the caches at once; ``refresh``
    (every ``refresh_interval`` seconds on the collect path, every batch in workers)
    drops all cached keys once another process has recorded an erasure. Either way
    :attr:`generation` grows, so that callers holding keys of their own drop them too.

    >>> from remarket.storage.state import connect_state, upgrade_state
    >>> engine = connect_state("sqlite://"); upgrade_state(engine)
    >>> ring = Keyring(engine)
    >>> h = ring.handle("user_id", "u-42")
    >>> key_id, aead = ring.key_for(h)
    >>> ring.flush(); ring.lookup({(h, key_id)})[(h, key_id)] is not None
    True
    >>> ring.destroy([h]), ring.lookup({(h, key_id)})
    (1, {})
    """

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Clock | None = None,
        refresh_interval: float = 2.0,
        sync_commits: bool = False,
    ) -> None:
        self._engine = engine
        self._keys = key_store(engine)
        # Keys must outlive a power loss whenever the events sealed under them do (the
        # embedded log with fsync "full"); the key file's SQLite commits without an
        # fsync otherwise (synchronous=NORMAL: a process crash loses nothing, a power
        # loss may lose the last commits).
        self._sync = sync_commits and self._keys.dialect.name == "sqlite"
        self._clock = clock or SystemClock()
        self._postgresql = engine.dialect.name == "postgresql"
        self._insert = postgresql.insert if self._postgresql else sqlite.insert
        self._secret = handle_secret(engine, self._clock)
        self._mac = hmac.new(self._secret, digestmod=hashlib.sha256)
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._handles: dict[str, str] = {}
        self._sealing: dict[str, tuple[str, AESGCM]] = {}
        self._opening: dict[tuple[str, str], AESGCM] = {}
        self._pending: list[tuple[str, str, bytes]] = []
        self._made = 0
        self.generation = 0
        """Grows whenever cached sealing keys are dropped (an erasure here or elsewhere)."""
        # The nonce prefix (random per keyring) in the top 32 of 96 bits; a counter below.
        self._next_nonce = int.from_bytes(secrets.token_bytes(4), "big") << 64 | 1
        self._key_prefix = secrets.token_hex(4)
        self._key_ids = itertools.count(1)
        self._flushing: asyncio.Future[None] | None = None
        self._durable = 0
        self._epoch = self.epoch()
        self._refresh_interval = refresh_interval
        self._refreshed_at = time.monotonic()

    @property
    def store(self) -> Engine:
        """The engine the keys are in: the state store's, or that of its key file."""
        return self._keys

    def handle(self, kind: str, value: str) -> str:
        """The handle of an identifier: ``h_`` and 32 hex digits of its HMAC-SHA256."""
        text = f"{kind}:{value}"
        found = self._handles.get(text)
        if found is None:
            # A copy of the keyed state: cheaper than keying anew for every identifier.
            mac = self._mac.copy()
            mac.update(text.encode())
            found = HANDLE_PREFIX + mac.digest()[:16].hex()
            if len(self._handles) >= _CACHE_LIMIT:
                self._handles.clear()
            self._handles[text] = found
        return found

    def digest(self, text: str) -> str:
        """A keyed SHA-256 (hex) of ``text``: how erasure records name a profile."""
        return keyed_digest(self._secret, text)

    # -- sealing (collect) ----------------------------------------------------------

    def nonces(self, count: int) -> int:
        """Reserve ``count`` 96-bit AES-GCM nonces never used before with any key this
        keyring made; the first as an integer (the others follow it: nonce ``i`` is
        ``(first + i).to_bytes(12, "big")``). A random prefix per keyring and a counter
        (NIST SP 800-38D, 8.2.1): a key seals only in the process that made it, so no
        other process shares its nonces; a counter is also much cheaper than asking the
        kernel for 12 random bytes per event."""
        with self._lock:
            first = self._next_nonce
            self._next_nonce = first + count
        if (first + count - 1) >> 64 != first >> 64:
            raise OverflowError("this keyring's nonce counter is exhausted")
        return first

    def key_for(self, handle: str) -> tuple[str, AESGCM]:
        """The key to seal new events of ``handle`` under: ``(key_id, cipher)``.

        A key made here is not durable until :meth:`durable` (or :meth:`flush`) returns.
        """
        found = self._sealing.get(handle)
        if found is not None:
            return found
        with self._lock:
            found = self._sealing.get(handle)
            if found is not None:
                return found
            key_id = f"{self._key_prefix}{next(self._key_ids) & 0xFFFFFFFF:08x}"
            secret = random_bytes(32)
            found = (key_id, AESGCM(secret))
            if len(self._sealing) >= _CACHE_LIMIT:
                self._sealing.clear()
            self._sealing[handle] = found
            self._opening[(handle, key_id)] = found[1]
            self._pending.append((handle, key_id, secret))
            self._made += 1
        return found

    async def durable(self) -> None:
        """Return once every key made so far is committed (a group commit: requests that
        arrive while one is being written wait for it, then share the next)."""
        target = self._made
        if self._durable >= target and not self._refresh_due():
            return
        loop = asyncio.get_running_loop()
        while True:
            running = self._flushing
            if running is None or running.done() or running.get_loop() is not loop:
                running = self._flushing = asyncio.ensure_future(
                    asyncio.to_thread(self._durable_and_fresh)
                )
            await asyncio.shield(running)
            if self._durable >= target:
                return

    def _durable_and_fresh(self) -> None:
        self.flush()
        if self._refresh_due():
            self.refresh()

    def flush(self) -> None:
        """Write every key made so far (blocking)."""
        target = self._made
        with self._flush_lock:
            if self._durable >= target:
                return  # another caller's commit covered ours
            with self._lock:
                batch, self._pending = self._pending, []
                made = self._made
            try:
                if batch:
                    self._write(batch)
            except BaseException:
                with self._lock:
                    self._pending = batch + self._pending
                raise
            self._durable = made

    def _write(self, batch: list[tuple[str, str, bytes]]) -> None:
        now = self._clock.now()
        rows = [{"handle": h, "key_id": k, "secret": s, "created_at": now} for h, k, s in batch]
        # Collect waits for these rows: a turn, not a chance at the lock.
        with key_write(self._keys, fsync=self._sync) as conn:
            # Through the driver: SQLAlchemy's per-row work would cost more than the rest
            # of making a key.
            bulk_insert(conn, pii_keys, rows)

    # -- opening (workers) ------------------------------------------------------------

    def lookup(self, wanted: Collection[tuple[str, str]]) -> dict[tuple[str, str], AESGCM]:
        """The ciphers of these ``(handle, key_id)`` pairs that still exist."""
        found: dict[tuple[str, str], AESGCM] = {}
        missing: list[tuple[str, str]] = []
        for pair in wanted:
            cipher = self._opening.get(pair)
            if cipher is None:
                missing.append(pair)
            else:
                found[pair] = cipher
        if missing:
            if len(self._opening) + len(missing) > _CACHE_LIMIT:
                self._opening.clear()
            with self._keys.connect() as conn:
                for start in range(0, len(missing), _LOOKUP_CHUNK):
                    chunk = missing[start : start + _LOOKUP_CHUNK]
                    # By key id (the primary key's first column; a pair list is a scan
                    # in SQLite), then the pairs asked for.
                    asked = set(chunk)
                    rows = conn.execute(
                        select(pii_keys.c.handle, pii_keys.c.key_id, pii_keys.c.secret).where(
                            pii_keys.c.key_id.in_({k for _, k in chunk})
                        )
                    )
                    for handle, key_id, secret in rows:
                        if (handle, key_id) not in asked:
                            continue
                        cipher = AESGCM(bytes(secret))
                        self._opening[(handle, key_id)] = cipher
                        found[(handle, key_id)] = cipher
        return found

    # -- erasure ----------------------------------------------------------------------

    def epoch(self) -> tuple[int, str]:
        """The newest erasure record's number and the latest completion time: it changes
        whenever anyone, in any process, begins or completes an erasure."""
        with self._engine.connect() as conn:
            row = conn.execute(
                select(func.max(erasures.c.id), func.max(erasures.c.completed_at))
            ).one()
        return int(row[0] or 0), str(row[1])

    def _refresh_due(self) -> bool:
        return time.monotonic() - self._refreshed_at >= self._refresh_interval

    def refresh(self) -> bool:
        """Forget every cached key if an erasure was recorded since this keyring last
        looked; whether it did."""
        self._refreshed_at = time.monotonic()
        epoch = self.epoch()
        if epoch == self._epoch:
            return False
        self._epoch = epoch
        self.forget_all()
        return True

    def forget_all(self) -> None:
        """Drop every cached key (they are read again from the state store)."""
        with self._lock:
            self._sealing.clear()
            self._opening.clear()
            self.generation += 1

    def destroy(self, handles: Iterable[str]) -> int:
        """Delete every key of these handles (commits); how many were deleted."""
        wanted = sorted(set(handles))
        self.flush()  # a key still in memory would be written after its erasure
        deleted = 0
        with key_write(self._keys, fsync=False) as conn:
            self._index_lock(conn)
            for start in range(0, len(wanted), _LOOKUP_CHUNK):
                chunk = wanted[start : start + _LOOKUP_CHUNK]
                indexed = select(pii_key_handles.c.key_id, pii_key_handles.c.handle).where(
                    pii_key_handles.c.handle.in_(chunk)
                )
                deleted += conn.execute(
                    pii_keys.delete().where(
                        tuple_(pii_keys.c.key_id, pii_keys.c.handle).in_(indexed)
                    )
                ).rowcount
                deleted += conn.execute(
                    pii_keys.delete().where(_unindexed(), pii_keys.c.handle.in_(chunk))
                ).rowcount
                conn.execute(pii_key_handles.delete().where(pii_key_handles.c.handle.in_(chunk)))
        with self._lock:
            gone = set(wanted)
            for handle in gone:
                self._sealing.pop(handle, None)
            for pair in [p for p in self._opening if p[0] in gone]:
                del self._opening[pair]
            self.generation += 1
        return deleted

    def index_pending(self) -> int:
        """Enter keys written since the last call into the handle index, in bulk (commits);
        how many. Up to 20,000 per call: the rest wait for the next."""
        done = 0
        while done < _INDEX_BATCH:
            entered = self._index_chunk()
            done += entered
            if entered < _INDEX_CHUNK:
                break
        return done

    def _index_chunk(self) -> int:
        """Index up to 500 keys in one transaction, at a turn of the key store's write lock:
        collect's key commits wait for one chunk at most (a few ms; 20,000 rows at once
        held them up to 50 ms)."""
        # A read first (the partial index of unindexed rows): most worker batches find
        # nothing, and must not take the write lock that collect's key commits wait on.
        if not any_row(self._keys, select(pii_keys.c.key_id).where(_unindexed())):
            return 0
        with key_write(self._keys, fsync=False) as conn:
            self._index_lock(conn)
            oldest = (
                select(pii_keys.c.key_id)
                .where(_unindexed())
                .order_by(pii_keys.c.key_id)
                .limit(_INDEX_CHUNK)
            )
            # Marked first: the rows are then this transaction's, and only rows that
            # still exist are entered.
            rows = conn.execute(
                update(pii_keys)
                .where(_unindexed(), pii_keys.c.key_id.in_(oldest.scalar_subquery()))
                .values(indexed=True)
                .returning(pii_keys.c.handle, pii_keys.c.key_id)
            ).all()
            if rows:
                conn.execute(
                    self._insert(pii_key_handles).on_conflict_do_nothing(),
                    [{"handle": h, "key_id": k} for h, k in rows],
                )
        return len(rows)

    def _index_lock(self, conn: Connection) -> None:
        """PostgreSQL: the lock that indexing and key destruction share (on SQLite, the
        write lock already keeps them apart)."""
        if self._postgresql:
            conn.execute(_PG_LOCK)

    def count(self, handles: Iterable[str]) -> int:
        """How many keys, and entries of the handle index, these handles still have
        (residue after an erasure: 0)."""
        wanted = sorted(set(handles))
        total = 0
        with self._keys.connect() as conn:
            for start in range(0, len(wanted), _LOOKUP_CHUNK):
                chunk = wanted[start : start + _LOOKUP_CHUNK]
                indexed = select(pii_key_handles.c.key_id, pii_key_handles.c.handle).where(
                    pii_key_handles.c.handle.in_(chunk)
                )
                for query in (
                    select(func.count()).select_from(indexed.subquery()),
                    select(func.count())
                    .select_from(pii_keys)
                    .where(tuple_(pii_keys.c.key_id, pii_keys.c.handle).in_(indexed)),
                    select(func.count())
                    .select_from(pii_keys)
                    .where(_unindexed(), pii_keys.c.handle.in_(chunk)),
                ):
                    total += int(conn.scalar(query) or 0)
        return total


def _unindexed() -> ColumnElement[bool]:
    """Rows not in the handle index yet (the partial index ``ix_pii_keys_key_id``)."""
    return not_(pii_keys.c.indexed)
