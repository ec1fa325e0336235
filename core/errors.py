"""The one exception tree of AI Server, shared by every layer.

    AiServerError               base; never raised bare
    ├── BadRequest              malformed or out-of-range input (names the field)
    │   └── ContextExceeded     the prompt does not fit the model's context
    ├── NotFound
    │   └── ModelNotFound       no model has the requested name or alias
    ├── PayloadTooLarge
    ├── UnsupportedMedia
    ├── Unauthorized            no or an unknown API key
    ├── Forbidden               a valid key without the right (config changes)
    ├── Conflict                not possible in the current mode (load in cli mode)
    ├── Overloaded              the queue is full; has retry_after
    ├── StateError              the state directory cannot be written (names the cause)
    ├── UpstreamError           llama-server or a llama.cpp process failed (its message)
    ├── BackendUnavailable      cannot serve now (restarting, failed); has retry_after
    ├── ModelExceedsBudget      the model can never fit the memory budget; no retry
    ├── MissingComponent        a binary or model is not installed (names the fix)
    └── BackendTimeout          the backend did not answer in time

The layers below the gateway raise these and know nothing of HTTP: `gateway.errors` maps each
class to its status, and each dialect renders it in its own shape. `type` is the error's kind
in our vocabulary (OpenAI's `type`), `code` a more precise one where there is one, `param` the
request field at fault.
"""

from __future__ import annotations


class AiServerError(Exception):
    type: str = "internal_error"
    code: str | None = None
    param: str | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if param is not None:
            self.param = param


class BadRequest(AiServerError):
    type = "invalid_request"


class ContextExceeded(BadRequest):
    """In the words Anthropic's API uses (Claude Code recognises them and offers to compact
    the conversation), with OpenAI's code (Codex's cue to compact)."""

    code = "context_length_exceeded"

    def __init__(self, tokens: int, limit: int) -> None:
        super().__init__(f"prompt is too long: {tokens} tokens > {limit} maximum")
        self.tokens, self.limit = tokens, limit


class NotFound(AiServerError):
    type = "not_found"


class ModelNotFound(NotFound):
    type = "invalid_request"
    code = "model_not_found"
    param = "model"


class PayloadTooLarge(AiServerError):
    type = "payload_too_large"


class UnsupportedMedia(AiServerError):
    type = "unsupported_media_type"


class Unauthorized(AiServerError):
    type = "unauthorized"


class Forbidden(AiServerError):
    type = "forbidden"


class Conflict(AiServerError):
    type = "conflict"


class Overloaded(AiServerError):
    type = "overloaded"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StateError(AiServerError):
    type = "state_error"


class UpstreamError(AiServerError):
    type = "upstream_error"


class BackendUnavailable(AiServerError):
    type = "backend_unavailable"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ModelExceedsBudget(AiServerError):
    """Not a passing state: retrying cannot help, so no Retry-After."""

    type = "backend_unavailable"
    code = "model_exceeds_budget"


class MissingComponent(AiServerError):
    type = "missing_component"


class BackendTimeout(AiServerError):
    type = "timeout"
