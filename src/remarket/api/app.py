"""The FastAPI application: collection, read and admin API, OpenAPI at /docs."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from remarket import __version__
from remarket.api import (
    accounts,
    admin,
    channels,
    collect,
    erasure,
    guard,
    health,
    journeys,
    privacy,
    profiles,
    retention,
    segments,
)
from remarket.api.models import Ingested
from remarket.api.problems import document_problems, install_problem_handlers
from remarket.api.runtime import Runtime, WorkersMode
from remarket.clock import Clock
from remarket.config import Settings
from remarket.metrics import REQUEST_LATENCY
from remarket.schema import events

__all__ = ["create_app"]


class _Timing:
    """Records every request's latency by route template and status class."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            REQUEST_LATENCY.labels(path, f"{status // 100}xx").observe(time.perf_counter() - start)


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        types = [getattr(events, name) for name in collect.COLLECT_SCHEMAS]
        _, components = msgspec.json.schema_components(
            types, ref_template="#/components/schemas/{name}"
        )
        components["Ingested"] = Ingested.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
        schema.setdefault("components", {}).setdefault("schemas", {}).update(components)
        document_problems(schema)
        app.openapi_schema = schema
    return app.openapi_schema


def create_app(
    settings: Settings, *, clock: Clock | None = None, workers: WorkersMode = "thread"
) -> FastAPI:
    """The server: opens the stores on start-up (migrating the state store) and starts
    the workers (see :data:`~remarket.api.runtime.WorkersMode`)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await Runtime.start(settings, clock=clock, workers=workers)
        app.state.runtime = runtime
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title="remarket",
        version=__version__,
        summary="Self-hosted, privacy-first remarketing engine",
        lifespan=lifespan,
    )
    install_problem_handlers(app)
    app.include_router(collect.router)
    app.include_router(profiles.router)
    app.include_router(segments.router)
    app.include_router(journeys.router)
    app.include_router(privacy.router)
    app.include_router(channels.router)
    app.include_router(erasure.router)
    app.include_router(admin.router)
    app.include_router(guard.router)
    app.include_router(retention.router)
    app.include_router(health.router)
    app.include_router(accounts.router)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", "Content-Encoding"],
        max_age=86_400,
    )
    app.add_middleware(_Timing)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app
