"""Console sessions: password login with lockout, hashed tokens that expire, logout."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import Engine, or_, select, update

from remarket.api.lockout import Lockout
from remarket.api.passwords import Passwords
from remarket.api.users import User, UserStore, normalize_email, user_of
from remarket.clock import Clock, SystemClock
from remarket.collect.secret_cache import hash_secret
from remarket.errors import AuthError, TooManyAttempts
from remarket.privacy import AuditLog, immediate
from remarket.schema.events import as_utc
from remarket.storage.state import user_sessions, users

__all__ = ["TOKEN_PREFIX", "Session", "SessionStore"]

TOKEN_PREFIX: Final = "rs_"
# last_seen_at is written at most this often: idle expiry is that coarse, and a busy
# console does not write on every request.
_TOUCH_EVERY: Final = timedelta(seconds=60)
_ANONYMOUS: Final = "anonymous"


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    user: User
    created_at: datetime
    expires_at: datetime
    """The absolute end; it ends earlier after ``idle_timeout`` unused."""


class SessionStore:
    """Logs users in and out and resolves session tokens (only their SHA-256 is stored).

    A session ends when revoked (logout, a new password, the user deleted), after
    ``idle_timeout`` without a request, or ``max_age`` after login, whichever is first.
    Logins, failed logins and logouts go to the audit log; a failure names the user by
    id (or ``unknown``) and the address tried by its hash only.

    >>> from remarket.storage.state import connect_state, upgrade_state
    >>> engine = connect_state("sqlite://"); upgrade_state(engine)
    >>> passwords = Passwords(time_cost=1, memory_kib=64)
    >>> users = UserStore(engine, passwords)
    >>> ann = users.create("ann@example.com", "viewer", "a long passphrase")
    >>> sessions = SessionStore(engine, users, passwords)
    >>> session, token = sessions.log_in("Ann@Example.com", "a long passphrase")
    >>> sessions.authenticate(token).user == ann
    True
    >>> sessions.log_out(session.id, actor="user:" + ann.id); sessions.authenticate(token)
    """

    def __init__(
        self,
        engine: Engine,
        users: UserStore,
        passwords: Passwords,
        *,
        clock: Clock | None = None,
        idle_timeout: timedelta = timedelta(hours=12),
        max_age: timedelta = timedelta(days=7),
        lockout: Lockout | None = None,
    ) -> None:
        self._engine = engine
        self._users = users
        self._passwords = passwords
        self._clock = clock or SystemClock()
        self._idle = idle_timeout
        self._max_age = max_age
        self._lockout = lockout or Lockout(engine, clock=self._clock)
        self._audit = AuditLog(engine, clock=self._clock)

    @property
    def max_age(self) -> timedelta:
        return self._max_age

    def log_in(self, email: str, password: str) -> tuple[Session, str]:
        """A new session and its token for a right e-mail and password.

        AuthError for a wrong pair (the same answer, after the same work, whether or not
        the address has an account); TooManyAttempts while the address is locked out.
        """
        subject = hash_secret(normalize_email(email))
        wait = self._lockout.reserve(subject)
        found = self._users.credentials(email)
        target = found[0].id if found is not None else "unknown"
        if wait is not None:
            self._fail(target, "locked", subject)
            raise TooManyAttempts(
                f"too many failed logins for this address; try again in {wait} s",
                retry_after=wait,
            )
        if not self._passwords.verify(found[1] if found is not None else None, password):
            self._fail(target, "password" if found is not None else "unknown_user", subject)
            raise AuthError("wrong e-mail address or password", scheme="Bearer")
        assert found is not None
        user, stored = found
        # Hashed before the transaction: a hash takes as long as a login.
        upgraded = self._passwords.hash(password) if self._passwords.needs_rehash(stored) else None
        now = self._clock.now()
        token = f"{TOKEN_PREFIX}{secrets.token_urlsafe(32)}"
        session = Session(uuid.uuid4().hex, user, now, now + self._max_age)
        with immediate(self._engine) as conn:
            self._lockout.clear(conn, subject)
            # Housekeeping: sessions that ended can go.
            conn.execute(
                user_sessions.delete().where(
                    or_(
                        user_sessions.c.revoked_at.is_not(None),
                        user_sessions.c.expires_at <= now,
                        user_sessions.c.last_seen_at <= now - self._idle,
                    ),
                )
            )
            conn.execute(
                user_sessions.insert().values(
                    id=session.id,
                    user_id=user.id,
                    token_hash=hash_secret(token),
                    created_at=now,
                    last_seen_at=now,
                    expires_at=session.expires_at,
                )
            )
            if upgraded is not None:
                self._users.store_hash(conn, user.id, upgraded)
            self._audit.append(
                conn,
                actor=f"user:{user.id}",
                action="login",
                target=user.id,
                details={"session": session.id},
            )
        return session, token

    def _fail(self, target: str, reason: str, subject: str) -> None:
        self._audit.record(
            _ANONYMOUS, "login.failure", target, {"reason": reason, "subject": subject}
        )

    def authenticate(self, token: str) -> Session | None:
        """The live session of ``token``, or None (unknown, revoked, idle or expired)."""
        now = self._clock.now()
        with self._engine.connect() as conn:
            row = conn.execute(
                select(
                    user_sessions.c.id.label("session_id"),
                    user_sessions.c.created_at.label("session_created_at"),
                    user_sessions.c.last_seen_at,
                    user_sessions.c.expires_at,
                    user_sessions.c.revoked_at,
                    users,
                )
                .join(users, users.c.id == user_sessions.c.user_id)
                .where(user_sessions.c.token_hash == hash_secret(token))
            ).one_or_none()
        if row is None or row.revoked_at is not None:
            return None
        last_seen, expires = as_utc(row.last_seen_at), as_utc(row.expires_at)
        if now >= expires or now >= last_seen + self._idle:
            return None
        if now - last_seen >= _TOUCH_EVERY:
            with self._engine.begin() as conn:
                conn.execute(
                    update(user_sessions)
                    .where(user_sessions.c.id == row.session_id)
                    .values(last_seen_at=now)
                )
        return Session(row.session_id, user_of(row), as_utc(row.session_created_at), expires)

    def log_out(self, session_id: str, *, actor: str) -> None:
        """End a session (recorded in the audit log in the same transaction)."""
        with immediate(self._engine) as conn:
            ended = conn.execute(
                update(user_sessions)
                .where(user_sessions.c.id == session_id, user_sessions.c.revoked_at.is_(None))
                .values(revoked_at=self._clock.now())
            ).rowcount
            if ended:
                self._audit.append(
                    conn, actor=actor, action="logout", target=session_id, details={}
                )
