"""Profiles in the state store: apply batches of events to identities, traits and counts."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import attrgetter, itemgetter
from typing import Any, Final

import msgspec
from sqlalchemy import (
    Connection,
    Engine,
    String,
    Text,
    bindparam,
    cast,
    func,
    select,
    update,
)

from remarket.profiles.bulk import IdentityRow, bulk_for
from remarket.profiles.identity import (
    ANONYMOUS_ID,
    USER_ID,
    Identifier,
    identifiers_of,
    profile_id_of,
)
from remarket.schema.events import Alias, Identify, Message
from remarket.storage.state import identities, profile_traits, profiles
from remarket.storage.state.offsets import claim_offset, committed_offset

__all__ = ["ProfileStore", "ProfileView"]

# Trait values stay JSON text from the event to the table: nothing needs them decoded.
_TRAITS: Final = msgspec.json.Decoder(dict[str, msgspec.Raw])
_LINKING: Final = frozenset((Identify, Alias))
_MESSAGE: Final = itemgetter(1)
_IDS_AND_TIME: Final = attrgetter("anonymous_id", "user_id", "timestamp")
_IN_CHUNK: Final = 500
_CACHE_LIMIT: Final = 2_000_000


@dataclass(slots=True)
class ProfileView:
    """A profile as the API shows it."""

    profile_id: str
    traits: dict[str, Any]
    identities: list[Identifier]
    event_count: int
    first_seen: datetime | None
    last_seen: datetime | None


@dataclass(slots=True)
class _Tally:
    count: int = 0
    first: datetime | None = None
    last: datetime | None = None

    def absorb(self, count: int, first: datetime | None, last: datetime | None) -> None:
        self.count += count
        if first is not None and (self.first is None or first < self.first):
            self.first = first
        if last is not None and (self.last is None or last > self.last):
            self.last = last


_Trait = tuple[datetime, str, str]
"""``(ts, message_id, value as JSON text)``: of two, the greater is the newer."""


@dataclass(slots=True)
class _Batch:
    """What one batch changes, gathered before it is written."""

    tallies: dict[str, _Tally] = field(default_factory=lambda: defaultdict(_Tally))
    traits: dict[tuple[str, str], _Trait] = field(default_factory=dict)
    new_identities: dict[Identifier, str] = field(default_factory=dict)
    merges: dict[str, str] = field(default_factory=dict)

    def add_trait(self, pid: str, key: str, candidate: _Trait) -> None:
        current = self.traits.get((pid, key))
        if current is None or candidate > current:
            self.traits[(pid, key)] = candidate


def _pair_identifiers(pair: tuple[str | int | None, str | int | None]) -> list[Identifier]:
    anonymous_id, user_id = pair
    found: list[Identifier] = []
    if anonymous_id is not None:
        found.append((ANONYMOUS_ID, str(anonymous_id)))
    if user_id is not None:
        found.append((USER_ID, str(user_id)))
    return found


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; every stored time is UTC.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _chunks(items: Sequence[str]) -> list[Sequence[str]]:
    return [items[start : start + _IN_CHUNK] for start in range(0, len(items), _IN_CHUNK)]


class _UnionFind:
    """Components of profile ids; each component's root is its smallest id."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, node: str) -> str:
        parent = self.parent.get(node)
        if parent is None or parent == node:
            return node
        root = self.find(parent)
        self.parent[node] = root
        return root

    def union(self, nodes: Sequence[str]) -> None:
        if len(nodes) < 2:  # most events carry one id: nothing to join
            return
        roots = {self.find(n) for n in nodes}
        if len(roots) > 1:
            keep = min(roots)
            for other in roots:
                self.parent[other] = keep


