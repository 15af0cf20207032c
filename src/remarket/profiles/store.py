"""Profiles in the state store: apply batches of events to identities, traits and counts."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import msgspec
from sqlalchemy import Connection, Engine, and_, func, or_, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite

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

_TRAITS: Final = msgspec.json.Decoder(dict[str, Any])
_LOOKUP_CHUNK: Final = 500
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

    def add(self, ts: datetime) -> None:
        self.count += 1
        if self.first is None or ts < self.first:
            self.first = ts
        if self.last is None or ts > self.last:
            self.last = ts

    def absorb(self, other: _Tally) -> None:
        self.count += other.count
        if other.first is not None and (self.first is None or other.first < self.first):
            self.first = other.first
        if other.last is not None and (self.last is None or other.last > self.last):
            self.last = other.last


@dataclass(slots=True)
class _Trait:
    value: Any
    ts: datetime
    message_id: str

    def newer_than(self, other: _Trait) -> bool:
        return (self.ts, self.message_id) > (other.ts, other.message_id)


@dataclass(slots=True)
class _Batch:
    """What one batch changes, gathered before it is written."""

    tallies: dict[str, _Tally] = field(default_factory=lambda: defaultdict(_Tally))
    traits: dict[tuple[str, str], _Trait] = field(default_factory=dict)
    new_identities: dict[Identifier, str] = field(default_factory=dict)
    merges: dict[str, str] = field(default_factory=dict)


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


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, node: str) -> str:
        parent = self.parent.setdefault(node, node)
        if parent == node:
            return node
        root = self.find(parent)
        self.parent[node] = root
        return root

    def union(self, nodes: Sequence[str]) -> None:
        roots = sorted({self.find(n) for n in nodes})
        for other in roots[1:]:
            self.parent[other] = roots[0]


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
        dialect = engine.dialect.name
        self._insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        self._least = func.least if dialect == "postgresql" else func.min
        self._greatest = func.greatest if dialect == "postgresql" else func.max

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
        mirror: Callable[[list[tuple[str, str, str]]], None] | None = None,
    ) -> None:
        """Apply ``(offset, message)`` rows and advance ``consumer`` to ``through``.

        Only if ``consumer`` is still at ``expected``; else nothing changes and
        :class:`~remarket.errors.OffsetConflict` is raised. ``mirror`` receives every
        identity row written (new or repointed) before the transaction commits, so a
        copy elsewhere (the warehouse) is never behind.
        """
        try:
            with self._engine.begin() as conn:
                # First: it takes the write lock, so a concurrent worker waits, then fails.
                claim_offset(conn, consumer, through, expected)
                batch = self._plan(conn, rows)
                changed = self._write(conn, batch)
                if mirror is not None and changed:
                    mirror(changed)
        except BaseException:
            # The cache may hold mappings of the rolled-back transaction, or (after a
            # conflict) miss merges that another worker made.
            self._cache.clear()
            self._merged.clear()
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
        missing = [i for i in wanted if i not in self._cache]
        if len(self._cache) + len(missing) > _CACHE_LIMIT:
            self._cache.clear()
            self._merged.clear()
            missing = list(wanted)
        for start in range(0, len(missing), _LOOKUP_CHUNK):
            chunk = missing[start : start + _LOOKUP_CHUNK]
            found = conn.execute(
                select(identities.c.kind, identities.c.value, identities.c.profile_id).where(
                    tuple_(identities.c.kind, identities.c.value).in_(chunk)
                )
            )
            for kind, value, pid in found:
                self._cache[(kind, value)] = pid

    def _plan(self, conn: Connection, rows: Sequence[tuple[int, Message]]) -> _Batch:
        # Most events carry ids their batch has seen already: tally them per distinct
        # (anonymousId, userId) pair and resolve identities once per pair, not per event.
        groups: dict[tuple[str | int | None, str | int | None], _Tally] = {}
        special: list[Identify | Alias] = []
        for _, message in rows:
            ts = message.timestamp
            if ts is None:
                raise ValueError(f"message {message.message_id} has no timestamp; collect sets one")
            key = (message.anonymous_id, message.user_id)
            tally = groups.get(key)
            # Inlined _Tally.add: this loop runs for every event of every batch.
            if tally is None:
                groups[key] = _Tally(1, ts, ts)
            else:
                tally.count += 1
                if ts < tally.first:  # type: ignore[operator]
                    tally.first = ts
                elif ts > tally.last:  # type: ignore[operator]
                    tally.last = ts
            if isinstance(message, Identify | Alias):
                special.append(message)
        links = [_pair_identifiers(key) for key in groups]
        links += [identifiers_of(m) for m in special]
        self._load(conn, {i for ids in links for i in ids})
        # Nodes are existing profile ids, or "#kind\x1fvalue" for identifiers seen first here.
        uf = _UnionFind()
        node_pid: dict[str, str] = {}
        first_nodes: list[str] = []
        for ids in links:
            nodes = []
            for ident in ids:
                pid = self._cache.get(ident)
                if pid is not None:
                    node = self._resolve(pid)
                    node_pid[node] = node
                else:
                    node = f"#{ident[0]}\x1f{ident[1]}"
                    node_pid.setdefault(node, profile_id_of(ident))
                nodes.append(node)
            uf.union(nodes)
            first_nodes.append(nodes[0])
        target: dict[str, str] = {}
        for node, pid in node_pid.items():
            root = uf.find(node)
            if root not in target or pid < target[root]:
                target[root] = pid
        batch = _Batch()
        for node in node_pid:
            if node.startswith("#"):
                kind, value = node[1:].split("\x1f", 1)
                batch.new_identities[(kind, value)] = target[uf.find(node)]
            elif target[uf.find(node)] != node:
                batch.merges[node] = target[uf.find(node)]
        for tally, node in zip(groups.values(), first_nodes, strict=False):
            batch.tallies[target[uf.find(node)]].absorb(tally)
        for message, node in zip(special, first_nodes[len(groups) :], strict=True):
            if isinstance(message, Identify):
                assert message.timestamp is not None  # checked above
                self._collect_traits(batch, target[uf.find(node)], message, message.timestamp)
        return batch

    @staticmethod
    def _collect_traits(batch: _Batch, pid: str, message: Identify, ts: datetime) -> None:
        raw = bytes(message.traits)
        if raw.strip() == b"{}":
            return
        message_id = message.message_id or ""
        for key, value in _TRAITS.decode(raw).items():
            candidate = _Trait(value, ts, message_id)
            current = batch.traits.get((pid, key))
            if current is None or candidate.newer_than(current):
                batch.traits[(pid, key)] = candidate

    def _write(self, conn: Connection, batch: _Batch) -> list[tuple[str, str, str]]:
        changed: list[tuple[str, str, str]] = []
        for old, new in sorted(batch.merges.items()):
            changed.extend(self._merge(conn, old, new))
        if batch.new_identities:
            rows = [
                {"kind": k, "value": v, "profile_id": pid}
                for (k, v), pid in batch.new_identities.items()
            ]
            conn.execute(identities.insert(), rows)
            changed.extend((r["kind"], r["value"], r["profile_id"]) for r in rows)
        self._upsert_tallies(conn, batch.tallies)
        self._upsert_traits(conn, batch.traits)
        for (kind, value), pid in batch.new_identities.items():
            self._cache[(kind, value)] = pid
        return changed

    def _merge(self, conn: Connection, old: str, new: str) -> list[tuple[str, str, str]]:
        moved = conn.execute(
            select(identities.c.kind, identities.c.value).where(identities.c.profile_id == old)
        ).all()
        conn.execute(
            update(identities).where(identities.c.profile_id == old).values(profile_id=new)
        )
        source = conn.execute(select(profiles).where(profiles.c.profile_id == old)).one_or_none()
        if source is not None:
            tally = _Tally(source.event_count, _utc(source.first_seen), _utc(source.last_seen))
            self._upsert_tallies(conn, {new: tally})
            conn.execute(
                update(profiles)
                .where(profiles.c.profile_id == old)
                .values(merged_into=new, event_count=0, first_seen=None, last_seen=None)
            )
        conn.execute(update(profiles).where(profiles.c.merged_into == old).values(merged_into=new))
        traits = conn.execute(
            select(profile_traits).where(profile_traits.c.profile_id == old)
        ).all()
        self._upsert_traits(
            conn,
            {(new, t.key): _Trait(t.value, _utc(t.ts), t.message_id) for t in traits},  # type: ignore[arg-type]
        )
        conn.execute(profile_traits.delete().where(profile_traits.c.profile_id == old))
        self._merged[old] = new
        return [(kind, value, new) for kind, value in moved]

    def _upsert_tallies(self, conn: Connection, tallies: dict[str, _Tally]) -> None:
        if not tallies:
            return
        stmt = self._insert(profiles)
        stmt = stmt.on_conflict_do_update(
            index_elements=[profiles.c.profile_id],
            set_={
                "event_count": profiles.c.event_count + stmt.excluded.event_count,
                "first_seen": func.coalesce(
                    self._least(profiles.c.first_seen, stmt.excluded.first_seen),
                    stmt.excluded.first_seen,
                ),
                "last_seen": func.coalesce(
                    self._greatest(profiles.c.last_seen, stmt.excluded.last_seen),
                    stmt.excluded.last_seen,
                ),
            },
        )
        conn.execute(
            stmt,
            [
                {
                    "profile_id": pid,
                    "merged_into": None,
                    "event_count": t.count,
                    "first_seen": t.first,
                    "last_seen": t.last,
                }
                for pid, t in tallies.items()
            ],
        )

    def _upsert_traits(self, conn: Connection, traits: dict[tuple[str, str], _Trait]) -> None:
        if not traits:
            return
        stmt = self._insert(profile_traits)
        excluded = stmt.excluded
        stmt = stmt.on_conflict_do_update(
            index_elements=[profile_traits.c.profile_id, profile_traits.c.key],
            set_={"value": excluded.value, "ts": excluded.ts, "message_id": excluded.message_id},
            where=or_(
                excluded.ts > profile_traits.c.ts,
                and_(
                    excluded.ts == profile_traits.c.ts,
                    excluded.message_id > profile_traits.c.message_id,
                ),
            ),
        )
        conn.execute(
            stmt,
            [
                {
                    "profile_id": pid,
                    "key": key,
                    "value": t.value,
                    "ts": t.ts,
                    "message_id": t.message_id,
                }
                for (pid, key), t in traits.items()
            ],
        )

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
