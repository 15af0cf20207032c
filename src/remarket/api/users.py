"""Console users: e-mail, role and argon2id password hash; the last admin stays."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Connection, Engine, select, update

from remarket.api.keys import ROLES
from remarket.api.passwords import Passwords, check_password_rules
from remarket.clock import Clock, SystemClock
from remarket.errors import ConflictError, InvalidInput, NotFound
from remarket.privacy import AuditLog, immediate
from remarket.schema.events import as_utc
from remarket.storage.state import user_sessions, users

__all__ = ["ADMIN", "User", "UserStore", "normalize_email"]

ADMIN: Final = "admin"
_EMAIL: Final = re.compile(r"^[^@\s]+@[^@\s]+$")


def normalize_email(email: str) -> str:
    """The stored form of an address: stripped and lower-cased.

    >>> normalize_email("  Ann@Example.COM ")
    'ann@example.com'
    """
    return email.strip().lower()


def _valid_email(email: str) -> str:
    normal = normalize_email(email)
    if len(normal) > 320 or not _EMAIL.match(normal):
        raise InvalidInput(
            "an e-mail address is name@domain, at most 320 characters", field="email"
        )
    return normal


def _valid_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidInput(f"role must be one of {', '.join(ROLES)}, got {role!r}", field="role")
    return role


@dataclass(frozen=True, slots=True)
class User:
    id: str
    email: str
    role: str
    created_at: datetime
    updated_at: datetime

    @property
    def scopes(self) -> frozenset[str]:
        return ROLES[self.role]


def user_of(row: Any) -> User:
    """A User from a row holding the users table's columns."""
    return User(row.id, row.email, row.role, as_utc(row.created_at), as_utc(row.updated_at))


