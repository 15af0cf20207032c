"""Console accounts API: password login and logout, who am I, and users (CRUD)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field

from remarket.api.auth import SESSION_COOKIE, Principal, authenticated, require, runtime_of
from remarket.api.passwords import MAX_PASSWORD, MIN_PASSWORD
from remarket.api.sessions import Session
from remarket.api.users import User
from remarket.errors import ForbiddenError, NotFound

__all__ = ["router"]

router = APIRouter(tags=["accounts"])

# The roles of remarket/api/keys.py (tests/api/test_accounts.py checks they agree).
Role = Literal["admin", "marketer", "analyst", "viewer"]
_Email = Annotated[str, Field(min_length=3, max_length=320, examples=["ann@example.com"])]
_Password = Annotated[str, Field(min_length=MIN_PASSWORD, max_length=MAX_PASSWORD)]


class LoginIn(BaseModel):
    email: str = Field(min_length=1, max_length=320)
    password: str = Field(min_length=1, max_length=MAX_PASSWORD)


class UserOut(BaseModel):
    id: str
    email: str
    role: Role
    scopes: list[str]
    created_at: datetime
    updated_at: datetime


class SessionOut(BaseModel):
    token: str = Field(
        description="The session token: send it as 'Authorization: Bearer <token>', or let "
        f"the browser send the HttpOnly cookie {SESSION_COOKIE} set with this answer."
    )
    expires_at: datetime = Field(description="The latest end; unused for long, it ends sooner.")
    user: UserOut


class MeOut(BaseModel):
    kind: Literal["api_key", "session"]
    actor: str = Field(description="How the audit log names you.")
    role: Role
    scopes: list[str]
    user: UserOut | None = Field(description="The console user, for a session.")


class UserIn(BaseModel):
    email: _Email
    role: Role
    password: _Password


class UserPatch(BaseModel):
    role: Role | None = None
    password: _Password | None = Field(
        None, description="A new password ends every session of the user."
    )


class SessionsEnded(BaseModel):
    ended: int


def _user(user: User) -> UserOut:
    return UserOut.model_validate(
        {
            "id": user.id,
            "email": user.email,
            "role": user.role,
            "scopes": sorted(user.scopes),
            "created_at": user.created_at,
            "updated_at": user.updated_at,
        }
    )


def _session_out(session: Session, token: str) -> SessionOut:
    return SessionOut(token=token, expires_at=session.expires_at, user=_user(session.user))


_LOGIN_RESPONSES: dict[int | str, dict[str, str]] = {
    401: {"description": "Wrong e-mail address or password (the same answer for both)."},
    429: {"description": "Too many failed logins for this address; see Retry-After."},
}


@router.post("/v1/auth/login", response_model=SessionOut, responses=_LOGIN_RESPONSES)
def login(request: Request, response: Response, body: LoginIn) -> SessionOut:
    """Log in to the console with e-mail and password: a session token, also set as an
    HttpOnly, SameSite=Strict cookie (Secure over HTTPS)."""
    runtime = runtime_of(request)
    session, token = runtime.sessions.log_in(body.email, body.password)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(runtime.sessions.max_age.total_seconds()),
        path="/",
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return _session_out(session, token)


@router.post("/v1/auth/logout", status_code=204)
def logout(request: Request, principal: Annotated[Principal, Depends(authenticated())]) -> Response:
    """End the calling session and clear its cookie."""
    if principal.session_id is None:
        raise ForbiddenError(
            "an API key has no session to end; revoke the key instead", field="Authorization"
        )
    runtime_of(request).sessions.log_out(principal.session_id, actor=principal.id)
    response = Response(status_code=204)
    response.delete_cookie(
        SESSION_COOKIE,
        path="/",
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return response


@router.get("/v1/auth/me", response_model=MeOut)
def me(request: Request, principal: Annotated[Principal, Depends(authenticated())]) -> MeOut:
    """Who the credentials sent belong to, their role and scopes."""
    user = None
    if principal.user_id is not None:
        found = runtime_of(request).users.get(principal.user_id)
        user = _user(found) if found is not None else None
    return MeOut.model_validate(
        {
            "kind": principal.kind,
            "actor": principal.id,
            "role": principal.role,
            "scopes": sorted(principal.scopes),
            "user": user,
        }
    )


@router.get("/v1/users", response_model=list[UserOut])
def list_users(
    request: Request, _who: Annotated[Principal, Depends(require("users:read"))]
) -> list[UserOut]:
    """Every console user, by e-mail address."""
    return [_user(u) for u in runtime_of(request).users.list()]


@router.post("/v1/users", response_model=UserOut, status_code=201)
def create_user(
    request: Request,
    body: UserIn,
    who: Annotated[Principal, Depends(require("users:write"))],
) -> UserOut:
    """A new console user with a role and a password (12 to 1024 characters)."""
    user = runtime_of(request).users.create(body.email, body.role, body.password, actor=who.id)
    return _user(user)


@router.get("/v1/users/{user_id}", response_model=UserOut)
def get_user(
    request: Request,
    user_id: str,
    _who: Annotated[Principal, Depends(require("users:read"))],
) -> UserOut:
    user = runtime_of(request).users.get(user_id)
    if user is None:
        raise NotFound(f"no user {user_id!r}", field="user_id")
    return _user(user)


@router.patch("/v1/users/{user_id}", response_model=UserOut)
def update_user(
    request: Request,
    user_id: str,
    body: UserPatch,
    who: Annotated[Principal, Depends(require("users:write"))],
) -> UserOut:
    """Change a user's role or password; the last admin cannot be demoted (409)."""
    user = runtime_of(request).users.update(
        user_id, actor=who.id, role=body.role, password=body.password
    )
    return _user(user)


@router.delete("/v1/users/{user_id}", status_code=204)
def delete_user(
    request: Request,
    user_id: str,
    who: Annotated[Principal, Depends(require("users:write"))],
) -> Response:
    """Delete a user and end their sessions; the last admin cannot be deleted (409)."""
    runtime_of(request).users.delete(user_id, actor=who.id)
    return Response(status_code=204)


@router.delete("/v1/users/{user_id}/sessions", response_model=SessionsEnded)
def end_user_sessions(
    request: Request,
    user_id: str,
    who: Annotated[Principal, Depends(require("users:write"))],
) -> SessionsEnded:
    """End every session of a user (a lost laptop, a leaving colleague)."""
    return SessionsEnded(ended=runtime_of(request).users.end_sessions(user_id, actor=who.id))
