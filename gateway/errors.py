"""The one exception tree of AI Server; each class carries the HTTP status it maps to.

    GatewayError                500  base; never raised bare
    ├── BadRequest              400  the request is malformed or out of range
    ├── MissingComponent        503  a binary or model is not installed (names the fix)
    └── BackendUnavailable      503  the backend cannot serve now; carries retry_after

Routes never catch these: one handler renders ``{"error": {"type", "message"}}``.
"""

from __future__ import annotations


class GatewayError(Exception):
    status: int = 500
    type: str = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(GatewayError):
    status = 400
    type = "bad_request"


class MissingComponent(GatewayError):
    status = 503
    type = "missing_component"


class BackendUnavailable(GatewayError):
    status = 503
    type = "backend_unavailable"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after
