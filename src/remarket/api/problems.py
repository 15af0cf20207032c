"""RFC 9457 problem+json responses for every error the API returns."""

from __future__ import annotations

from typing import Any

import msgspec
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from remarket.errors import RateLimited, RemarketError
from remarket.schema.segment import DefinitionError

__all__ = ["PROBLEM_JSON", "install_problem_handlers", "problem"]

PROBLEM_JSON = "application/problem+json"


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    code: str,
    instance: str | None = None,
    field: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    """A problem+json response; ``field`` names the input at fault."""
    body: dict[str, Any] = {
        "type": f"urn:remarket:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }
    if instance is not None:
        body["instance"] = instance
    if field is not None:
        body["field"] = field
    body.update(extra)
    return Response(
        msgspec.json.encode(body), status_code=status, media_type=PROBLEM_JSON, headers=headers
    )


def _remarket_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RemarketError)
    headers = {"WWW-Authenticate": 'Basic realm="remarket"'} if exc.status == 401 else None
    extra: dict[str, Any] = {}
    if isinstance(exc, RateLimited):
        headers = {"Retry-After": str(exc.retry_after)}
        extra["retry_after"] = exc.retry_after
    if isinstance(exc, DefinitionError):
        # Every rule broken, each with the path of the node at fault.
        extra["errors"] = [{"field": path, "detail": message} for path, message in exc.errors]
    return problem(
        exc.status,
        exc.title,
        exc.detail,
        code=exc.code,
        instance=request.url.path,
        field=exc.field,
        headers=headers,
        **extra,
    )


def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"field": ".".join(str(p) for p in e["loc"][1:]) or str(e["loc"][0]), "detail": e["msg"]}
        for e in exc.errors()
    ]
    first = errors[0] if errors else {"field": None, "detail": "invalid request"}
    return problem(
        422 if request.method != "GET" else 400,
        "Invalid request",
        str(first["detail"]),
        code="invalid_request",
        instance=request.url.path,
        field=first["field"],
        errors=errors,
    )


def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    return problem(
        exc.status_code,
        str(exc.detail),
        str(exc.detail),
        code=f"http_{exc.status_code}",
        instance=request.url.path,
        headers=dict(exc.headers) if exc.headers else None,
    )


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RemarketError, _remarket_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
