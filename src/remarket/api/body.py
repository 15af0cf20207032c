"""Read a request body within the size limit, gunzipping it if the client compressed it."""

from __future__ import annotations

import zlib

from starlette.requests import Request

from remarket.errors import InvalidInput, PayloadTooLarge, RemarketError

__all__ = ["read_body"]


class UnsupportedEncoding(RemarketError):
    code = "unsupported_encoding"
    status = 415
    title = "Unsupported content encoding"


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"request body exceeds max_request_bytes ({limit} bytes)", field="max_request_bytes"
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The body, decompressed; refuses more than ``limit`` bytes before or after gunzip."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", ""):
        raise UnsupportedEncoding(
            f"Content-Encoding {encoding!r} is not supported; use gzip or none",
            field="Content-Encoding",
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    body = b"".join(chunks)
    if encoding != "gzip":
        return body
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"gzip body is corrupt: {exc}", field="body") from exc
    if len(data) > limit or inflater.unconsumed_tail:
        raise _too_large(limit)
    if not inflater.eof:
        raise InvalidInput("gzip body is truncated", field="body")
    if inflater.unused_data:
        raise InvalidInput(
            "gzip body has data after its end (one gzip member per request)", field="body"
        )
    return data
