"""The one exception tree of AI Server; each class carries the HTTP status it maps to.

    GatewayError                500  base; never raised bare
    ├── BadRequest              400  malformed or out-of-range input (names the field)
    ├── NotFound                404
    │   └── ModelNotFound       404  no model has the requested name or alias
    ├── PayloadTooLarge         413
    ├── UnsupportedMedia        415
    ├── Unauthorized            401  no or an unknown API key
    ├── Forbidden               403  a valid key without the right (config changes)
    ├── Conflict                409  not possible in the current mode (load in cli mode)
    ├── Overloaded              429  the queue is full; has retry_after
    ├── StateError              500  the state directory cannot be written (names the cause)
    ├── UpstreamError           502  llama-server or a llama.cpp process failed (its message)
    ├── BackendUnavailable      503  cannot serve now (restarting, failed); has retry_after
    ├── ModelExceedsBudget      503  the model can never fit the memory budget; no retry
    ├── MissingComponent        503  a binary or model is not installed (names the fix)
    └── BackendTimeout          504  the backend did not answer in time

Routes never catch these: `gateway.error_handlers` renders every one as
``{"error": {"type", "code", "message", "param"?}}`` with its status (and ``Retry-After``
where known). `code` is the type unless the error has a more precise one; `param` names the
request field at fault, as OpenAI does.
"""

from __future__ import annotations


class GatewayError(Exception):
    status: int = 500
    type: str = "internal_error"
    code: str | None = None
    param: str | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if param is not None:
            self.param = param


class BadRequest(GatewayError):
    status = 400
    type = "invalid_request"


class NotFound(GatewayError):
    status = 404
    type = "not_found"


class ModelNotFound(NotFound):
    type = "invalid_request"
    code = "model_not_found"
    param = "model"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "payload_too_large"


class UnsupportedMedia(GatewayError):
    status = 415
    type = "unsupported_media_type"


class Unauthorized(GatewayError):
    status = 401
    type = "unauthorized"


class Forbidden(GatewayError):
    status = 403
    type = "forbidden"


class Conflict(GatewayError):
    status = 409
    type = "conflict"


class Overloaded(GatewayError):
    status = 429
    type = "overloaded"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StateError(GatewayError):
    status = 500
    type = "state_error"


class UpstreamError(GatewayError):
    status = 502
    type = "upstream_error"


class BackendUnavailable(GatewayError):
    status = 503
    type = "backend_unavailable"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ModelExceedsBudget(GatewayError):
    """Not a passing state: retrying cannot help, so no Retry-After."""

    status = 503
    type = "backend_unavailable"
    code = "model_exceeds_budget"


class MissingComponent(GatewayError):
    status = 503
    type = "missing_component"


class BackendTimeout(GatewayError):
    status = 504
    type = "timeout"
