"""Retention API: windows per source and event type, and running the deletion job now."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from remarket.api.auth import Principal, require, runtime_of
from remarket.api.runtime import Runtime
from remarket.errors import InvalidInput
from remarket.privacy import AuditLog, RetentionJob, RetentionRule
from remarket.privacy.retention import ANY

__all__ = ["router"]

router = APIRouter(tags=["retention"])


class RuleIn(BaseModel):
    source_id: str = Field(ANY, max_length=32, description="A source id, or '*' for any.")
    event_type: str = Field(
        ANY, max_length=16, description="track, identify, page, screen, group, alias, or '*'."
    )
    days: int = Field(ge=1, le=36_500, description="Events older than this are deleted.")


class RuleOut(BaseModel):
    id: int
    source_id: str
    event_type: str
    days: int
    updated_at: datetime


class RetentionOut(BaseModel):
    default_days: int | None = Field(description="Where no rule applies; null: forever.")
    interval_s: float = Field(description="How often the workers run the job.")
    rules: list[RuleOut]


class RunOut(BaseModel):
    warehouse: int
    quarantine: int
    log: int = Field(description="Embedded log only; JetStream forgets by its max_age.")
    at: datetime


def _rule(rule: RetentionRule) -> RuleOut:
    return RuleOut(
        id=rule.id,
        source_id=rule.source_id,
        event_type=rule.event_type,
        days=rule.days,
        updated_at=rule.updated_at,
    )


def _job(runtime: Runtime) -> RetentionJob:
    return RetentionJob(
        runtime.engine, runtime.warehouse, runtime.log, runtime.settings, runtime.clock
    )


@router.get("/v1/retention", response_model=RetentionOut)
def get_retention(
    request: Request, _key: Annotated[Principal, Depends(require("retention:read"))]
) -> RetentionOut:
    """The retention windows in force (the most specific rule wins)."""
    runtime = runtime_of(request)
    return RetentionOut(
        default_days=runtime.settings.retention_default_days,
        interval_s=runtime.settings.retention_interval_s,
        rules=[_rule(r) for r in _job(runtime).rules.list()],
    )


@router.put("/v1/retention/rules", response_model=RuleOut)
def put_rule(
    request: Request, body: RuleIn, key: Annotated[Principal, Depends(require("retention:write"))]
) -> RuleOut:
    """Set the window of a source and event type (replacing the rule there was)."""
    runtime = runtime_of(request)
    if body.source_id != ANY and body.source_id not in {s.id for s in runtime.sources.list()}:
        raise InvalidInput(f"no source with id {body.source_id!r}", field="source_id")
    rule = _job(runtime).rules.put(body.source_id, body.event_type, body.days)
    AuditLog(runtime.engine, clock=runtime.clock).record(
        key.id,
        "retention.rule",
        f"{rule.source_id}/{rule.event_type}",
        {"days": rule.days},
    )
    return _rule(rule)


@router.delete("/v1/retention/rules/{rule_id}", status_code=204)
def delete_rule(
    request: Request,
    rule_id: Annotated[int, Path(ge=1, le=2**62)],
    key: Annotated[Principal, Depends(require("retention:write"))],
) -> Response:
    runtime = runtime_of(request)
    _job(runtime).rules.remove(rule_id)
    AuditLog(runtime.engine, clock=runtime.clock).record(
        key.id, "retention.rule.delete", str(rule_id)
    )
    return Response(status_code=204)


@router.post("/v1/retention/run", response_model=RunOut)
async def run_retention(
    request: Request, key: Annotated[Principal, Depends(require("retention:write"))]
) -> RunOut:
    """Delete expired events from every store now (the workers also do it periodically)."""
    runtime = runtime_of(request)
    job = await run_in_threadpool(_job, runtime)
    report = await job.run(actor=key.id)
    return RunOut(
        warehouse=report.warehouse, quarantine=report.quarantine, log=report.log, at=report.at
    )
