"""Privacy API: a profile's consent (current and history) and the audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from remarket.api.auth import Principal, require, runtime_of
from remarket.api.runtime import Runtime
from remarket.errors import NotFound
from remarket.privacy import AuditLog, ConsentLedger, ConsentRecord, LegalBasis, Purpose, State

__all__ = ["router"]

router = APIRouter(tags=["privacy"])


class ConsentIn(BaseModel):
    purposes: dict[Purpose, bool] = Field(
        min_length=1,
        description="Purpose → granted (true) or denied (false); purposes left out keep "
        "their state.",
        examples=[{"email": True, "advertising": False}],
    )
    source: str = Field(
        "api",
        pattern=r"^[a-z0-9_.:-]{1,32}$",
        description="Where the choice was made, e.g. preference_center.",
    )
    legal_basis: LegalBasis = Field("consent", description="GDPR art. 6(1) basis.")


class ConsentStateOut(BaseModel):
    purpose: Purpose
    state: State
    source: str
    legal_basis: LegalBasis
    at: datetime


class ConsentOut(BaseModel):
    profile_id: str
    current: list[ConsentStateOut] = Field(description="Purposes never set are absent: denied.")
    history: list[ConsentStateOut] = Field(description="Every change, oldest first.")


class AuditEntryOut(BaseModel):
    seq: int
    at: datetime
    actor: str = Field(
        description="The API key id, user:<id> for a console user, anonymous for a failed "
        "login, or cli."
    )
    action: str
    target: str
    details: str = Field(description="Canonical JSON: ids, counts and hashes only.")
    prev_hash: str
    hash: str


class AuditPageOut(BaseModel):
    entries: list[AuditEntryOut]
    head_seq: int = Field(description="The number of the chain's last entry.")
    head_hash: str
    next_after: int | None = Field(description="Pass as ?after= for the next page.")


def _state(record: ConsentRecord) -> ConsentStateOut:
    return ConsentStateOut.model_validate(
        {
            "purpose": record.purpose,
            "state": record.state,
            "source": record.source,
            "legal_basis": record.legal_basis,
            "at": record.at,
        }
    )


def _live(runtime: Runtime, profile_id: str) -> str:
    live = runtime.profiles.resolve(profile_id)
    if live is None:
        raise NotFound(f"no profile {profile_id!r}", field="profile_id")
    return live


def _consent(ledger: ConsentLedger, profile_id: str) -> ConsentOut:
    current = ledger.current(profile_id)
    return ConsentOut(
        profile_id=profile_id,
        current=[_state(current[p]) for p in sorted(current)],
        history=[_state(r) for r in ledger.history(profile_id)],
    )


@router.get("/v1/profiles/{profile_id}/consent", response_model=ConsentOut)
def get_consent(
    request: Request,
    profile_id: str,
    _key: Annotated[Principal, Depends(require("consent:read"))],
) -> ConsentOut:
    """The profile's consent per purpose, and every change with its source and basis.

    A profile merged into another answers with the surviving profile.
    """
    runtime = runtime_of(request)
    live = _live(runtime, profile_id)
    return _consent(ConsentLedger(runtime.engine, clock=runtime.clock), live)


@router.put("/v1/profiles/{profile_id}/consent", response_model=ConsentOut)
def put_consent(
    request: Request,
    profile_id: str,
    body: ConsentIn,
    key: Annotated[Principal, Depends(require("consent:write"))],
) -> ConsentOut:
    """Record the person's choice for the purposes given (kept in the history and the
    audit log, even when it repeats the current state)."""
    runtime = runtime_of(request)
    live = _live(runtime, profile_id)
    ledger = ConsentLedger(runtime.engine, clock=runtime.clock)
    ledger.set(
        live,
        {str(p): granted for p, granted in body.purposes.items()},
        actor=key.id,
        source=body.source,
        legal_basis=body.legal_basis,
    )
    return _consent(ledger, live)


@router.get("/v1/audit", response_model=AuditPageOut)
def list_audit(
    request: Request,
    _key: Annotated[Principal, Depends(require("audit:read"))],
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditPageOut:
    """Audit entries after number ``after``, oldest first, with the chain's head."""
    runtime = runtime_of(request)
    audit = AuditLog(runtime.engine, clock=runtime.clock)
    head_seq, head_hash = audit.head()
    entries = audit.entries(after=after, limit=limit)
    return AuditPageOut(
        entries=[
            AuditEntryOut(
                seq=e.seq,
                at=e.at,
                actor=e.actor,
                action=e.action,
                target=e.target,
                details=e.details,
                prev_hash=e.prev_hash,
                hash=e.hash,
            )
            for e in entries
        ],
        head_seq=head_seq,
        head_hash=head_hash,
        next_after=entries[-1].seq if len(entries) == limit else None,
    )
