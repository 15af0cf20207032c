"""Channels API: providers, templates (with preview), dead letters, suppressions,
ad audiences, delivery counts, and the recipients' one-click unsubscribe."""

from __future__ import annotations

import html
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field
from starlette.responses import HTMLResponse

from remarket.api.auth import Principal, require, runtime_of
from remarket.api.runtime import Runtime
from remarket.channels.audiences import Audience, AudienceStore
from remarket.channels.counts import delivery_counts
from remarket.channels.dead_letters import (
    add_suppression,
    dead_letters,
    remove_suppression,
    replay_dead_letters,
    suppressions,
)
from remarket.channels.registry import ProviderConfig, ProviderStore
from remarket.channels.secrets import SecretBox, load_key
from remarket.channels.templates import Template, TemplateStore, render, template_context
from remarket.errors import InvalidInput, NotFound
from remarket.privacy import ConsentLedger

__all__ = ["router"]

router = APIRouter(tags=["channels"])
_read = Depends(require("channels:read"))
_write = Depends(require("channels:write"))
_Channel = Literal["email", "sms", "push", "webhook", "audience"]
_Id = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]


def _box(runtime: Runtime) -> SecretBox:
    return SecretBox(load_key(runtime.settings))


# -- providers ----------------------------------------------------------------------


class ProviderIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    kind: Literal["smtp", "twilio", "fcm", "webhook", "meta", "google"]
    config: dict[str, Any] = Field(
        default_factory=dict, description="Settings stored as given (host, sender, URLs)."
    )
    credentials: dict[str, Any] = Field(
        default_factory=dict,
        description="Secrets (passwords, tokens): encrypted at rest, never returned.",
    )
    rate_per_s: int | None = Field(None, ge=1, le=1_000_000, description="Most sends per second.")


class ProviderPatch(BaseModel):
    config: dict[str, Any] | None = None
    credentials: dict[str, Any] | None = Field(None, description="Replaces the stored set.")
    rate_per_s: int | None = Field(None, ge=0, le=1_000_000, description="0 removes the limit.")
    enabled: bool | None = None


class ProviderOut(BaseModel):
    id: str
    name: str
    channel: str
    kind: str
    config: dict[str, Any]
    credential_names: list[str] = Field(description="Names only; values are never returned.")
    rate_per_s: int | None
    enabled: bool
    created_at: datetime
    updated_at: datetime


def _provider(p: ProviderConfig) -> ProviderOut:
    return ProviderOut.model_validate(p, from_attributes=True)


@router.get("/v1/channels/providers", response_model=list[ProviderOut])
def list_providers(request: Request, _key: Annotated[Principal, _read]) -> list[ProviderOut]:
    """Configured providers; the newest enabled one of a channel sends its messages."""
    runtime = runtime_of(request)
    return [_provider(p) for p in ProviderStore(runtime.engine, _box(runtime)).all()]


@router.post("/v1/channels/providers", response_model=ProviderOut, status_code=201)
def create_provider(
    request: Request, body: ProviderIn, _key: Annotated[Principal, _write]
) -> ProviderOut:
    runtime = runtime_of(request)
    return _provider(
        ProviderStore(runtime.engine, _box(runtime)).create(
            name=body.name,
            kind=body.kind,
            config=body.config,
            credentials=body.credentials,
            rate_per_s=body.rate_per_s,
            now=runtime.clock.now(),
        )
    )


@router.patch("/v1/channels/providers/{provider_id}", response_model=ProviderOut)
def update_provider(
    request: Request, provider_id: str, body: ProviderPatch, _key: Annotated[Principal, _write]
) -> ProviderOut:
    runtime = runtime_of(request)
    return _provider(
        ProviderStore(runtime.engine, _box(runtime)).update(
            provider_id,
            config=body.config,
            credentials=body.credentials,
            rate_per_s=body.rate_per_s,
            enabled=body.enabled,
            now=runtime.clock.now(),
        )
    )


# -- templates ----------------------------------------------------------------------


class TemplateIn(BaseModel):
    channel: Literal["email", "sms", "push"]
    subject: str | None = Field(None, description="E-mail subject / push title (Jinja2).")
    html: str | None = Field(None, description="E-mail HTML part (Jinja2, autoescaped).")
    text: str = Field(description="Text part / SMS / push body (Jinja2).")


class TemplateOut(TemplateIn):
    id: str
    updated_at: datetime | None


class PreviewIn(BaseModel):
    profile_id: str
    trigger: dict[str, Any] | None = Field(None, description="An event to render with.")
    variables: dict[str, Any] = Field(default_factory=dict)


class PreviewOut(BaseModel):
    subject: str | None
    html: str | None
    text: str


def _template_out(t: Template) -> TemplateOut:
    return TemplateOut(
        id=t.id,
        channel=t.channel,
        subject=t.subject,
        html=t.html,
        text=t.text,
        updated_at=t.updated_at,
    )


@router.get("/v1/templates", response_model=list[TemplateOut])
def list_templates(request: Request, _key: Annotated[Principal, _read]) -> list[TemplateOut]:
    return [_template_out(t) for t in TemplateStore(runtime_of(request).engine).all()]


