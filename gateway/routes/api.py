"""The seed's API: /api/chat, /api/generate-embeddings, /api/config."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backends.base import ChatTask
from backends.specs import model_name, model_path
from gateway.admission import admitted
from gateway.bodies import decode_json, json_response
from gateway.errors import BadRequest
from gateway.lifespan import Services, services
from gateway.responses import event_stream
from gateway.schemas import (
    ChatMessage,
    ChatRequest,
    ChatResponse,
    ConfigUpdate,
    EmbeddingsRequest,
    EmbeddingsResponse,
    Usage,
)


async def chat(request: Request) -> Response:
    svc = services(request)
    body = await decode_json(request, ChatRequest, svc.settings.limits.max_body_bytes)
    config = svc.store.current
    backend = svc.dispatcher.backend_for(config)
    request.state.backend = backend.name
    params = body.apply_to(config.llm_params)
    max_tokens = body.max_tokens or svc.settings.limits.default_max_tokens
    task = ChatTask(
        messages=body.messages, max_tokens=min(max_tokens, params.ctx_size), params=params
    )
    if body.stream:
        stream = backend.chat_stream(task, include_usage=True)
        return await event_stream(admitted(svc.admission.lanes[backend.name], stream))
    async with svc.admission.lanes[backend.name].slot():
        result = await backend.chat(task)
    svc.metrics.record_generation(backend.name, result.completion_tokens, result.tokens_per_second)
    return json_response(
        ChatResponse(
            message=ChatMessage(role="assistant", content=result.content),
            backend=backend.name,
            model=model_name(model_path(svc.settings, "chat")),
            usage=Usage(
                prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens
            ),
            finish_reason=result.finish_reason,
        )
    )


async def generate_embeddings(request: Request) -> Response:
    svc = services(request)
    body = await decode_json(request, EmbeddingsRequest, svc.settings.limits.max_body_bytes)
    texts = [body.input] if isinstance(body.input, str) else body.input
    if empty := [i for i, text in enumerate(texts) if not text.strip()]:
        raise BadRequest(f"input {empty[0]} is empty: there is nothing to embed")
    config = svc.store.current
    backend = svc.dispatcher.backend_for(config)
    request.state.backend = backend.name
    async with svc.admission.lanes[backend.name].slot():
        vectors = await backend.embed(texts, config.llm_params)
    return json_response(
        EmbeddingsResponse(
            embeddings=vectors,
            dimensions=len(vectors[0]),
            model=model_name(model_path(svc.settings, "embedding")),
            backend=backend.name,
        )
    )


def config_view(svc: Services) -> dict[str, Any]:
    models = svc.settings.models
    return {
        **msgspec.to_builtins(svc.store.current),
        "models": {
            role: getattr(models, role)
            for role in ("chat", "embedding", "vision", "mmproj")
            if getattr(models, role)
        }
        | {"chat_template": models.chat_template},
        "llama_server": msgspec.to_builtins(svc.settings.llama_server),
    }


async def get_config(request: Request) -> Response:
    return json_response(config_view(services(request)))


async def post_config(request: Request) -> Response:
    svc = services(request)
    update = await decode_json(request, ConfigUpdate, svc.settings.limits.max_body_bytes)
    await svc.store.update(update, svc.dispatcher.reconfigure)
    return json_response(config_view(svc))


routes = [
    Route("/api/chat", chat, methods=["POST"]),
    Route("/api/generate-embeddings", generate_embeddings, methods=["POST"]),
    Route("/api/config", get_config, methods=["GET"]),
    Route("/api/config", post_config, methods=["POST"]),
]
