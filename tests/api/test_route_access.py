"""Every route of the app refuses a caller without credentials (401) and one whose
credential lacks the route's scope (403); the scope is read from the route's own
``require(...)`` dependency, so a route that forgets it fails here. Generic on purpose:
it walks ``app.routes``, so routers added later are covered without editing it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts

from remarket.api import ROLES
from remarket.api.auth import SESSION_COOKIE, Require
from remarket.config import Settings
from tests.api.access import bearer, cheap_settings, session_token
from tests.api.harness import Server

# Routes anyone may call, each with the reason. Adding one here is a decision to review.
PUBLIC: dict[str, str] = {
    "/healthz": "liveness for load balancers; holds log offsets and lag, no data",
    "/openapi.json": "the API's own description",
    "/docs": "Swagger UI over /openapi.json",
    "/docs/oauth2-redirect": "part of Swagger UI",
    "/redoc": "ReDoc over /openapi.json",
    "/v1/auth/login": "where a console user gets credentials (rate-limited by lockout)",
    "/v1/unsubscribe/{token}": "RFC 8058 one-click unsubscribe from an e-mail: the signed "
    "token is the credential (a mail client cannot send a key)",
}
# Routes that take a source's write key and nothing else (the Segment collection API).
WRITE_KEY_ONLY_TAG = "collect"
EMPTY_BATCH = {"batch": []}


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    tags: tuple[str, ...]
    requires: tuple[Require, ...]

    @property
    def url(self) -> str:
        return re.sub(r"\{[^}]+\}", "x", self.path)

    @property
    def scope(self) -> str | None:
        scopes = {r.scope for r in self.requires if r.scope is not None}
        assert len(scopes) <= 1, f"{self} declares several scopes: {scopes}"
        return next(iter(scopes), None)

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def _requires(dependant: Dependant) -> Iterator[Require]:
    for dependency in dependant.dependencies:
        if isinstance(dependency.call, Require):
            yield dependency.call
        yield from _requires(dependency)


def endpoints(server: Server) -> list[Endpoint]:
    """Every method of every route the app serves (included routers walked into)."""
    found = []
    for context in iter_route_contexts(server.client.app.routes):  # type: ignore[attr-defined]
        path = context.path
        assert path is not None, f"a route without a path: {context.original_route!r}"
        methods = context.methods
        if not isinstance(context.original_route, APIRoute) or methods is None:
            # Mounts, plain Starlette routes: nothing guards them but this list.
            assert path in PUBLIC, f"{path} is not a FastAPI route with require(); allow-list it"
            continue
        requires = tuple(_requires(context.dependant))
        tags = tuple(str(t) for t in context.tags)
        for method in sorted(methods - {"HEAD"}):
            found.append(Endpoint(method, path, tags, requires))
    return found


def guarded(server: Server) -> list[Endpoint]:
    return [
        e for e in endpoints(server) if e.path not in PUBLIC and WRITE_KEY_ONLY_TAG not in e.tags
    ]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return cheap_settings(tmp_path / "var")


def test_every_route_is_public_by_decision_ingest_only_or_guarded(server: Server) -> None:
    every = endpoints(server)
    assert len(every) >= 30
    for endpoint in guarded(server):
        assert endpoint.requires, f"{endpoint} has no Depends(require(...)): anyone may call it"


def test_every_guarded_route_refuses_no_credentials_and_write_keys(server: Server) -> None:
    for endpoint in guarded(server):
        nobody = server.client.request(endpoint.method, endpoint.url)
        assert nobody.status_code == 401, endpoint
        assert nobody.headers["content-type"] == "application/problem+json"
        assert nobody.headers["www-authenticate"].startswith("Bearer"), endpoint
        write_key = server.client.request(
            endpoint.method, endpoint.url, auth=(server.write_key, "")
        )
        assert write_key.status_code == 403, endpoint
        assert write_key.json()["field"] == "Authorization"
        for junk in ("rk_unknown", "rs_unknown"):
            unknown = server.client.request(endpoint.method, endpoint.url, headers=bearer(junk))
            assert unknown.status_code == 401, (endpoint, junk)


def test_every_guarded_route_refuses_keys_and_sessions_of_roles_without_its_scope(
    server: Server,
) -> None:
    keys = {role: server.runtime.keys.create(role, role)[1] for role in ROLES}
    sessions = {role: session_token(server, role) for role in ROLES}
    refused = 0
    for endpoint in guarded(server):
        scope = endpoint.scope
        if scope is None:  # open to every key and session (e.g. /v1/auth/me)
            continue
        for role in ROLES:
            if scope in ROLES[role]:
                continue
            by_key = server.client.request(
                endpoint.method, endpoint.url, headers=bearer(keys[role])
            )
            assert by_key.status_code == 403, (endpoint, role, "api key")
            assert scope in by_key.json()["detail"]
            server.client.cookies.set(SESSION_COOKIE, sessions[role])
            by_cookie = server.client.request(endpoint.method, endpoint.url)
            server.client.cookies.clear()
            assert by_cookie.status_code == 403, (endpoint, role, "session cookie")
            refused += 1
    assert refused >= 20


def test_every_guarded_route_admits_a_role_with_its_scope(server: Server) -> None:
    """The other side: the right credential gets past authorization (the request may
    still be invalid or name something missing)."""
    for endpoint in guarded(server):
        # A fresh session each time: one of these routes is logout.
        token = session_token(server, "admin")
        reply = server.client.request(endpoint.method, endpoint.url, headers=bearer(token))
        assert reply.status_code not in (401, 403), (endpoint, reply.text)


def test_collection_routes_take_write_keys_only(server: Server) -> None:
    collection = [e for e in endpoints(server) if WRITE_KEY_ONLY_TAG in e.tags]
    assert len(collection) >= 8
    api_key = server.runtime.keys.create("ops", "admin")[1]
    session = session_token(server, "admin")
    for endpoint in collection:
        nobody = server.client.request(endpoint.method, endpoint.url, json=EMPTY_BATCH)
        assert nobody.status_code == 401, endpoint
        for token in (api_key, session):
            reply = server.client.request(
                endpoint.method, endpoint.url, json=EMPTY_BATCH, headers=bearer(token)
            )
            assert reply.status_code == 403, (endpoint, reply.text)
        with_write_key = server.client.request(
            endpoint.method, endpoint.url, json=EMPTY_BATCH, auth=(server.write_key, "")
        )
        assert with_write_key.status_code not in (401, 403), endpoint


def test_a_route_without_require_would_be_caught(server: Server) -> None:
    """The check above is not vacuous: a new unguarded route shows up as unguarded."""
    app = server.client.app  # type: ignore[attr-defined]

    def leaky() -> dict[str, str]:
        return {}

    app.add_api_route("/v1/leaky", leaky, methods=["GET"])
    leaks = [e for e in guarded(server) if not e.requires]
    assert [str(e) for e in leaks] == ["GET /v1/leaky"]


def test_an_unknown_scope_is_refused_when_the_route_is_declared() -> None:
    with pytest.raises(ValueError, match="unknown scope"):
        Require("profiles:reed")


def test_the_openapi_document_declares_these_refusals(server: Server) -> None:
    spec = server.client.get("/openapi.json").json()
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for endpoint in guarded(server):
        operation = spec["paths"][endpoint.path][endpoint.method.lower()]
        assert {"HTTPBearer": []} in operation["security"], endpoint
        for status in ("401", "403", "default"):
            assert operation["responses"][status]["content"] == problem, (endpoint, status)
