"""The Segment-compatible collection API: /v1/track, /v1/identify, ..., /v1/batch."""

from __future__ import annotations

from typing import Any, Final

import msgspec
from fastapi import APIRouter, Request
from starlette.responses import Response

from remarket.api.auth import runtime_of, source_for
from remarket.api.body import read_body
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
    403: {"description": "An API key or session instead of a write key."},
    413: {"description": "Body over max_request_bytes or event over max_event_bytes."},
    415: {"description": "Content-Encoding other than gzip."},
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
    return Response(_ENCODER.encode(body), media_type="application/json")


def _body_write_key(body: bytes) -> str | None:
    if b"writeKey" not in body:
        return None
    try:
        value = _WRITE_KEY.decode(body).get("writeKey")
    except msgspec.MsgspecError:
        return None
    return value if isinstance(value, str) else None


async def _single(request: Request, event_type: str) -> Response:
    runtime = runtime_of(request)
    body = await read_body(request, runtime.settings.max_request_bytes)
    header = request.headers.get("authorization")
    source = source_for(runtime, header, None if header else _body_write_key(body))
    return _reply(await runtime.collector.ingest_single(source, body, event_type))


async def _batch(request: Request) -> Response:
    runtime = runtime_of(request)
    body = await read_body(request, runtime.settings.max_request_bytes)
    header = request.headers.get("authorization")
    if header:
        source = source_for(runtime, header, None)
        batch = parse_batch(body)
    else:
        batch = parse_batch(body)
        source = source_for(runtime, None, batch.write_key)
    return _reply(await runtime.collector.ingest_batch(source, batch))


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
    return await _batch(request)
