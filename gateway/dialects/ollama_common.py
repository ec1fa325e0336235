"""What every route of the Ollama listener shares: its error shape, its model names and its
durations (`keep_alive`).

Errors are `{"error": "text"}` with the status of `gateway.errors.status_of`, as Ollama's
server writes them (`c.JSON(status, gin.H{"error": ...})` in its server/routes.go). A name
is `model:tag`; a name without a tag means `:latest`, and every model here is `NAME:latest`.
A duration is a number of seconds or a Go duration string ("5m", "1h30m", "300ms"); a
negative one means for ever (ollama's api/types.go, `Duration.UnmarshalJSON`).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import ExceptionHandler

from backends.catalog import Catalog, ModelDef
from backends.gguf_meta import NotGguf, read_meta
from core.errors import AiServerError, BadRequest, ModelNotFound
from gateway.errors import headers_of, status_of

log = logging.getLogger("ai_server.gateway")

LATEST = ":latest"


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """Ollama's error: `{"error": message}` with `status`."""
    return JSONResponse({"error": message}, status, headers)


def render(exc: AiServerError) -> Response:
    """`exc` in Ollama's shape, with the status and headers every dialect gives it, but 400
    where ours is 415 (a bad image, a body that is not JSON): Ollama's status for both."""
    status = status_of(exc)
    return error_response(400 if status == 415 else status, exc.message, headers_of(exc))


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AiServerError)
    return render(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:  # no such route: the path, not Starlette's bare "Not Found"
        return error_response(404, f"404 page not found: {request.method} {request.url.path}")
    return error_response(exc.status_code, exc.detail, dict(exc.headers or {}))


async def _client_gone(request: Request, exc: Exception) -> Response:
    return Response(status_code=499)  # as gateway.error_handlers.client_gone


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("gateway.unhandled_error path=%s", request.url.path, exc_info=exc)
    return error_response(500, "internal error; see the server log")


# The Ollama routes' own exception handlers (gateway.ollama_port puts them around them).
HANDLERS: dict[type[Exception] | int, ExceptionHandler] = {
    AiServerError: _gateway_error,
    HTTPException: _http_error,
    ClientDisconnect: _client_gone,
    Exception: _unexpected_error,
}


def tagged(name: str) -> str:
    """A model's name as Ollama lists it: `NAME:latest`."""
    return name if ":" in name else name + LATEST


def resolve(catalog: Catalog, requested: str | None, field: str = "model") -> ModelDef:
    """The model `requested` names (`x` and `x:latest` are the same model): 400 naming
    `field` when it is missing, Ollama's 404 `model 'x' not found` when there is none."""
    if not requested:
        raise BadRequest(f"{field} is required", param=field)
    try:
        return catalog.resolve(requested, "chat")
    except ModelNotFound:
        raise ModelNotFound(f"model '{requested}' not found") from None


_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def _go_duration(text: str) -> float | None:
    """Go's `time.ParseDuration` in seconds; None if `text` is not one."""
    sign, body = (-1, text[1:]) if text.startswith("-") else (1, text.removeprefix("+"))
    if body == "0":
        return 0.0
    total, at = 0.0, 0
    while at < len(body):
        part = _PART.match(body, at)
        if part is None:
            return None
        total += float(part[1]) * _UNITS[part[2]]
        at = part.end()
    return sign * total if body else None


def keep_alive_seconds(value: object, field: str = "keep_alive") -> float | None:
    """How long a model stays loaded after a request, in seconds: None when the request does
    not say (`value` None: the config's own TTL), `math.inf` for a negative duration (for
    ever), 0 to unload it at once. 400 naming `field` for anything else."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise BadRequest(f'{field}: a duration ("5m") or a number of seconds', param=field)
    seconds = float(value) if not isinstance(value, str) else _go_duration(value.strip())
    if seconds is None or math.isnan(seconds):
        raise BadRequest(
            f'{field}: {value!r} is not a duration ("5m", "1h30m") or a number of seconds',
            param=field,
        )
    return math.inf if seconds < 0 else seconds


def fills_in(model: ModelDef) -> bool:
    """Whether `model` can fill in the middle (`suffix`): its vocabulary has the tokens.
    Reads its GGUF header (once per file version): call it off the event loop."""
    try:
        return model.path is not None and read_meta(model.path).fim is not None
    except NotGguf:
        return False


def capabilities(model: ModelDef, info: Mapping[str, object]) -> list[str]:
    """What Ollama's `capabilities` says of `model`, whose GGUF metadata is `info`: every
    model completes and calls tools (backends.tools, any model); `vision` with a projector,
    `embedding` when it serves embeddings, `insert` when its vocabulary has the
    fill-in-the-middle tokens, `thinking` when its template thinks."""
    found = ["completion", "tools"]
    if model.mmproj:
        found.append("vision")
    if model.embeddings:
        found.append("embedding")
    if fills_in(model):
        found.append("insert")
    template = info.get("tokenizer.chat_template")
    if isinstance(template, str) and "<think>" in template:
        found.append("thinking")
    return found
