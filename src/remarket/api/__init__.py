"""The HTTP API (FastAPI): collection, profiles, admin, health and metrics."""

from __future__ import annotations

from remarket.api.app import create_app
from remarket.api.keys import ROLES, SCOPES, ApiKey, ApiKeyStore
from remarket.api.runtime import Runtime, WorkersMode

__all__ = ["ROLES", "SCOPES", "ApiKey", "ApiKeyStore", "Runtime", "WorkersMode", "create_app"]