class UserStore:
    """Creates, changes and deletes console users, each change audited in its transaction.

    >>> from remarket.storage.state import connect_state, upgrade_state
    >>> engine = connect_state("sqlite://"); upgrade_state(engine)
    >>> store = UserStore(engine, Passwords(time_cost=1, memory_kib=64))
    >>> ann = store.create("Ann@example.com", "admin", "a long passphrase")
    >>> ann.email, store.credentials("ann@example.com")[0] == ann
    ('ann@example.com', True)
    >>> store.delete(ann.id, actor="cli")
    Traceback (most recent call last):
    remarket.errors.ConflictError: the last admin cannot be deleted or demoted
    """

    def __init__(self, engine: Engine, passwords: Passwords, *, clock: Clock | None = None):
        self._engine = engine
        self._passwords = passwords
        self._clock = clock or SystemClock()
        self._audit = AuditLog(engine, clock=self._clock)

    # -- reading -----------------------------------------------------------------

    def list(self) -> list[User]:
        with self._engine.connect() as conn:
            return [user_of(r) for r in conn.execute(select(users).order_by(users.c.email))]

    def get(self, user_id: str) -> User | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(users).where(users.c.id == user_id)).one_or_none()
        return user_of(row) if row is not None else None

    def credentials(self, email: str) -> tuple[User, str] | None:
        """The user with this address and their password hash, or None."""
        with self._engine.connect() as conn:
            row = conn.execute(
                select(users).where(users.c.email == normalize_email(email))
            ).one_or_none()
        return (user_of(row), row.password_hash) if row is not None else None

    # -- writing -----------------------------------------------------------------

    def create(self, email: str, role: str, password: str, *, actor: str = "cli") -> User:
        """A new user (ConflictError if the address is taken); audited as ``actor``."""
        email, role = _valid_email(email), _valid_role(role)
        check_password_rules(password)
        digest = self._passwords.hash(password)  # slow: before the write lock
        now = self._clock.now()
        user = User(uuid.uuid4().hex, email, role, now, now)
        with immediate(self._engine) as conn:
            if conn.scalar(select(users.c.id).where(users.c.email == email)) is not None:
                raise ConflictError("a user with this e-mail address exists", field="email")
            conn.execute(
                users.insert().values(
                    id=user.id,
                    email=email,
                    role=role,
                    password_hash=digest,
                    created_at=now,
                    updated_at=now,
                )
            )
            self._audit.append(
                conn, actor=actor, action="user.create", target=user.id, details={"role": role}
            )
        return user

    def update(
        self,
        user_id: str,
        *,
        actor: str,
        role: str | None = None,
        password: str | None = None,
    ) -> User:
        """Change a user's role and/or password. A new password ends their sessions;
        demoting the last admin is refused (ConflictError)."""
        if role is not None:
            _valid_role(role)
        digest = None
        if password is not None:
            check_password_rules(password)
            digest = self._passwords.hash(password)
        now = self._clock.now()
        with immediate(self._engine) as conn:
            current, admins = self._locked(conn, user_id)
            if role is not None and role != current.role:
                if current.role == ADMIN:
                    _keep_an_admin(admins)
                conn.execute(
                    update(users).where(users.c.id == user_id).values(role=role, updated_at=now)
                )
                self._audit.append(
                    conn,
                    actor=actor,
                    action="user.role",
                    target=user_id,
                    details={"from": current.role, "to": role},
                )
            if digest is not None:
                conn.execute(
                    update(users)
                    .where(users.c.id == user_id)
                    .values(password_hash=digest, updated_at=now)
                )
                ended = self._end_sessions(conn, user_id, now)
                self._audit.append(
                    conn,
                    actor=actor,
                    action="user.password",
                    target=user_id,
                    details={"sessions_ended": ended},
                )
            row = conn.execute(select(users).where(users.c.id == user_id)).one()
            return user_of(row)

    @staticmethod
    def store_hash(conn: Connection, user_id: str, digest: str) -> None:
        """Replace a user's hash inside the caller's transaction (an upgraded rehash)."""
        conn.execute(update(users).where(users.c.id == user_id).values(password_hash=digest))

    def delete(self, user_id: str, *, actor: str) -> None:
        """Delete a user and their sessions; the last admin is refused (ConflictError)."""
        with immediate(self._engine) as conn:
            current, admins = self._locked(conn, user_id)
            if current.role == ADMIN:
                _keep_an_admin(admins)
            conn.execute(user_sessions.delete().where(user_sessions.c.user_id == user_id))
            conn.execute(users.delete().where(users.c.id == user_id))
            self._audit.append(
                conn,
                actor=actor,
                action="user.delete",
                target=user_id,
                details={"role": current.role},
            )

    def end_sessions(self, user_id: str, *, actor: str) -> int:
        """Revoke every open session of a user; how many there were."""
        with immediate(self._engine) as conn:
            self._locked(conn, user_id)
            ended = self._end_sessions(conn, user_id, self._clock.now())
            self._audit.append(
                conn,
                actor=actor,
                action="user.sessions.revoke",
                target=user_id,
                details={"sessions_ended": ended},
            )
        return ended

    @staticmethod
    def _end_sessions(conn: Connection, user_id: str, now: datetime) -> int:
        result = conn.execute(
            update(user_sessions)
            .where(user_sessions.c.user_id == user_id, user_sessions.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        return int(result.rowcount)

    @staticmethod
    def _locked(conn: Connection, user_id: str) -> tuple[User, int]:
        """Lock the admins, then the user; the user and how many admins there are.

        The admins first and in id order, on PostgreSQL: two changes queue up instead of
        deadlocking, and the second counts the admins the first left (a row it waited
        for is checked again). SQLite holds the whole store already (BEGIN IMMEDIATE).
        """
        admins = conn.execute(
            select(users.c.id).where(users.c.role == ADMIN).order_by(users.c.id).with_for_update()
        ).all()
        row = conn.execute(
            select(users).where(users.c.id == user_id).with_for_update()
        ).one_or_none()
        if row is None:
            raise NotFound(f"no user {user_id!r}", field="user_id")
        return user_of(row), len(admins)


def _keep_an_admin(admins: int) -> None:
    if admins <= 1:
        raise ConflictError("the last admin cannot be deleted or demoted", field="role")
