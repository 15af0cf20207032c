"""Journeys API: definitions (versioned), lifecycle, funnel, dry run, a profile's history."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from remarket.api.auth import Principal, require, runtime_of
from remarket.api.runtime import Runtime
from remarket.errors import InvalidInput, NotFound
from remarket.journeys.catalog import JourneyCatalog, JourneyInfo
from remarket.journeys.dryrun import dry_run
from remarket.journeys.funnel import funnel, history
from remarket.schema.journey import journey_json_schema

__all__ = ["router"]

router = APIRouter(tags=["journeys"])
_read = Depends(require("journeys:read"))
_write = Depends(require("journeys:write"))

Definition = Annotated[
    dict[str, Any],
    Body(description="A journey definition (see GET /v1/schema/journey)."),
]


class JourneyOut(BaseModel):
    id: str
    name: str
    description: str
    status: Literal["draft", "active", "paused", "archived"]
    version: int = Field(description="The newest version: profiles entering now walk it.")
    created_at: datetime
    updated_at: datetime


class VersionOut(BaseModel):
    version: int
    created_at: datetime
    definition: dict[str, Any]


class JourneyDetailOut(JourneyOut):
    definition: dict[str, Any]
    versions: list[VersionOut]


class NodeCountsOut(BaseModel):
    node: str
    entered: int = Field(description="Profiles that reached the node.")
    waiting: int = Field(description="Profiles waiting at it now.")
    exited: int = Field(description="Profiles that left the journey here.")
    converted: int = Field(description="Profiles that reached the node and converted.")
    queued: int = Field(description="Messages handed to the channel outbox.")
    sent: int
    resent: int = Field(
        description="Of sent, messages in doubt after a crash and sent again (the provider "
        "may have had them twice, under one idempotency key)."
    )
    failed: int = Field(description="Messages given up after retries.")
    pending: int = Field(description="Messages not delivered yet.")
    skipped: dict[str, int] = Field(description="Messages skipped, by reason.")
    arms: dict[str, int] = Field(description="Split and holdout assignments, by arm.")


class FunnelOut(BaseModel):
    journey_id: str
    entered: int
    not_entered: dict[str, int] = Field(
        description="Profiles that could not enter, by reason: paused, already_active, "
        "reentry_never, reentry_wait, max_concurrent."
    )
    active: int
    waiting: int
    exited: dict[str, int] = Field(description="Profiles that left, by reason.")
    converted: int
    converted_by_arm: dict[str, int] = Field(description="Conversions by `arm@node`.")
    sent: int
    resent: int = Field(description="Of sent, messages in doubt after a crash and sent again.")
    failed: int
    skipped: dict[str, int]
    nodes: list[NodeCountsOut]


class DryRunIn(BaseModel):
    start: datetime
    end: datetime
    version: int | None = Field(
        default=None, ge=1, le=2**31 - 1, description="Default: the newest."
    )
    max_profiles: int = Field(default=1000, ge=1, le=100_000)


class DryRunMessageOut(BaseModel):
    profile_id: str
    node: str
    channel: str
    template: str | None
    at: datetime
    blocked: str | None = Field(
        description="Why the guards would have stopped it: no_consent, suppressed, "
        "no_address, frequency_cap, journey_daily_limit; deferred:quiet_hours when quiet "
        "hours would have moved it to `at`. Null: it would have been sent."
    )


class DryRunRefusalOut(BaseModel):
    profile_id: str
    at: datetime
    reason: str = Field(
        description="already_active, reentry_never, reentry_wait or max_concurrent."
    )


class DryRunOut(BaseModel):
    journey_id: str
    version: int
    start: datetime
    end: datetime
    entered: int
    entrants: list[tuple[str, datetime]]
    not_entered: dict[str, int] = Field(
        description="Profiles that would not have entered, by reason (each once per reason)."
    )
    refusals: list[DryRunRefusalOut] = Field(
        description="Each profile's first refusal per reason, with its time."
    )
    messages: list[DryRunMessageOut]
    would_send: int
    blocked: dict[str, int]
    exited: dict[str, int]
    converted: int
    truncated: bool


class StepOut(BaseModel):
    journey_id: str
    version: int
    instance_id: str
    node: str | None
    kind: str
    reason: str | None
    at: datetime


class ProfileJourneysOut(BaseModel):
    profile_id: str
    steps: list[StepOut]


def _catalog(runtime: Runtime) -> JourneyCatalog:
    return JourneyCatalog(runtime.engine, clock=runtime.clock)


def _out(info: JourneyInfo) -> JourneyOut:
    return JourneyOut(
        id=info.id,
        name=info.name,
        description=info.definition.description,
        status=info.status,
        version=info.version,
        created_at=info.created_at,
        updated_at=info.updated_at,
    )


def _detail(runtime: Runtime, journey_id: str) -> JourneyDetailOut:
    catalog = _catalog(runtime)
    info = catalog.require(journey_id)
    versions = [
        VersionOut(
            version=v.version,
            created_at=v.created_at,
            definition=v.definition.model_dump(mode="json", by_alias=True),
        )
        for v in catalog.versions(journey_id)
    ]
    return JourneyDetailOut(
        **_out(info).model_dump(),
        definition=info.definition.model_dump(mode="json", by_alias=True),
        versions=versions,
    )


@router.get("/v1/schema/journey")
def schema(_key: Principal = _read) -> dict[str, Any]:
    """The JSON Schema of a journey definition."""
    return journey_json_schema()


@router.post("/v1/journeys", response_model=JourneyDetailOut, status_code=201)
def create_journey(request: Request, body: Definition, key: Principal = _write) -> JourneyDetailOut:
    """A new journey, as a draft (activate it to let profiles in)."""
    runtime = runtime_of(request)
    info = _catalog(runtime).create(body, actor=key.id)
    return _detail(runtime, info.id)


@router.put("/v1/journeys/{journey_id}", response_model=JourneyDetailOut)
def put_journey(
    request: Request, journey_id: str, body: Definition, key: Principal = _write
) -> JourneyDetailOut:
    """Create (a draft) or edit a journey. A changed definition becomes a new version:
    profiles entering from now on walk it, those already in finish on theirs."""
    runtime = runtime_of(request)
    _catalog(runtime).save(body, actor=key.id, journey_id=journey_id)
    return _detail(runtime, journey_id)


@router.get("/v1/journeys", response_model=list[JourneyOut])
def list_journeys(
    request: Request,
    status: Literal["draft", "active", "paused", "archived"] | None = None,
    _key: Principal = _read,
) -> list[JourneyOut]:
    """Every journey (or those in one status), by id."""
    return [_out(info) for info in _catalog(runtime_of(request)).all(status)]


@router.get("/v1/journeys/{journey_id}", response_model=JourneyDetailOut)
def get_journey(request: Request, journey_id: str, _key: Principal = _read) -> JourneyDetailOut:
    """A journey with its current definition and every version."""
    return _detail(runtime_of(request), journey_id)


def _move(request: Request, journey_id: str, move: str, key: Principal) -> JourneyDetailOut:
    runtime = runtime_of(request)
    _catalog(runtime).transition(journey_id, move, actor=key.id)
    return _detail(runtime, journey_id)


@router.post("/v1/journeys/{journey_id}/activate", response_model=JourneyDetailOut)
def activate_journey(
    request: Request, journey_id: str, key: Principal = _write
) -> JourneyDetailOut:
    """Let profiles in (from draft), or resume a paused journey where it stopped."""
    return _move(request, journey_id, "activate", key)


@router.post("/v1/journeys/{journey_id}/pause", response_model=JourneyDetailOut)
def pause_journey(request: Request, journey_id: str, key: Principal = _write) -> JourneyDetailOut:
    """The kill switch: no one enters or moves on, and its sends stop within a second."""
    return _move(request, journey_id, "pause", key)


@router.post("/v1/journeys/{journey_id}/archive", response_model=JourneyDetailOut)
def archive_journey(request: Request, journey_id: str, key: Principal = _write) -> JourneyDetailOut:
    """End the journey for good: every profile still in it leaves (reason archived)."""
    return _move(request, journey_id, "archive", key)


@router.get("/v1/journeys/{journey_id}/funnel", response_model=FunnelOut)
def journey_funnel(request: Request, journey_id: str, _key: Principal = _read) -> FunnelOut:
    """Counts per journey and node: entered, waiting, exited, converted, sent (and of
    them resent), skipped (by reason), failed."""
    runtime = runtime_of(request)
    info = _catalog(runtime).require(journey_id)
    counts = funnel(runtime.engine, journey_id, [n.id for n in info.definition.nodes])
    return FunnelOut.model_validate(counts, from_attributes=True)


@router.post("/v1/journeys/{journey_id}/dry-run", response_model=DryRunOut)
async def dry_run_journey(
    request: Request, journey_id: str, body: DryRunIn, _key: Principal = _read
) -> DryRunOut:
    """Replay the journey over a past window of the warehouse: who would have entered (and
    who not, why), what would have been sent when, what the guards would have blocked.
    Sends nothing."""
    runtime = runtime_of(request)
    catalog = _catalog(runtime)
    info = catalog.require(journey_id)
    version = body.version or info.version
    definition = catalog.definition(journey_id, version)
    if definition is None:
        raise NotFound(f"journey {journey_id!r} has no version {version}", field="version")
    if body.end <= body.start:
        raise InvalidInput("end must be after start", field="end")
    plan = await run_in_threadpool(catalog.plan, definition)
    report = await run_in_threadpool(
        dry_run,
        plan,
        runtime.warehouse,
        runtime.engine,
        runtime.settings,
        body.start,
        body.end,
        max_profiles=body.max_profiles,
    )
    return DryRunOut(
        journey_id=journey_id,
        version=version,
        start=report.start,
        end=report.end,
        entered=len(report.entered),
        entrants=report.entered,
        not_entered=report.not_entered,
        refusals=[DryRunRefusalOut.model_validate(r, from_attributes=True) for r in report.refused],
        messages=[
            DryRunMessageOut.model_validate(m, from_attributes=True) for m in report.messages
        ],
        would_send=sum(m.blocked is None for m in report.messages),
        blocked=report.blocked,
        exited=report.exited,
        converted=report.converted,
        truncated=report.truncated,
    )


@router.get("/v1/profiles/{profile_id}/journeys", response_model=ProfileJourneysOut)
def profile_journeys(
    request: Request, profile_id: str, _key: Principal = _read
) -> ProfileJourneysOut:
    """A profile's steps in every journey, oldest first (a merged profile answers with
    the surviving one)."""
    runtime = runtime_of(request)
    live = runtime.profiles.resolve(profile_id)
    if live is None:
        raise NotFound(f"no profile {profile_id!r}", field="profile_id")
    return ProfileJourneysOut(
        profile_id=live,
        steps=[
            StepOut.model_validate(s, from_attributes=True) for s in history(runtime.engine, live)
        ],
    )
