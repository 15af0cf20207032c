"""The audit chain: tampering is found and named, concurrent writers never fork it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, delete, select, update
from typer.testing import CliRunner

from remarket.api import ApiKeyStore
from remarket.cli import app
from remarket.clock import ManualClock
from remarket.privacy import GENESIS, AuditLog, entry_hash
from remarket.storage.state import audit_head, audit_log, connect_state, upgrade_state

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def filled(engine: Engine, n: int = 5) -> AuditLog:
    log = AuditLog(engine, clock=ManualClock(NOW))
    for i in range(1, n + 1):
        log.record("cli", "segment.create", f"seg-{i}", {"version": i})
    return log


def alter(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(update(audit_log).where(audit_log.c.seq == 3).values(target="seg-x"))


def remove(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(delete(audit_log).where(audit_log.c.seq == 3))


def remove_last(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(delete(audit_log).where(audit_log.c.seq == 5))


def reorder(engine: Engine) -> None:
    # Swap the contents of entries 3 and 4, each keeping its number.
    with engine.begin() as conn:
        rows = {r.seq: r._asdict() for r in conn.execute(select(audit_log))}
        conn.execute(delete(audit_log).where(audit_log.c.seq.in_([3, 4])))
        conn.execute(audit_log.insert(), [rows[4] | {"seq": 3}, rows[3] | {"seq": 4}])


def insert_forged(engine: Engine) -> None:
    # A well-formed entry 6 linked to entry 5, its hash computed right; the head not moved.
    with engine.begin() as conn:
        last = conn.execute(select(audit_log).where(audit_log.c.seq == 5)).one()
        digest = entry_hash(6, NOW, "cli", "key.create", "k", "{}", last.hash)
        conn.execute(
            audit_log.insert().values(
                seq=6,
                at=NOW,
                actor="cli",
                action="key.create",
                target="k",
                details="{}",
                prev_hash=last.hash,
                hash=digest,
            )
        )


def insert_in_the_middle(engine: Engine) -> None:
    # Renumber entries 3..5 up by one and put a forged entry 3 in the gap, linked to 2.
    with engine.begin() as conn:
        for seq in (5, 4, 3):
            conn.execute(update(audit_log).where(audit_log.c.seq == seq).values(seq=seq + 1))
        second = conn.execute(select(audit_log).where(audit_log.c.seq == 2)).one()
        digest = entry_hash(3, NOW, "cli", "key.create", "k", "{}", second.hash)
        conn.execute(
            audit_log.insert().values(
                seq=3,
                at=NOW,
                actor="cli",
                action="key.create",
                target="k",
                details="{}",
                prev_hash=second.hash,
                hash=digest,
            )
        )


@pytest.mark.parametrize(
    ("tamper", "seq"),
    [
        (alter, 3),
        (remove, 3),
        (remove_last, 5),
        (reorder, 3),
        (insert_forged, 6),
        (insert_in_the_middle, 4),
    ],
    ids=["alter", "remove", "remove-last", "reorder", "insert-at-end", "insert-in-middle"],
)
def test_tampering_is_found_at_the_entry(
    engine: Engine, tamper: Callable[[Engine], None], seq: int
) -> None:
    log = filled(engine)
    assert log.verify() is None
    tamper(engine)
    problem = log.verify()
    assert problem is not None
    assert problem.seq == seq, problem


def test_entries_link_to_their_predecessor(engine: Engine) -> None:
    log = filled(engine, 3)
    entries = log.entries()
    assert [e.seq for e in entries] == [1, 2, 3]
    assert entries[0].prev_hash == GENESIS
    assert [e.prev_hash for e in entries[1:]] == [e.hash for e in entries[:-1]]
    assert log.head() == (3, entries[-1].hash)
    assert entries[0].details == '{"version":1}'


def test_a_removed_head_row_is_found(engine: Engine) -> None:
    log = filled(engine, 2)
    with engine.begin() as conn:
        conn.execute(delete(audit_head))
    problem = log.verify()
    assert problem is not None and problem.seq == 1


def test_details_refuse_what_does_not_hash_stably(engine: Engine) -> None:
    log = AuditLog(engine)
    with pytest.raises(TypeError, match=r"details\.score is float"):
        log.record("cli", "x", "t", {"score": 0.5})
    with pytest.raises(ValueError, match="actor"):
        log.record("", "x", "t")
    assert log.entries() == []


def test_concurrent_writers_keep_one_chain(engine: Engine) -> None:
    log = AuditLog(engine)
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            for i in range(15):
                log.record(f"key-{worker}", "source.create", f"s-{worker}-{i}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert log.verify() is None
    assert log.head()[0] == 90
    assert len({e.target for e in log.entries(limit=1000)}) == 90


def test_key_creation_is_audited_in_its_transaction(engine: Engine) -> None:
    key, _ = ApiKeyStore(engine).create("ops", "analyst", actor="k0")
    (entry,) = AuditLog(engine).entries()
    assert (entry.actor, entry.action, entry.target) == ("k0", "key.create", key.id)
    assert entry.details == '{"role":"analyst"}'


def test_cli_verify_exits_1_naming_the_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    env = {"REMARKET_DATA_DIR": str(tmp_path / "var"), "COLUMNS": "200"}
    runner = CliRunner()
    assert runner.invoke(app, ["keys", "create", "--role", "viewer"], env=env).exit_code == 0
    assert runner.invoke(app, ["sources", "create", "web"], env=env).exit_code == 0
    ok = runner.invoke(app, ["audit", "verify"], env=env)
    assert ok.exit_code == 0, ok.output
    assert "2 entries" in ok.output
    listed = runner.invoke(app, ["audit", "list"], env=env)
    assert "key.create" in listed.output and "source.create" in listed.output
    engine = connect_state(f"sqlite:///{tmp_path / 'var' / 'state.db'}")
    upgrade_state(engine)
    with engine.begin() as conn:
        conn.execute(update(audit_log).where(audit_log.c.seq == 1).values(actor="someone"))
    engine.dispose()
    broken = runner.invoke(app, ["audit", "verify"], env=env)
    assert broken.exit_code == 1
    assert "entry 1" in broken.output
