"""Data-subject rights API: erase a person (art. 17), export their data (art. 15/20)."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from typing import Annotated, Any, Final

import anyio.from_thread
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from remarket.api.auth import Principal, require, runtime_of
from remarket.api.runtime import Runtime
from remarket.errors import InvalidInput, NotFound
from remarket.privacy import AuditLog
from remarket.privacy.erasure import PII_VALUE, Erasure, ErasureRecord, Subject
from remarket.privacy.export import export_document
from remarket.profiles import (
    ANONYMOUS_ID,
    EMAIL,
    USER_ID,
    email_hash,
    identifiers_for_value,
    profile_id_of,
)

__all__ = ["router", "subject_for_value", "wait_for_workers"]

router = APIRouter(tags=["privacy"])
_log = logging.getLogger(__name__)
_SETTLE_TIMEOUT_S: Final = 30.0


class ErasureOut(BaseModel):
    id: int
    profile_hash: str = Field(description="HMAC-SHA256 of the erased profile id (no PII kept).")
    actor: str = Field(description="The API key id, or cli.")
    requested_at: datetime
    completed_at: datetime
    counts: dict[str, int] = Field(
        description="Rows removed per store; pii_keys: keys destroyed; queued.audiences: "
        "removals from ad audiences queued (hashed identifiers only)."
    )


class ErasurePageOut(BaseModel):
    erasures: list[ErasureOut]
    next_after: int | None = Field(description="Pass as ?after= for the next page.")


def _out(record: ErasureRecord) -> ErasureOut:
    return ErasureOut(
        id=record.id,
        profile_hash=record.profile_hash,
        actor=record.actor,
        requested_at=record.requested_at,
        completed_at=record.completed_at,
        counts=record.counts,
    )


async def wait_for_workers(runtime: Runtime, timeout: float = _SETTLE_TIMEOUT_S) -> bool:
    """Wait until every consumer has applied the log up to its current end; whether it
    did within ``timeout`` (no workers in this process: at once, False)."""
    if runtime.workers is None:
        return False
    end = await runtime.log.end_offset()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        committed = await runtime.log.committed()
        if all(offset >= end for offset in committed.values()):
            return True
        await asyncio.sleep(0.02)
    _log.warning("erasure: workers did not reach log offset %d in %.0f s", end, timeout)
    return False


def subject_for_value(erasure: Erasure, value: str) -> Subject:
    """The person a profile id or a raw value (user or anonymous id, e-mail, phone…) may
    name: whoever holds it now, and, after an erasure, everything it would be stored as
    (the profile id a profile of it alone gets, the value in raw payloads)."""
    if value.startswith("p_"):
        return erasure.subject([value])
    identifiers = identifiers_for_value(value)
    return erasure.subject(
        [profile_id_of(i) for i in identifiers], [*identifiers, (PII_VALUE, value)]
    )


def _subject_of(runtime: Runtime, profile_id: str) -> Subject:
    live = runtime.profiles.resolve(profile_id)
    if live is None:
        raise NotFound(f"no profile {profile_id!r}", field="profile_id")
    return runtime.rights.erasure.subject([live])


async def _erase(runtime: Runtime, subject: Subject, actor: str) -> ErasureOut:
    def settle() -> None:
        # Rows written from events decrypted just before the keys went are swept again.
        anyio.from_thread.run(wait_for_workers, runtime)

    record = await run_in_threadpool(runtime.rights.erasure.erase, subject, actor, settle=settle)
    return _out(record)


@router.delete("/v1/profiles/{profile_id}", response_model=ErasureOut)
async def erase_profile(
    request: Request,
    profile_id: str,
    key: Annotated[Principal, Depends(require("privacy:erase"))],
) -> ErasureOut:
    """Erase the person (GDPR art. 17) from every store: profile, identities, traits,
    consents, segments, quarantine, warehouse, Parquet exports; their keys are destroyed,
    so what the event log and its backups hold of them can never be read again. First,
    their removal from every ad audience they were uploaded to is queued (the platforms'
    hashed identifiers only), so an answered erasure has always queued it.

    Answers once done, with what was removed per store; recorded (without PII) in the
    erasure records and the audit log.
    """
    runtime = runtime_of(request)
    subject = await run_in_threadpool(_subject_of, runtime, profile_id)
    return await _erase(runtime, subject, key.id)


@router.delete("/v1/profiles", response_model=ErasureOut)
async def erase_by_identifier(
    request: Request,
    key: Annotated[Principal, Depends(require("privacy:erase"))],
    user_id: Annotated[str | None, Query(max_length=512)] = None,
    anonymous_id: Annotated[str | None, Query(max_length=512)] = None,
    email: Annotated[str | None, Query(max_length=512)] = None,
) -> ErasureOut:
    """Erase the person holding exactly one given identifier (as ``DELETE /v1/profiles/{id}``)."""
    given = [
        (kind, value)
        for kind, value in ((USER_ID, user_id), (ANONYMOUS_ID, anonymous_id), (EMAIL, email))
        if value is not None
    ]
    if len(given) != 1:
        raise InvalidInput("give exactly one of user_id, anonymous_id, email", field="user_id")
    kind, value = given[0]
    runtime = runtime_of(request)
    identifier = (kind, email_hash(value) if kind == EMAIL else value)
    profile_id = await run_in_threadpool(runtime.profiles.find, identifier)
    if profile_id is None:
        raise NotFound(f"no profile with {kind} {value!r}", field=kind)
    subject = await run_in_threadpool(_subject_of, runtime, profile_id)
    return await _erase(runtime, subject, key.id)


@router.get("/v1/erasures", response_model=ErasurePageOut)
def list_erasures(
    request: Request,
    _key: Annotated[Principal, Depends(require("audit:read"))],
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ErasurePageOut:
    """Erasure records after number ``after``, oldest first (no PII: a keyed hash of the
    profile id, who, when, counts per store)."""
    records = runtime_of(request).rights.erasure.records(after=after, limit=limit)
    return ErasurePageOut(
        erasures=[_out(r) for r in records],
        next_after=records[-1].id if len(records) == limit else None,
    )


@router.get("/v1/profiles/{profile_id}/export")
def export_profile(
    request: Request,
    profile_id: str,
    key: Annotated[Principal, Depends(require("privacy:export"))],
) -> dict[str, Any]:
    """Everything held about the person (GDPR art. 15 and 20) as one JSON document:
    profile (traits, identities), consents with their history, events, segment
    memberships and history, and the sections other modules register. Recorded in the
    audit log."""
    runtime = runtime_of(request)
    subject = _subject_of(runtime, profile_id)
    rights = runtime.rights
    document = export_document(subject, rights.exporters, clock=runtime.clock)
    AuditLog(runtime.engine, clock=runtime.clock).record(
        key.id, "profile.export", rights.erasure.profile_hash(subject)
    )
    return document
