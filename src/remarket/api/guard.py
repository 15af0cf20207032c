"""Guard API: block lists, rate limits, bot and anomaly counters, anomaly reports."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from remarket.api.auth import Principal, require, runtime_of
from remarket.collect.guard_store import Anomaly, Block
from remarket.privacy import AuditLog

__all__ = ["router"]

router = APIRouter(tags=["guard"])


class BlockIn(BaseModel):
    network: str = Field(description="An IPv4/IPv6 address or CIDR network.", max_length=64)
    reason: str = Field("", max_length=500)


class BlockOut(BaseModel):
    id: int
    network: str
    reason: str
    created_at: datetime
    created_by: str


class RateLimitOut(BaseModel):
    events_per_s: float = Field(description="0: no limit.")
    burst: int


class GuardSettingsOut(BaseModel):
    key_rate_limit: RateLimitOut
    ip_rate_limit: RateLimitOut
    exempt_networks: list[str]
    trusted_proxies: list[str]
    bot_detection: bool
    velocity_factor: float
    velocity_window_s: int
    velocity_floor: float
    velocity_ip_floor: float
    consent_required: bool
    consent_action: str
    pseudonymise_ip: str
    ip_prefixes: dict[str, int]
    pseudonymise_user_agent: str
    pseudonymise_ids: bool


class CounterOut(BaseModel):
    day: str
    source_id: str = Field(description="'-' for requests refused before their write key.")
    kind: str
    count: int


class GuardOut(BaseModel):
    settings: GuardSettingsOut
    totals: dict[str, int] = Field(description="Per kind, over every day and source.")
    counters: list[CounterOut] = Field(description="Per day, source and kind, newest first.")
    blocks: int


class AnomalyOut(BaseModel):
    id: int
    kind: str = Field(description="'profile' (subject: userId, else anonymousId) or 'ip'.")
    subject: str
    source_id: str
    window_start: datetime
    baseline: int
    threshold: int
    detected_at: datetime


class AnomalyPageOut(BaseModel):
    anomalies: list[AnomalyOut]
    next_after_id: int | None


def _block(b: Block) -> BlockOut:
    return BlockOut(
        id=b.id,
        network=b.network,
        reason=b.reason,
        created_at=b.created_at,
        created_by=b.created_by,
    )


def _anomaly(a: Anomaly) -> AnomalyOut:
    return AnomalyOut(
        id=a.id,
        kind=a.kind,
        subject=a.subject,
        source_id=a.source_id,
        window_start=a.window_start,
        baseline=a.baseline,
        threshold=a.threshold,
        detected_at=a.detected_at,
    )


@router.get("/v1/guard", response_model=GuardOut)
async def guard_status(
    request: Request,
    _key: Annotated[Principal, Depends(require("guard:read"))],
    days: Annotated[int, Query(ge=1, le=366, description="Counters of the last N days.")] = 7,
) -> GuardOut:
    """The guard's settings and what it caught: bots, rate-limited, blocked, anomalies."""
    runtime = runtime_of(request)
    await runtime.protection.flush()
    store = runtime.protection.guard.store
    since = (runtime.clock.now() - timedelta(days=days - 1)).date().isoformat()
    s = runtime.settings
    return GuardOut(
        settings=GuardSettingsOut(
            key_rate_limit=RateLimitOut(
                events_per_s=s.guard_key_events_per_s, burst=s.guard_key_burst
            ),
            ip_rate_limit=RateLimitOut(
                events_per_s=s.guard_ip_events_per_s, burst=s.guard_ip_burst
            ),
            exempt_networks=s.guard_exempt_networks,
            trusted_proxies=s.guard_trusted_proxies,
            bot_detection=s.guard_bot_detection,
            velocity_factor=s.guard_velocity_factor,
            velocity_window_s=s.guard_velocity_window_s,
            velocity_floor=s.guard_velocity_floor,
            velocity_ip_floor=s.guard_velocity_ip_floor,
            consent_required=s.consent_required,
            consent_action=s.consent_action,
            pseudonymise_ip=s.pseudonymise_ip,
            ip_prefixes={"ipv4": s.ip_v4_prefix, "ipv6": s.ip_v6_prefix},
            pseudonymise_user_agent=s.pseudonymise_user_agent,
            pseudonymise_ids=s.pseudonymise_ids,
        ),
        totals=await run_in_threadpool(store.totals),
        counters=[
            CounterOut(day=d, source_id=src, kind=k, count=n)
            for d, src, k, n in await run_in_threadpool(store.counters, since)
        ],
        blocks=len(await run_in_threadpool(store.blocks)),
    )


@router.get("/v1/guard/blocks", response_model=list[BlockOut])
def list_blocks(
    request: Request, _key: Annotated[Principal, Depends(require("guard:read"))]
) -> list[BlockOut]:
    """Every blocked network."""
    return [_block(b) for b in runtime_of(request).protection.guard.store.blocks()]


@router.post("/v1/guard/blocks", response_model=BlockOut, status_code=201)
async def add_block(
    request: Request, body: BlockIn, key: Annotated[Principal, Depends(require("guard:write"))]
) -> BlockOut:
    """Block an address or network (IPv4 or IPv6 CIDR); in force at once in this process,
    within ``guard_refresh_s`` in the others."""
    runtime = runtime_of(request)
    guard = runtime.protection.guard
    block = await run_in_threadpool(
        guard.store.add_block, body.network, body.reason, actor=key.id, at=runtime.clock.now()
    )
    await run_in_threadpool(guard.refresh)
    await run_in_threadpool(
        AuditLog(runtime.engine, clock=runtime.clock).record,
        key.id,
        "guard.block",
        block.network,
        {"id": block.id},
    )
    return _block(block)


@router.delete("/v1/guard/blocks/{block_id}", status_code=204)
async def remove_block(
    request: Request,
    block_id: Annotated[int, Path(ge=1, le=2**62)],
    key: Annotated[Principal, Depends(require("guard:write"))],
) -> Response:
    """Lift a block."""
    runtime = runtime_of(request)
    guard = runtime.protection.guard
    await run_in_threadpool(guard.store.remove_block, block_id)
    await run_in_threadpool(guard.refresh)
    await run_in_threadpool(
        AuditLog(runtime.engine, clock=runtime.clock).record,
        key.id,
        "guard.unblock",
        str(block_id),
    )
    return Response(status_code=204)


@router.get("/v1/guard/anomalies", response_model=AnomalyPageOut)
async def list_anomalies(
    request: Request,
    _key: Annotated[Principal, Depends(require("guard:read"))],
    after_id: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AnomalyPageOut:
    """Velocity anomalies, oldest first; their events are in the quarantine
    (reason ``velocity_anomaly``), to replay once judged legitimate."""
    runtime = runtime_of(request)
    await runtime.protection.flush()
    found = await run_in_threadpool(
        runtime.protection.guard.store.anomalies, after_id=after_id, limit=limit
    )
    return AnomalyPageOut(
        anomalies=[_anomaly(a) for a in found],
        next_after_id=found[-1].id if len(found) == limit else None,
    )
