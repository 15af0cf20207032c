"""Who is calling: write keys (ingest only), and API keys or console sessions with scopes."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Annotated, Final, Literal

from fastapi import Depends, Request
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer

from remarket.api.keys import ROLES, SCOPES
from remarket.api.runtime import Runtime
from remarket.api.sessions import TOKEN_PREFIX
from remarket.collect import Source
from remarket.errors import AuthError, ForbiddenError

__all__ = [
    "SESSION_COOKIE",
    "Principal",
    "Require",
    "authenticated",
    "basic_user",
    "require",
    "runtime_of",
    "source_for",
]

SESSION_COOKIE: Final = "remarket_session"

_bearer = HTTPBearer(
    auto_error=False,
    description="An API key (`remarket keys create`) or a session token (POST /v1/auth/login).",
)
_cookie = APIKeyCookie(
    name=SESSION_COOKIE,
    auto_error=False,
    description="The console's session cookie, set by POST /v1/auth/login.",
)


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def basic_user(header: str | None) -> str | None:
    """The user name of an HTTP Basic ``Authorization`` header (Segment's write key)."""
    if not header or not header[:6].lower() == "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.split(":", 1)[0] or None


def source_for(runtime: Runtime, header: str | None, body_key: str | None) -> Source:
    """The source of a write key, given as Basic user (or ``writeKey`` in the body)."""
    key = basic_user(header) or body_key
    if key is None:
        if header and header[:7].lower() == "bearer " and _principal(runtime, header[7:].strip()):
            raise ForbiddenError(
                "API keys and sessions cannot send events; use a source's write key",
                field="Authorization",
            )
        raise AuthError(
            "send the source's write key as the HTTP Basic user name", field="Authorization"
        )
    source = runtime.sources.authenticate(key)
    if source is None:
        raise AuthError("unknown or disabled write key", field="Authorization")
    return source


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts for: an API key or a console user's session.

    ``id`` is what the audit log records as the actor: the key's id, or ``user:<id>``.
    """

    id: str
    name: str
    role: str
    kind: Literal["api_key", "session"]
    user_id: str | None = None
    session_id: str | None = None

    @property
    def scopes(self) -> frozenset[str]:
        return ROLES[self.role]


def _principal(runtime: Runtime, secret: str) -> Principal | None:
    if secret.startswith(TOKEN_PREFIX):
        session = runtime.sessions.authenticate(secret)
        if session is None:
            return None
        user = session.user
        return Principal(f"user:{user.id}", user.email, user.role, "session", user.id, session.id)
    key = runtime.keys.authenticate(secret)
    return Principal(key.id, key.name, key.role, "api_key") if key is not None else None


class Require:
    """The dependency of a route: admits an API key or a session (Bearer or cookie)
    whose role holds ``scope`` (any role when ``scope`` is None); 401 without one, 403
    when the role lacks the scope or the credential is a write key."""

    def __init__(self, scope: str | None) -> None:
        if scope is not None and scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}: declare it in remarket/api/keys.py")
        self.scope = scope

    def __call__(
        self,
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        cookie: Annotated[str | None, Depends(_cookie)],
    ) -> Principal:
        runtime = runtime_of(request)
        secret = credentials.credentials if credentials is not None else cookie
        if secret is None:
            write_key = basic_user(request.headers.get("authorization"))
            if write_key is not None and runtime.sources.authenticate(write_key) is not None:
                raise ForbiddenError("write keys can only send events", field="Authorization")
            raise AuthError(
                "send an API key or session token as 'Authorization: Bearer <token>'",
                field="Authorization",
                scheme="Bearer",
            )
        principal = _principal(runtime, secret)
        if principal is None:
            raise AuthError(
                "unknown, revoked or expired API key or session",
                field="Authorization",
                scheme="Bearer",
            )
        if self.scope is not None and self.scope not in principal.scopes:
            raise ForbiddenError(
                f"role {principal.role!r} lacks the scope {self.scope!r}", field="Authorization"
            )
        return principal


def require(scope: str) -> Require:
    """The dependency for a route that needs ``scope``: ``Depends(require("x:read"))``."""
    return Require(scope)


def authenticated() -> Require:
    """The dependency for a route open to every API key and session (``/v1/auth/me``)."""
    return Require(None)
