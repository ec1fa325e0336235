"""Every error becomes a JSON body here, and only here."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import ExceptionHandler

from core.errors import AiServerError
from gateway.dialects import anthropic
from gateway.errors import headers_of, status_of

log = logging.getLogger("ai_server.gateway")


def error_response(
    status: int,
    type_: str,
    message: str,
    headers: dict[str, str] | None = None,
    *,
    code: str | None = None,
    param: str | None = None,
) -> JSONResponse:
    # `code` too: the OpenAI envelope, so /v1 clients show our messages.
    error = {"type": type_, "code": code or type_, "message": message}
    body = {"error": error | {"param": param} if param else error}
    return JSONResponse(body, status, headers)


# Routes whose clients read another dialect's errors (its own shape, from the same statuses).
ANTHROPIC = "/v1/messages"


def render(exc: AiServerError, path: str = "") -> Response:
    """`exc` as its status, headers and JSON envelope: for Starlette's handlers below, and for
    a pure ASGI middleware that runs outside them (auth)."""
    if path.startswith(ANTHROPIC):
        return anthropic.render(exc)
    return error_response(
        status_of(exc), exc.type, exc.message, headers_of(exc), code=exc.code, param=exc.param
    )


async def gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AiServerError)
    return render(exc, request.url.path)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if request.url.path.startswith(ANTHROPIC):
        return anthropic.error_response(exc.status_code, exc.detail, dict(exc.headers or {}))
    return error_response(exc.status_code, "http_error", exc.detail, dict(exc.headers or {}))


async def client_gone(request: Request, exc: Exception) -> Response:
    # The client left before its body was read, or missed the body deadline (gateway.protocol
    # answered it 408): nothing can reach it. Not an error of ours, so no traceback; 499,
    # nginx's "client closed request", is what the access log and the metrics record.
    return Response(status_code=499)


async def unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("gateway.unhandled_error path=%s", request.url.path, exc_info=exc)
    if request.url.path.startswith(ANTHROPIC):
        return anthropic.error_response(500, "internal error; see the server log")
    return error_response(500, "internal_error", "internal error; see the server log")


EXCEPTION_HANDLERS: dict[type[Exception] | int, ExceptionHandler] = {
    AiServerError: gateway_error,
    HTTPException: http_error,
    ClientDisconnect: client_gone,
    Exception: unexpected_error,
}
