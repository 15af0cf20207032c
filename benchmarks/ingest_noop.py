"""The ingest benchmark's ceiling: a FastAPI app whose /v1/batch parses and type-checks the
body exactly as collect does (msgspec, the same structs) and answers without storing it.

Served like `remarket serve` (one uvicorn process, uvloop + httptools, no access log):

    .venv/bin/python benchmarks/ingest_noop.py --port 8001
"""

from __future__ import annotations

import argparse
from typing import Final

import msgspec
import uvicorn
from fastapi import FastAPI, Request
from starlette.responses import Response

from remarket.collect import parse_batch
from remarket.schema.events import Message

_ENCODER: Final = msgspec.json.Encoder()
# Built once, as collect's Validate stage does: `msgspec.json.decode(raw, type=Message)`
# rebuilds the union's decoder on every call and is ~10x slower, which would flatter us.
_MESSAGE: Final = msgspec.json.Decoder(Message)

app = FastAPI(title="remarket ingest ceiling")


@app.post("/v1/batch")
async def batch(request: Request) -> Response:
    body = await request.body()
    parsed = parse_batch(body)
    events = [_MESSAGE.decode(raw) for raw in parsed.batch]
    reply = {"success": True, "accepted": len(events), "duplicates": 0, "quarantined": 0}
    return Response(_ENCODER.encode(reply), media_type="application/json")


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
