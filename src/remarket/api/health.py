"""Liveness and metrics endpoints."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from remarket.api.auth import Principal, require, runtime_of
from remarket.api.problems import problem
from remarket.metrics import LOG_LAG

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=None)
async def healthz(request: Request) -> dict[str, Any] | Response:
    """Whether the state store and the log answer; 503 (problem+json) when one does not."""
    runtime = runtime_of(request)

    def ping() -> None:
        with runtime.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    try:
        await run_in_threadpool(ping)
        end = await runtime.log.end_offset()
        committed = await runtime.log.committed()
    except Exception as exc:
        return problem(503, "Unhealthy", str(exc), code="unhealthy", instance="/healthz")
    return {
        "status": "ok",
        "log_end_offset": end,
        "lag": {name: max(end - offset, 0) for name, offset in committed.items()},
    }


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "The Prometheus text format.",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
async def metrics(
    request: Request, _key: Annotated[Principal, Depends(require("metrics:read"))]
) -> Response:
    """Prometheus metrics: events accepted/rejected, log lag per consumer, request latency."""
    runtime = runtime_of(request)
    # The lag is read from the log now: the workers may run in another process, whose
    # own gauges this process cannot see.
    end = await runtime.log.end_offset()
    for name, offset in (await runtime.log.committed()).items():
        LOG_LAG.labels(name).set(max(end - offset, 0))
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/stats")
async def stats(
    request: Request, _key: Annotated[Principal, Depends(require("metrics:read"))]
) -> dict[str, int]:
    """Totals at a glance: live profiles, events in the warehouse and the log, quarantine."""
    runtime = runtime_of(request)
    profiles = await run_in_threadpool(runtime.profiles.count)
    warehouse_events = await run_in_threadpool(runtime.warehouse.count_events)
    pending = await run_in_threadpool(runtime.quarantine.count_pending)
    return {
        "profiles": profiles,
        "warehouse_events": warehouse_events,
        "log_end_offset": await runtime.log.end_offset(),
        "quarantine_pending": pending,
    }