@router.get("/v1/templates/{template_id}", response_model=TemplateOut)
def get_template(
    request: Request, template_id: str, _key: Annotated[Principal, _read]
) -> TemplateOut:
    return _template_out(TemplateStore(runtime_of(request).engine).get(template_id))


@router.put(
    "/v1/templates/{template_id}",
    response_model=TemplateOut,
    responses={201: {"model": TemplateOut, "description": "Created."}},
)
def put_template(
    request: Request,
    template_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")],
    body: TemplateIn,
    response: Response,
    _key: Annotated[Principal, _write],
) -> TemplateOut:
    """Create or replace a template (checked to parse); 201 when created."""
    runtime = runtime_of(request)
    store = TemplateStore(runtime.engine)
    template = Template(template_id, body.channel, body.subject, body.html, body.text)
    if store.put(template, now=runtime.clock.now()):
        response.status_code = 201
    return _template_out(store.get(template_id))


@router.delete("/v1/templates/{template_id}", status_code=204)
def delete_template(request: Request, template_id: str, _key: Annotated[Principal, _write]) -> None:
    TemplateStore(runtime_of(request).engine).delete(template_id)


@router.post("/v1/templates/{template_id}/preview", response_model=PreviewOut)
def preview_template(
    request: Request, template_id: str, body: PreviewIn, _key: Annotated[Principal, _read]
) -> PreviewOut:
    """Render against a real profile's traits, as a send would (nothing is sent)."""
    runtime = runtime_of(request)
    template = TemplateStore(runtime.engine).get(template_id)
    live = runtime.profiles.resolve(body.profile_id)
    view = runtime.profiles.get(live) if live is not None else None
    if view is None:
        raise NotFound(f"no profile {body.profile_id!r}", field="profile_id")
    context = template_context(
        view.profile_id, view.traits, trigger=body.trigger, variables=body.variables
    )
    rendered = render(template, context)
    return PreviewOut(subject=rendered.subject, html=rendered.html, text=rendered.text)


# -- dead letters and suppressions ------------------------------------------------------


class DeadLetterOut(BaseModel):
    id: int
    idempotency_key: str
    profile_id: str
    channel: str
    journey_id: str | None
    node_id: str | None
    reason: str | None
    attempts: int
    last_error: str | None
    finished_at: datetime | None


class ReplayIn(BaseModel):
    ids: list[Annotated[int, Field(ge=1, le=2**62)]] | None = Field(
        None, description="Dead letters to replay; null: all."
    )


class ReplayOut(BaseModel):
    replayed: int


