"""Each audited change commits with its audit entry or not at all: when the append fails,
the change is rolled back too (on SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from remarket.api import ApiKeyStore
from remarket.api.passwords import Passwords
from remarket.api.sessions import SessionStore
from remarket.api.users import UserStore
from remarket.collect import QuarantineStore, Rejection, SourceRegistry
from remarket.privacy import AuditLog
from remarket.segments.catalog import SegmentCatalog
from remarket.storage.state import api_keys, user_sessions

NOW = datetime(2026, 3, 1, tzinfo=UTC)
PASSWORD = "correct horse battery staple"
BUYERS = {
    "name": "buyers",
    "entry": "p",
    "nodes": [{"id": "p", "type": "performed", "event": "Order Completed"}],
}


class AuditDown(Exception):
    pass


@pytest.fixture
def audit_down(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Call to make every later audit append fail, after the change was written."""

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise AuditDown

    return lambda: monkeypatch.setattr(AuditLog, "append", fail)


def _passwords() -> Passwords:
    return Passwords(time_cost=1, memory_kib=64)


def _count(engine: Engine, table: Any) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(table)) or 0)


def test_segment_changes(state_engine: Engine, audit_down: Callable[[], None]) -> None:
    catalog = SegmentCatalog(state_engine)
    catalog.save(BUYERS)
    audit_down()
    with pytest.raises(AuditDown):
        catalog.save(BUYERS | {"description": "changed"})
    with pytest.raises(AuditDown):
        catalog.create(BUYERS | {"name": "others"})
    with pytest.raises(AuditDown):
        catalog.delete("buyers")
    info = catalog.get("buyers")
    assert info is not None and info.version == 1 and info.definition.description == ""
    assert catalog.get("others") is None


def test_source_creation(state_engine: Engine, audit_down: Callable[[], None]) -> None:
    registry = SourceRegistry(state_engine)
    audit_down()
    with pytest.raises(AuditDown):
        registry.create("web")
    assert registry.list() == []


def test_quarantine_replay_mark(state_engine: Engine, audit_down: Callable[[], None]) -> None:
    store = QuarantineStore(state_engine)
    store.add("s1", NOW, [Rejection(0, "invalid_event", None, "", b"{}")])
    entry = store.list()[0]
    audit_down()
    with pytest.raises(AuditDown):
        store.mark_replayed([entry.id], NOW)
    assert [e.id for e in store.list(pending_only=True)] == [entry.id]


def test_api_key_creation(state_engine: Engine, audit_down: Callable[[], None]) -> None:
    audit_down()
    with pytest.raises(AuditDown):
        ApiKeyStore(state_engine).create("ops", "admin")
    assert _count(state_engine, api_keys) == 0


def test_user_changes(state_engine: Engine, audit_down: Callable[[], None]) -> None:
    users = UserStore(state_engine, _passwords())
    ann = users.create("ann@example.com", "admin", PASSWORD)
    bob = users.create("bob@example.com", "admin", PASSWORD)
    audit_down()
    with pytest.raises(AuditDown):
        users.create("cy@example.com", "viewer", PASSWORD)
    with pytest.raises(AuditDown):
        users.update(ann.id, actor="cli", role="viewer")
    with pytest.raises(AuditDown):
        users.update(ann.id, actor="cli", password="a brand new passphrase")
    with pytest.raises(AuditDown):
        users.delete(bob.id, actor="cli")
    assert [(u.email, u.role) for u in users.list()] == [
        ("ann@example.com", "admin"),
        ("bob@example.com", "admin"),
    ]
    found = users.credentials("ann@example.com")
    assert found is not None and _passwords().verify(found[1], PASSWORD)


def test_login_and_logout(state_engine: Engine, audit_down: Callable[[], None]) -> None:
    passwords = _passwords()
    users = UserStore(state_engine, passwords)
    users.create("ann@example.com", "viewer", PASSWORD)
    sessions = SessionStore(state_engine, users, passwords)
    session, token = sessions.log_in("ann@example.com", PASSWORD)
    audit_down()
    with pytest.raises(AuditDown):
        sessions.log_in("ann@example.com", PASSWORD)
    assert _count(state_engine, user_sessions) == 1
    with pytest.raises(AuditDown):
        sessions.log_out(session.id, actor="cli")
    assert sessions.authenticate(token) is not None
