"""One error hierarchy; the API layer maps it to RFC 9457 problem+json."""

from __future__ import annotations

__all__ = [
    "AuthError",
    "Blocked",
    "ConflictError",
    "ForbiddenError",
    "InvalidInput",
    "NotFound",
    "OffsetConflict",
    "PayloadTooLarge",
    "RateLimited",
    "RemarketError",
    "StorageError",
    "TooManyAttempts",
]


class RemarketError(Exception):
    """Root of every error remarket raises on purpose.

    ``code`` is stable (clients may switch on it); ``status`` is the HTTP status the
    API answers with; ``field`` names the input at fault, where there is one.
    """

    code = "remarket_error"
    status = 500
    title = "Internal error"

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


class InvalidInput(RemarketError):
    code = "invalid_input"
    status = 400
    title = "Invalid input"


class PayloadTooLarge(RemarketError):
    code = "payload_too_large"
    status = 413
    title = "Payload too large"


class AuthError(RemarketError):
    code = "unauthorized"
    status = 401
    title = "Unauthorized"

    def __init__(self, detail: str, *, field: str | None = None, scheme: str = "Basic") -> None:
        super().__init__(detail, field=field)
        # The WWW-Authenticate challenge: Basic for write keys, Bearer for the API (a
        # Basic challenge would make a browser pop up its own login dialog).
        self.scheme = scheme


class ForbiddenError(RemarketError):
    code = "forbidden"
    status = 403
    title = "Forbidden"


class NotFound(RemarketError):
    code = "not_found"
    status = 404
    title = "Not found"


class ConflictError(RemarketError):
    code = "conflict"
    status = 409
    title = "Conflict"


class OffsetConflict(ConflictError):
    """Another worker advanced a consumer's offset first; re-read it and go on."""

    code = "offset_conflict"


class StorageError(RemarketError):
    code = "storage_error"
    status = 503
    title = "Storage unavailable"


class Blocked(ForbiddenError):
    """The client's address is on a block list."""

    code = "blocked"


class RateLimited(RemarketError):
    """Too many requests from one write key or IP; ``retry_after`` is in whole seconds."""

    code = "rate_limited"
    status = 429
    title = "Too many requests"

    def __init__(self, detail: str, *, retry_after: int, field: str | None = None) -> None:
        super().__init__(detail, field=field)
        self.retry_after = retry_after


class TooManyAttempts(RateLimited):
    """Too many failed attempts lately (logins); ``retry_after`` says when to try again."""

    code = "too_many_attempts"
    title = "Too many attempts"