@router.get("/v1/channels/dead-letters", response_model=list[DeadLetterOut])
def list_dead_letters(
    request: Request,
    _key: Annotated[Principal, _read],
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[DeadLetterOut]:
    """Messages that gave up (attempts exhausted, rejected, template failed)."""
    rows = dead_letters(runtime_of(request).engine, limit=limit, after=after)
    return [DeadLetterOut.model_validate(d, from_attributes=True) for d in rows]


@router.post("/v1/channels/dead-letters/replay", response_model=ReplayOut)
def replay(request: Request, body: ReplayIn, _key: Annotated[Principal, _write]) -> ReplayOut:
    """Put dead letters back in the outbox (same idempotency keys, guards run again)."""
    runtime = runtime_of(request)
    return ReplayOut(
        replayed=replay_dead_letters(runtime.engine, body.ids, now=runtime.clock.now())
    )


class SuppressionIn(BaseModel):
    profile_id: str
    channel: Literal["email", "sms", "push", "webhook", "audience", "*"]
    reason: str = Field("manual", pattern=r"^[a-z0-9_.:-]{1,64}$")


class SuppressionOut(SuppressionIn):
    created_at: datetime


@router.get("/v1/channels/suppressions", response_model=list[SuppressionOut])
def list_suppressions(
    request: Request, _key: Annotated[Principal, _read], profile_id: str | None = None
) -> list[SuppressionOut]:
    rows = suppressions(runtime_of(request).engine, profile_id=profile_id)
    return [SuppressionOut.model_validate(s, from_attributes=True) for s in rows]


@router.put("/v1/channels/suppressions", response_model=SuppressionOut)
def put_suppression(
    request: Request, body: SuppressionIn, _key: Annotated[Principal, _write]
) -> SuppressionOut:
    """Keep a channel (``*``: all) from reaching the profile; idempotent."""
    runtime = runtime_of(request)
    add_suppression(
        runtime.engine, body.profile_id, body.channel, body.reason, now=runtime.clock.now()
    )
    [row] = [
        s
        for s in suppressions(runtime.engine, profile_id=body.profile_id)
        if s.channel == body.channel
    ]
    return SuppressionOut.model_validate(row, from_attributes=True)


@router.delete("/v1/channels/suppressions/{profile_id}/{channel}", status_code=204)
def delete_suppression(
    request: Request, profile_id: str, channel: str, _key: Annotated[Principal, _write]
) -> None:
    if not remove_suppression(runtime_of(request).engine, profile_id, channel):
        raise NotFound(f"no suppression of {channel!r} for {profile_id!r}", field="channel")


# -- audiences ------------------------------------------------------------------------


class AudienceIn(BaseModel):
    id: _Id
    segment: str
    platform: Literal["meta", "google"]
    external_id: str = Field(
        min_length=1,
        max_length=200,
        description="Meta custom audience id, or Google Ads user list id.",
    )


class AudienceOut(BaseModel):
    id: str
    segment: str
    platform: str
    external_id: str
    history_cursor: int
    created_at: datetime


class SyncOut(BaseModel):
    enqueued: int


def _audience(a: Audience) -> AudienceOut:
    return AudienceOut.model_validate(a, from_attributes=True)


@router.get("/v1/channels/audiences", response_model=list[AudienceOut])
def list_audiences(request: Request, _key: Annotated[Principal, _read]) -> list[AudienceOut]:
    return [_audience(a) for a in AudienceStore(runtime_of(request).engine).all()]


@router.post("/v1/channels/audiences", response_model=AudienceOut, status_code=201)
def create_audience(
    request: Request, body: AudienceIn, _key: Annotated[Principal, _write]
) -> AudienceOut:
    """Bind an ad audience to a segment: its members now are added, and later entries
    and exits become adds and removes (uploads need advertising consent)."""
    runtime = runtime_of(request)
    return _audience(
        AudienceStore(runtime.engine).create(
            body.id,
            segment=body.segment,
            platform=body.platform,
            external_id=body.external_id,
            now=runtime.clock.now(),
        )
    )


@router.delete("/v1/channels/audiences/{audience_id}", status_code=204)
def delete_audience(request: Request, audience_id: str, _key: Annotated[Principal, _write]) -> None:
    AudienceStore(runtime_of(request).engine).delete(audience_id)


@router.post("/v1/channels/audiences/sync", response_model=SyncOut)
def sync_audiences(request: Request, _key: Annotated[Principal, _write]) -> SyncOut:
    """Enqueue uploads for membership changes now (the workers also do it every few
    seconds)."""
    runtime = runtime_of(request)
    return SyncOut(enqueued=AudienceStore(runtime.engine).sync(now=runtime.clock.now()))


# -- delivery counts ------------------------------------------------------------------


class NodeCountsOut(BaseModel):
    node_id: str
    sent: int
    resent: int = Field(description="Of sent, messages in doubt after a crash and sent again.")
    pending: int
    dead: int
    failed_attempts: int
    skipped: dict[str, int] = Field(description="Skipped messages by reason.")


@router.get("/v1/channels/deliveries", response_model=list[NodeCountsOut])
def get_delivery_counts(
    request: Request,
    journey_id: str,
    _key: Annotated[Principal, _read],
    version: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
) -> list[NodeCountsOut]:
    """What became of a journey's messages, per node."""
    counts = delivery_counts(runtime_of(request).engine, journey_id, version=version)
    return [
        NodeCountsOut(
            node_id=node,
            sent=c.sent,
            resent=c.resent,
            pending=c.pending,
            dead=c.dead,
            failed_attempts=c.failed_attempts,
            skipped=c.skipped,
        )
        for node, c in sorted(counts.items())
    ]


# -- unsubscribe (recipients: the signed token is the credential) ---------------------------

_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title></head>
<body><main><h1>{title}</h1>{body}</main></body></html>"""


def _claims(runtime: Runtime, token: str) -> str:
    claims = _box(runtime).verify(token)
    profile_id = claims.get("p")
    if not profile_id or claims.get("c") != "email":
        raise InvalidInput("the token is not an unsubscribe token", field="token")
    return profile_id


@router.get("/v1/unsubscribe/{token}", response_class=HTMLResponse)
def unsubscribe_page(request: Request, token: str) -> HTMLResponse:
    """A page with one button: a GET changes nothing (mail scanners follow links)."""
    _claims(runtime_of(request), token)
    form = (
        f'<form method="post" action="/v1/unsubscribe/{html.escape(token)}">'
        '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
        '<button type="submit">Unsubscribe from these e-mails</button></form>'
    )
    return HTMLResponse(_PAGE.format(title="Unsubscribe", body=form))


@router.post("/v1/unsubscribe/{token}", response_class=HTMLResponse)
def unsubscribe(request: Request, token: str) -> HTMLResponse:
    """RFC 8058 one-click: the mail client POSTs ``List-Unsubscribe=One-Click``. The
    opt-out is recorded in the consent ledger (e-mail denied, source ``unsubscribe``)."""
    runtime = runtime_of(request)
    profile_id = _claims(runtime, token)
    live = runtime.profiles.resolve(profile_id) or profile_id
    ConsentLedger(runtime.engine, clock=runtime.clock).set(
        live, {"email": False}, actor="unsubscribe", source="unsubscribe"
    )
    return HTMLResponse(
        _PAGE.format(title="Unsubscribed", body="<p>You will get no more of these e-mails.</p>")
    )
