"""Admin API: sources (write keys) and the quarantine of rejected events."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from remarket.api.auth import Principal, require, runtime_of
from remarket.api.models import (
    QuarantineEntryOut,
    QuarantinePageOut,
    ReplayIn,
    ReplayOut,
    SourceCreated,
    SourceIn,
    SourceOut,
)
from remarket.collect import Source, replay_quarantined

__all__ = ["router"]

router = APIRouter(tags=["admin"])


def _source(source: Source) -> SourceOut:
    return SourceOut(
        id=source.id,
        name=source.name,
        write_key_prefix=source.write_key_prefix,
        enabled=source.enabled,
        created_at=source.created_at,
    )


@router.get("/v1/sources", response_model=list[SourceOut])
def list_sources(
    request: Request, _key: Annotated[Principal, Depends(require("sources:read"))]
) -> list[SourceOut]:
    """Every source; write keys are shown by prefix only."""
    return [_source(s) for s in runtime_of(request).sources.list()]


@router.post("/v1/sources", response_model=SourceCreated, status_code=201)
def create_source(
    request: Request,
    body: SourceIn,
    key: Annotated[Principal, Depends(require("sources:write"))],
) -> SourceCreated:
    """A new source; the response holds its write key, which is never shown again."""
    runtime = runtime_of(request)
    source, write_key = runtime.sources.create(body.name, actor=key.id)
    return SourceCreated(**_source(source).model_dump(), write_key=write_key)


@router.get("/v1/quarantine", response_model=QuarantinePageOut)
def list_quarantine(
    request: Request,
    _key: Annotated[Principal, Depends(require("quarantine:read"))],
    after_id: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    include_replayed: bool = False,
) -> QuarantinePageOut:
    """Rejected events with the reason and the field at fault, oldest first."""
    entries = runtime_of(request).quarantine.list(
        pending_only=not include_replayed, after_id=after_id, limit=limit
    )
    return QuarantinePageOut(
        entries=[
            QuarantineEntryOut(
                id=e.id,
                source_id=e.source_id,
                received_at=e.received_at,
                reason=e.reason,
                field=e.field,
                detail=e.detail,
                payload=e.payload.decode("utf-8", "replace"),
                replayed_at=e.replayed_at,
            )
            for e in entries
        ],
        next_after_id=entries[-1].id if len(entries) == limit else None,
    )


@router.post("/v1/quarantine/replay", response_model=ReplayOut)
async def replay_quarantine(
    request: Request,
    body: ReplayIn,
    key: Annotated[Principal, Depends(require("quarantine:write"))],
) -> ReplayOut:
    """Run quarantined events through the pipeline again; those now valid are accepted."""
    runtime = runtime_of(request)
    pending = await run_in_threadpool(runtime.quarantine.list, limit=10_000)
    if body.ids is not None:
        wanted = set(body.ids)
        pending = [e for e in pending if e.id in wanted]
    result = await replay_quarantined(
        runtime.collector,
        runtime.quarantine,
        runtime.sources,
        pending,
        runtime.clock.now(),
        actor=key.id,
    )
    return ReplayOut(
        replayed=result.replayed,
        still_invalid=[
            {"id": r.index, "reason": r.reason, "field": r.field, "detail": r.detail}
            for r in result.still_invalid
        ],
    )
