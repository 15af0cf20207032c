"""Who is calling: write keys (ingest only) and API keys with scopes (everything else)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from remarket.api.keys import ApiKey
from remarket.api.runtime import Runtime
from remarket.collect import Source
from remarket.errors import AuthError, ForbiddenError

__all__ = ["basic_user", "require", "runtime_of", "source_for"]

_bearer = HTTPBearer(auto_error=False, description="An API key: `remarket keys create`.")


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
        raise AuthError(
            "send the source's write key as the HTTP Basic user name", field="Authorization"
        )
    source = runtime.sources.authenticate(key)
    if source is None:
        raise AuthError("unknown or disabled write key", field="Authorization")
    return source


def require(scope: str) -> Callable[..., ApiKey]:
    """A dependency that admits an API key holding ``scope`` (401 without, 403 if lacking)."""

    def check(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> ApiKey:
        runtime = runtime_of(request)
        if credentials is None:
            write_key = basic_user(request.headers.get("authorization"))
            if write_key is not None and runtime.sources.authenticate(write_key) is not None:
                raise ForbiddenError("write keys can only send events", field="Authorization")
            raise AuthError(
                "send an API key as 'Authorization: Bearer <key>'", field="Authorization"
            )
        key = runtime.keys.authenticate(credentials.credentials)
        if key is None:
            raise AuthError("unknown or revoked API key", field="Authorization")
        if scope not in key.scopes:
            raise ForbiddenError(
                f"role {key.role!r} lacks the scope {scope!r}", field="Authorization"
            )
        return key

    check.__name__ = f"require_{scope.replace(':', '_')}"
    return check
