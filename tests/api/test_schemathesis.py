"""schemathesis against the app's own OpenAPI document, over every operation,
authenticated: no answer is a server error, and every answer is one the document
declares (status, content type, body schema)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from remarket.api import ApiKeyStore, create_app
from remarket.collect import SourceRegistry
from remarket.config import Settings
from remarket.storage.state import connect_state, upgrade_state
from tests.api.access import cheap_settings

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]

# The document only: building the app touches no store (they open on start-up). Loaded
# from a dict, not via the lazy fixture loader, which pytest 9.2 no longer supports.
schema = schemathesis.openapi.from_dict(
    create_app(Settings(data_dir=Path("unused")), workers=False).openapi()
)


@pytest.fixture
def app_settings(tmp_path: Path) -> Settings:
    return cheap_settings(tmp_path / "var")


@pytest.fixture
def app(app_settings: Settings) -> FastAPI:
    # No workers: the operations are under test, and the runs stay short. schemathesis
    # starts the app on its first request and stops it after the test.
    return create_app(app_settings, workers=False)


@pytest.fixture
def headers(app_settings: Settings) -> dict[str, dict[str, str]]:
    """What a legitimate caller sends, per kind of route: a write key or an admin key,
    created in the state store the app will open."""
    app_settings.data_dir.mkdir(parents=True)
    engine = connect_state(app_settings.resolved_database_url())
    try:
        upgrade_state(engine)
        _, write_key = SourceRegistry(engine).create("web")
        _, admin_key = ApiKeyStore(engine).create("schemathesis", "admin")
    finally:
        engine.dispose()
    basic = base64.b64encode(f"{write_key}:".encode()).decode()
    return {
        "collect": {"Authorization": f"Basic {basic}"},
        "api": {"Authorization": f"Bearer {admin_key}"},
    }


@pytest.mark.slow
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@schema.parametrize()
def test_every_operation_answers_as_documented(
    case: Case, app: FastAPI, headers: dict[str, dict[str, str]]
) -> None:
    kind = "collect" if "collect" in (case.operation.tags or ()) else "api"
    case.call_and_validate(app=app, headers=headers[kind], checks=CHECKS)
