"""The Segment-compatible collection API: /v1/track, /v1/identify, ..., /v1/batch."""

from __future__ import annotations

from typing import Any, Final

import msgspec
from fastapi import APIRouter, Request
from starlette.responses import Response

from remarket.api.auth import runtime_of, source_for
from remarket.api.body import read_body
from remarket.api.runtime import Runtime
from remarket.collect import IngestResult, parse_batch
from remarket.schema.events import EVENT_TYPES

__all__ = ["COLLECT_SCHEMAS", "router"]

router = APIRouter(tags=["collect"])

_ENCODER: Final = msgspec.json.Encoder()
_WRITE_KEY: Final = msgspec.json.Decoder(dict[str, Any])

COLLECT_SCHEMAS: Final = ("Track", "Identify", "Page", "Screen", "Group", "Alias", "Batch")
_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    200: {
        "description": "Accepted: every valid event is durably in the log.",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Ingested"}}},
    },
    400: {"description": "Malformed JSON or an invalid event (problem+json names the field)."},
    401: {"description": "Missing or unknown write key."},
    403: {
        "description": "The client's IP is on a block list, or an API key or session was "
        "sent instead of a write key."
    },
    413: {"description": "Body over max_request_bytes or event over max_event_bytes."},
    415: {"description": "Content-Encoding other than gzip."},
    429: {"description": "Rate limit of the write key or the IP; see Retry-After."},
    503: {"description": "The event log is unavailable; nothing was accepted, retry."},
}


def _body_doc(schema: str) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{schema}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def _reply(result: IngestResult) -> Response:
    body = {
        "success": True,
        "accepted": result.accepted,
        "duplicates": result.duplicates,
        "quarantined": len(result.rejected),
        "errors": [
            {"index": r.index, "reason": r.reason, "field": r.field, "detail": r.detail}
            for r in result.rejected
        ],
    }
    if result.dropped:  # only then: the reply stays Segment's shape otherwise
        body["dropped"] = result.dropped
    return Response(_ENCODER.encode(body), media_type="application/json")


def _body_write_key(body: bytes) -> str | None:
    if b"writeKey" not in body:
        return None
    try:
        value = _WRITE_KEY.decode(body).get("writeKey")
    except msgspec.MsgspecError:
        return None
    return value if isinstance(value, str) else None


def _client(request: Request, runtime: Runtime) -> str | None:
    """The client's IP, screened against the block lists before the body is read."""
    peer = request.client.host if request.client is not None else None
    ip = runtime.protection.guard.client_ip(peer, request.headers.get("x-forwarded-for"))
    runtime.protection.guard.screen(ip)
    return ip


async def _single(request: Request, event_type: str) -> Response:
    runtime = runtime_of(request)
    ip = _client(request, runtime)
    body = await read_body(request, runtime.settings.max_request_bytes)
    header = request.headers.get("authorization")
    source = source_for(runtime, header, None if header else _body_write_key(body))
    runtime.protection.guard.admit(source.id, ip, 1)
    agent = request.headers.get("user-agent")
    return _reply(
        await runtime.collector.ingest_single(source, body, event_type, ip=ip, user_agent=agent)
    )


async def _batch(request: Request, *, trusted: bool = False) -> Response:
    runtime = runtime_of(request)
    ip = _client(request, runtime)
    body = await read_body(request, runtime.settings.max_request_bytes)
    header = request.headers.get("authorization")
    if header:
        source = source_for(runtime, header, None)
        batch = parse_batch(body)
    else:
        batch = parse_batch(body)
        source = source_for(runtime, None, batch.write_key)
    runtime.protection.guard.admit(source.id, ip, len(batch.batch))
    agent = request.headers.get("user-agent")
    return _reply(
        await runtime.collector.ingest_batch(
            source, batch, ip=ip, user_agent=agent, trusted=trusted
        )
    )


def _add_single(event_type: str) -> None:
    async def endpoint(request: Request) -> Response:
        return await _single(request, event_type)

    endpoint.__name__ = f"collect_{event_type}"
    router.add_api_route(
        f"/v1/{event_type}",
        endpoint,
        methods=["POST"],
        summary=f"Send one {event_type} event (Segment spec)",
        responses=_RESPONSES,
        openapi_extra=_body_doc(event_type.title()),
    )


for _type in EVENT_TYPES:
    _add_single(_type)


@router.post(
    "/v1/batch",
    summary="Send up to 500 KB of events of any type (Segment spec)",
    responses=_RESPONSES,
    openapi_extra=_body_doc("Batch"),
)
async def collect_batch(request: Request) -> Response:
    return await _batch(request)


@router.post(
    "/v1/import",
    summary="Import historical events (same body as /v1/batch)",
    responses=_RESPONSES,
    openapi_extra=_body_doc("Batch"),
)
async def collect_import(request: Request) -> Response:
    # Historical events: rate limits apply, the velocity check does not.
    return await _batch(request, trusted=True)
