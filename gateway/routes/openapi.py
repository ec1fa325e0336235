"""GET /openapi.json: the gateway's own OpenAPI 3.1 document, generated from the msgspec
schemas the routes decode with, so it cannot drift from what they accept."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.bodies import json_response
from gateway.dialects.anthropic import CountTokensRequest, MessagesRequest
from gateway.dialects.openai import ChatCompletionRequest, EmbeddingRequest
from gateway.dialects.responses import ResponsesRequest
from gateway.dialects.seed import ChatRequest, ChatResponse
from gateway.routes.vision import VisionRequest
from gateway.schemas import ConfigUpdate, EmbeddingsRequest, EmbeddingsResponse

# path -> (method, request schema, response schema)
OPERATIONS: dict[str, tuple[str, type | None, type | None]] = {
    "/api/chat": ("post", ChatRequest, ChatResponse),
    "/api/generate-embeddings": ("post", EmbeddingsRequest, EmbeddingsResponse),
    "/api/config": ("post", ConfigUpdate, None),
    "/api/tag": ("post", VisionRequest, None),
    "/api/describe": ("post", VisionRequest, None),
    "/v1/chat/completions": ("post", ChatCompletionRequest, None),
    "/v1/embeddings": ("post", EmbeddingRequest, None),
    "/v1/responses": ("post", ResponsesRequest, None),
    "/v1/messages": ("post", MessagesRequest, None),
    "/v1/messages/count_tokens": ("post", CountTokensRequest, None),
}
STREAMING = {"/api/chat", "/v1/chat/completions", "/v1/responses", "/v1/messages"}
SSE_EVENT = {  # one event; its data is a JSON chunk or the closing "[DONE]"
    "type": "object",
    "required": ["data"],
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
}
ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["type", "code", "message"],
            "properties": {k: {"type": "string"} for k in ("type", "code", "message", "param")},
        }
    },
}

# Anthropic's routes answer errors in Anthropic's shape (gateway.error_handlers).
ANTHROPIC_ERROR = {
    "type": "object",
    "required": ["type", "error"],
    "properties": {
        "type": {"const": "error"},
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {k: {"type": "string"} for k in ("type", "message")},
        },
    },
}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _any(kind: type) -> dict[str, Any]:
    """`object` (free-form values, e.g. llm_params before validation): any JSON."""
    if kind is object:
        return {"description": "any JSON value"}
    raise TypeError(f"no JSON schema for {kind}")


WHOAMI = {
    "type": "object",
    "required": ["name", "admin", "keys_required"],
    "properties": {
        "name": {"type": "string", "description": "the key's name (or the client's address)"},
        "admin": {"type": "boolean"},
        "keys_required": {"type": "boolean"},
    },
}
LOG_LINE = {"type": "object", "required": ["line"], "properties": {"line": {"type": "string"}}}


def _get(summary: str, ok: dict[str, Any], **extra: Any) -> dict[str, Any]:
    errors = {"default": {"description": "an error", **_json(ERROR)}}
    return {"get": {"summary": summary, "responses": {"200": ok, **errors}, **extra}}


def dashboard_paths(plain: dict[str, Any], name: dict[str, Any]) -> dict[str, Any]:
    """The endpoints the dashboard (/ui) reads; usable by any client."""
    replica = {"name": "replica", "in": "query", "schema": {"type": "integer", "minimum": 0}}
    stream = {"content": {"application/x-ndjson": {"schema": LOG_LINE}}}
    return {
        "/api/whoami": _get(
            "Whether the key is accepted (401 if not) and whether it is an admin key",
            {"description": "OK", **_json(WHOAMI)},
        ),
        "/api/clients": _get(
            "Admin: each client's requests in flight and queued, per model",
            plain["responses"]["200"],
        ),
        "/api/config/schema": _get(
            "The runtime parameters' ranges and defaults (JSON Schema), and which restart "
            "llama-server",
            plain["responses"]["200"],
        ),
        "/api/metrics/history": _get(
            "The last hour of requests, 5xx errors, latency percentiles and restarts, in "
            "10 s intervals",
            plain["responses"]["200"],
        ),
        "/api/logs/{name}": _get(
            "Admin: a model's llama.cpp output, the lines held then each new one, one JSON "
            "object per line, until the client disconnects",
            {"description": "a stream of log lines", **stream},
            parameters=[name, replica],
        ),
    }


def build_document() -> dict[str, Any]:
    types = [t for _, req, resp in OPERATIONS.values() for t in (req, resp) if t is not None]
    refs, components = msgspec.json.schema_components(
        types, schema_hook=_any, ref_template="#/components/schemas/{name}"
    )
    by_type = dict(zip(types, refs, strict=True))
    paths: dict[str, Any] = {}
    for path, (method, request, response) in OPERATIONS.items():
        ok = _json(by_type[response]) if response else _json({"type": "object"})
        if path in STREAMING:  # "stream": true answers with server-sent events
            ok["content"]["text/event-stream"] = {"schema": SSE_EVENT}
        error = ANTHROPIC_ERROR if path.startswith("/v1/messages") else ERROR
        operation: dict[str, Any] = {
            "responses": {"200": {"description": "OK", **ok},
                          "default": {"description": "an error", **_json(error)}},
        }  # fmt: skip
        if request is not None:
            operation["requestBody"] = {"required": True, **_json(by_type[request])}
        paths[path] = {method: operation}
    plain = {
        "responses": {"200": {"description": "OK", **_json({"type": "object"})},
                      "default": {"description": "an error", **_json(ERROR)}},
    }  # fmt: skip
    for path in ("/health", "/ready", "/v1/models", "/api/config", "/api/models"):
        paths.setdefault(path, {})["get"] = plain
    paths["/api/models/rescan"] = {"post": plain}
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    for action in ("load", "unload"):
        paths[f"/api/models/{{name}}/{action}"] = {"post": plain | {"parameters": [name]}}
    paths.update(dashboard_paths(plain, name))
    return {
        "openapi": "3.1.0",
        "info": {"title": "AI Server", "version": "0.1.0"},
        "paths": paths,
        "components": {"schemas": components},
    }


async def openapi(request: Request) -> Response:
    return json_response(build_document())


routes = [Route("/openapi.json", openapi, methods=["GET"])]
