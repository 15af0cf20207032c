"""The HTTP API (FastAPI): collection, profiles, admin, health and metrics."""

from __future__ import annotations

from remarket.api.app import create_app
from remarket.api.keys import ROLES, SCOPES, ApiKey, ApiKeyStore
from remarket.api.runtime import Runtime

__all__ = ["ROLES", "SCOPES", "ApiKey", "ApiKeyStore", "Runtime", "create_app"]