class ProfileStore:
    """Identity graph, traits and event counts of profiles, in the state store.

    ``apply`` is idempotent per consumer offset (the offset is written in the same
    transaction) and order-independent: any order of the same events gives the same
    profiles, because profile ids and traits depend on sets, not sequence. Only one
    process may apply batches at a time.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._cache: dict[Identifier, str] = {}
        self._merged: dict[str, str] = {}
        # Hashes of every identifier in the identities table (a superset after an erasure
        # or a rollback), so that one hashing to none of them is new without a lookup:
        # most identifiers of a batch are new visitors'. None: not loaded (or too many).
        self._stored: set[int] | None = None
        self._stored_loaded = False
        self._bulk = bulk_for(engine.dialect)

    # -- writing ---------------------------------------------------------------

    def committed(self, consumer: str) -> int:
        with self._engine.connect() as conn:
            return committed_offset(conn, consumer)

    def apply(
        self,
        consumer: str,
        rows: Sequence[tuple[int, Message]],
        through: int,
        *,
        expected: int,
        mirror: Callable[[list[IdentityRow]], None] | None = None,
    ) -> None:
        """Apply ``(offset, message)`` rows and advance ``consumer`` to ``through``.

        Only if ``consumer`` is still at ``expected``; else nothing changes and
        :class:`~remarket.errors.OffsetConflict` is raised. ``mirror`` receives every
        identity row written before the transaction commits, so a copy elsewhere (the
        warehouse) is never behind: the repointed rows, then the new ones, each set in
        one call (a copy can append new rows without looking for existing ones).
        """
        try:
            with self._engine.begin() as conn:
                # First: it takes the write lock, so a concurrent worker waits, then fails.
                claim_offset(conn, consumer, through, expected)
                batch = self._plan(conn, rows)
                moved, added = self._write(conn, batch)
                if mirror is not None:
                    for changed in (moved, added):
                        if changed:
                            mirror(changed)
        except BaseException:
            # The cache may hold mappings of the rolled-back transaction, or (after a
            # conflict) miss merges and identities that another worker made.
            self._cache.clear()
            self._merged.clear()
            self._stored, self._stored_loaded = None, False
            raise

    def forget(self) -> None:
        """Drop the cached identity mappings (after an erasure deleted some rows)."""
        self._cache.clear()
        self._merged.clear()

    def _resolve(self, profile_id: str) -> str:
        while profile_id in self._merged:
            profile_id = self._merged[profile_id]
        return profile_id

    def _load(self, conn: Connection, wanted: Collection[Identifier]) -> None:
        if not self._stored_loaded:
            # In the batch's transaction, after the offset claim: no other worker writes.
            self._stored, self._stored_loaded = self._stored_hashes(conn), True
        stored = self._stored
        missing = [
            i for i in wanted if i not in self._cache and (stored is None or hash(i) in stored)
        ]
        if len(self._cache) + len(missing) > _CACHE_LIMIT:
            self._cache.clear()
            self._merged.clear()
            missing = [i for i in wanted if stored is None or hash(i) in stored]
        for kind, value, pid in self._bulk.lookup(conn, missing):
            self._cache[(kind, value)] = pid

    @staticmethod
    def _stored_hashes(conn: Connection) -> set[int] | None:
        count = conn.scalar(select(func.count()).select_from(identities)) or 0
        if count > _CACHE_LIMIT:
            return None
        return {
            hash((k, v)) for k, v in conn.execute(select(identities.c.kind, identities.c.value))
        }

    def _plan(self, conn: Connection, rows: Sequence[tuple[int, Message]]) -> _Batch:
        # Most events carry ids their batch has seen already: tally them per distinct
        # (anonymousId, userId) pair and resolve identities once per pair, not per event.
        # This loop runs for every event of every batch: attributes are fetched in C
        # (attrgetter) and tallies are plain [count, first, last] lists.
        messages: list[Message] = list(map(_MESSAGE, rows))
        groups: dict[tuple[str | int | None, str | int | None], list[Any]] = {}
        for anonymous_id, user_id, ts in map(_IDS_AND_TIME, messages):
            if ts is None:
                found = next(m for m in messages if m.timestamp is None)
                raise ValueError(f"message {found.message_id} has no timestamp; collect sets one")
            key = (anonymous_id, user_id)
            tally = groups.get(key)
            if tally is None:
                groups[key] = [1, ts, ts]
            else:
                tally[0] += 1
                if ts < tally[1]:
                    tally[1] = ts
                elif ts > tally[2]:
                    tally[2] = ts
        linking = [m for m in messages if type(m) in _LINKING]
        links = [_pair_identifiers(key) for key in groups]
        links += [identifiers_of(m) for m in linking]
        self._load(conn, {i for ids in links for i in ids})
        # Nodes are profile ids: the stored (live) one of a known identifier, the own id
        # of a new one; a component's smallest id is the profile it becomes.
        cache, uf = self._cache, _UnionFind()
        stored: set[str] = set()
        new: dict[Identifier, str] = {}
        first_nodes: list[str] = []
        for ids in links:
            nodes = []
            for ident in ids:
                pid = cache.get(ident)
                if pid is not None:
                    pid = self._resolve(pid)
                    stored.add(pid)
                elif (pid := new.get(ident)) is None:
                    pid = new[ident] = profile_id_of(ident)
                nodes.append(pid)
            uf.union(nodes)
            first_nodes.append(nodes[0])
        find = uf.find
        batch = _Batch()
        batch.new_identities = {ident: find(pid) for ident, pid in new.items()}
        batch.merges = {pid: root for pid in stored if (root := find(pid)) != pid}
        for (count, first, last), node in zip(groups.values(), first_nodes, strict=False):
            batch.tallies[find(node)].absorb(count, first, last)
        for message, node in zip(linking, first_nodes[len(groups) :], strict=True):
            if isinstance(message, Identify):
                self._collect_traits(batch, find(node), message)
        return batch

    @staticmethod
    def _collect_traits(batch: _Batch, pid: str, message: Identify) -> None:
        raw = bytes(message.traits)
        if raw.strip() == b"{}":
            return
        assert message.timestamp is not None  # _plan checked every message
        ts, message_id = message.timestamp, message.message_id or ""
        for key, value in _TRAITS.decode(raw).items():
            batch.add_trait(pid, key, (ts, message_id, bytes(value).decode()))

    def _write(
        self, conn: Connection, batch: _Batch
    ) -> tuple[list[IdentityRow], list[IdentityRow]]:
        """Write the batch; the identity rows it repointed and those it added."""
        moved = self._merge(conn, batch) if batch.merges else []
        # In key order: neighbouring rows share B-tree pages, and PostgreSQL takes row
        # locks in one order whichever worker writes (no deadlock between two).
        added = sorted((kind, value, pid) for (kind, value), pid in batch.new_identities.items())
        self._bulk.insert_identities(conn, added)
        self._bulk.upsert_profiles(
            conn,
            [(pid, t.first, t.last, t.count) for pid, t in sorted(batch.tallies.items())],  # type: ignore[misc]
        )
        self._bulk.upsert_traits(
            conn,
            [
                (pid, key, value, ts, message_id)
                for (pid, key), (ts, message_id, value) in sorted(batch.traits.items())
            ],
        )
        self._cache.update(batch.new_identities)
        if self._stored is not None:
            self._stored.update(map(hash, batch.new_identities))
            if len(self._stored) > _CACHE_LIMIT:
                self._stored = None  # and stays so: lookups for every identifier again
        return moved, added

    def _merge(self, conn: Connection, batch: _Batch) -> list[IdentityRow]:
        """Fold every merged-away profile into its survivor: identities repointed, its
        counts and traits added to the batch's (written after), its row left pointing
        at the survivor so that old ids still resolve."""
        into = batch.merges
        olds = sorted(into)
        pairs = [{"old": old, "new": into[old]} for old in olds]
        moved: list[IdentityRow] = []
        for chunk in _chunks(olds):
            for kind, value, pid in conn.execute(
                select(identities.c.kind, identities.c.value, identities.c.profile_id).where(
                    identities.c.profile_id.in_(chunk)
                )
            ):
                moved.append((kind, value, into[pid]))
            for row in conn.execute(select(profiles).where(profiles.c.profile_id.in_(chunk))):
                batch.tallies[into[row.profile_id]].absorb(
                    row.event_count, _utc(row.first_seen), _utc(row.last_seen)
                )
            for pid, key, value, ts, message_id in conn.execute(
                select(
                    profile_traits.c.profile_id,
                    profile_traits.c.key,
                    cast(profile_traits.c.value, Text),
                    profile_traits.c.ts,
                    profile_traits.c.message_id,
                ).where(profile_traits.c.profile_id.in_(chunk))
            ):
                batch.add_trait(into[pid], key, (_utc(ts), message_id, value))  # type: ignore[arg-type]
            conn.execute(profile_traits.delete().where(profile_traits.c.profile_id.in_(chunk)))
        old, new = bindparam("old", type_=String), bindparam("new", type_=String)
        conn.execute(
            update(identities).where(identities.c.profile_id == old).values(profile_id=new), pairs
        )
        conn.execute(
            update(profiles)
            .where(profiles.c.profile_id == old)
            .values(merged_into=new, event_count=0, first_seen=None, last_seen=None),
            pairs,
        )
        conn.execute(
            update(profiles).where(profiles.c.merged_into == old).values(merged_into=new), pairs
        )
        self._merged.update(into)
        return moved

    # -- reading ---------------------------------------------------------------

    def resolve(self, profile_id: str) -> str | None:
        """The live id for ``profile_id`` (following a merge), or None if unknown."""
        with self._engine.connect() as conn:
            row = conn.execute(
                select(profiles.c.merged_into).where(profiles.c.profile_id == profile_id)
            ).one_or_none()
        if row is None:
            return None
        return row.merged_into or profile_id

    def find(self, identifier: Identifier) -> str | None:
        with self._engine.connect() as conn:
            return conn.scalar(
                select(identities.c.profile_id).where(
                    identities.c.kind == identifier[0], identities.c.value == identifier[1]
                )
            )

    def get(self, profile_id: str) -> ProfileView | None:
        """A live profile with its traits and identities (None if unknown or merged away)."""
        with self._engine.connect() as conn:
            row = conn.execute(
                select(profiles).where(
                    profiles.c.profile_id == profile_id, profiles.c.merged_into.is_(None)
                )
            ).one_or_none()
            if row is None:
                return None
            traits = conn.execute(
                select(profile_traits.c.key, profile_traits.c.value)
                .where(profile_traits.c.profile_id == profile_id)
                .order_by(profile_traits.c.key)
            ).all()
            ids = conn.execute(
                select(identities.c.kind, identities.c.value)
                .where(identities.c.profile_id == profile_id)
                .order_by(identities.c.kind, identities.c.value)
            ).all()
        return ProfileView(
            profile_id=profile_id,
            traits={k: v for k, v in traits},
            identities=[(k, v) for k, v in ids],
            event_count=int(row.event_count),
            first_seen=_utc(row.first_seen),
            last_seen=_utc(row.last_seen),
        )

    def count(self) -> int:
        with self._engine.connect() as conn:
            return int(
                conn.scalar(
                    select(func.count())
                    .select_from(profiles)
                    .where(profiles.c.merged_into.is_(None))
                )
                or 0
            )
