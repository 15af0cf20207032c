"""Read API for profiles and their events."""

from __future__ import annotations

from typing import Annotated

import msgspec
from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from remarket.api.auth import Principal, require, runtime_of
from remarket.api.models import EventOut, EventPageOut, IdentityOut, ProfileOut
from remarket.api.runtime import Runtime
from remarket.errors import InvalidInput, NotFound
from remarket.profiles import ANONYMOUS_ID, EMAIL, USER_ID, ProfileView, email_hash

__all__ = ["router"]

router = APIRouter(tags=["profiles"])
_read = Depends(require("profiles:read"))


def _out(view: ProfileView) -> ProfileOut:
    return ProfileOut(
        profile_id=view.profile_id,
        traits=view.traits,
        identities=[IdentityOut(kind=k, value=v) for k, v in view.identities],
        event_count=view.event_count,
        first_seen=view.first_seen,
        last_seen=view.last_seen,
    )


def _live(runtime: Runtime, profile_id: str) -> ProfileView:
    live = runtime.profiles.resolve(profile_id)
    view = runtime.profiles.get(live) if live is not None else None
    if view is None:
        raise NotFound(f"no profile {profile_id!r}", field="profile_id")
    return view


@router.get("/v1/profiles/{profile_id}", response_model=ProfileOut)
def get_profile(request: Request, profile_id: str, _key: Principal = _read) -> ProfileOut:
    """A profile: traits, identities, event count, first and last seen.

    A profile merged into another answers with the surviving profile.
    """
    return _out(_live(runtime_of(request), profile_id))


@router.get("/v1/profiles", response_model=ProfileOut)
def find_profile(
    request: Request,
    user_id: Annotated[str | None, Query(max_length=512)] = None,
    anonymous_id: Annotated[str | None, Query(max_length=512)] = None,
    email: Annotated[str | None, Query(max_length=512)] = None,
    _key: Principal = _read,
) -> ProfileOut:
    """The profile holding exactly one given identifier."""
    given = [
        (kind, value)
        for kind, value in ((USER_ID, user_id), (ANONYMOUS_ID, anonymous_id), (EMAIL, email))
        if value is not None
    ]
    if len(given) != 1:
        raise InvalidInput("give exactly one of user_id, anonymous_id, email", field="user_id")
    kind, value = given[0]
    runtime = runtime_of(request)
    profile_id = runtime.profiles.find((kind, email_hash(value) if kind == EMAIL else value))
    if profile_id is None:
        raise NotFound(f"no profile with {kind} {value!r}", field=kind)
    return _out(_live(runtime, profile_id))


@router.get("/v1/profiles/{profile_id}/events", response_model=EventPageOut)
async def profile_events(
    request: Request,
    profile_id: str,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    _key: Principal = _read,
) -> EventPageOut:
    """The profile's events, newest first (by event timestamp), a page at a time."""
    runtime = runtime_of(request)
    view = await run_in_threadpool(_live, runtime, profile_id)
    anonymous = [v for k, v in view.identities if k == ANONYMOUS_ID]
    users = [v for k, v in view.identities if k == USER_ID]
    try:
        page = await run_in_threadpool(
            runtime.warehouse.profile_events, anonymous, users, limit=limit, cursor=cursor
        )
    except ValueError as exc:
        raise InvalidInput(str(exc), field="cursor") from exc
    events = []
    for row in page.events:
        for column in ("properties", "traits", "context"):
            if row[column] is not None:
                row[column] = msgspec.json.decode(row[column])
        events.append(EventOut.model_validate(row))
    return EventPageOut(events=events, next_cursor=page.next_cursor)
