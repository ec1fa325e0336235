"""The HTTP status of each error of `core.errors`: the one place the tree meets HTTP.

Every dialect answers an error with this status (a dialect with statuses of its own maps them
in its own module) and renders the body in its own shape."""

from __future__ import annotations

import math

from core.errors import (
    AiServerError,
    BackendTimeout,
    BackendUnavailable,
    BadRequest,
    Conflict,
    Forbidden,
    MissingComponent,
    ModelExceedsBudget,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    StateError,
    Unauthorized,
    UnsupportedMedia,
    UpstreamError,
)

STATUS: dict[type[AiServerError], int] = {
    BadRequest: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    PayloadTooLarge: 413,
    UnsupportedMedia: 415,
    Overloaded: 429,
    StateError: 500,
    UpstreamError: 502,
    BackendUnavailable: 503,
    ModelExceedsBudget: 503,
    MissingComponent: 503,
    BackendTimeout: 504,
}


def status_of(exc: AiServerError) -> int:
    """The status of `exc`'s class or of its nearest ancestor in STATUS; 500 for the base."""
    for cls in type(exc).__mro__:
        if (status := STATUS.get(cls)) is not None:
            return status
    return 500


def headers_of(exc: AiServerError) -> dict[str, str] | None:
    """Retry-After for a passing state, and the scheme a 401 expects."""
    if isinstance(exc, BackendUnavailable | Overloaded):
        return {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    if isinstance(exc, Unauthorized):
        return {"WWW-Authenticate": "Bearer"}
    return None
