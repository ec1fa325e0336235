"""The seed's API: /api/chat, /api/generate-embeddings, /api/config."""

from __future__ import annotations

from functools import partial
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.bodies import decode_json, json_response
from gateway.dialects import openai, seed
from gateway.lifespan import Services, services
from gateway.routes.job import Job
from gateway.schemas import ConfigUpdate, EmbeddingsRequest, EmbeddingsResponse


async def chat(request: Request) -> Response:
    job = Job(request)
    body = await decode_json(request, seed.ChatRequest, job.max_body)
    chat = seed.decode(body)
    job.use(chat.model, "chat")
    task = job.chat_task(chat)
    if chat.stream:
        encode = partial(openai.chunks, model=job.model.name, include_usage=True)
        return await job.chat_stream(task, encode)
    answer = await job.chat(task)
    return json_response(seed.response(answer, job.backend.name, job.model.name))


async def generate_embeddings(request: Request) -> Response:
    job = Job(request)
    body = await decode_json(request, EmbeddingsRequest, job.max_body)
    job.use(body.model, "embedding")
    vectors = (await job.embed(body.input)).vectors
    return json_response(
        EmbeddingsResponse(
            embeddings=vectors,
            dimensions=len(vectors[0]),
            model=job.model.name,
            backend=job.backend.name,
        )
    )


def config_view(svc: Services) -> dict[str, Any]:
    catalog = svc.dispatcher.catalog
    return {
        **msgspec.to_builtins(svc.store.current),
        "models": {
            name: model.public() | {"roles": catalog.roles_of(name)}
            for name, model in catalog.models.items()
        },
        "roles": catalog.roles,
        "pool": msgspec.to_builtins(svc.settings.pool) | {"memory_budget_mb": svc.budget_mb},
        "llama_server": msgspec.to_builtins(svc.settings.llama_server),
    }


async def get_config(request: Request) -> Response:
    return json_response(config_view(services(request)))


async def config(request: Request) -> Response:
    """One route for both methods, so a 405 lists both in `Allow`."""
    return await (post_config if request.method == "POST" else get_config)(request)


async def post_config(request: Request) -> Response:
    svc = services(request)
    update = await decode_json(request, ConfigUpdate, svc.settings.limits.max_body_bytes)
    await svc.store.update(update, svc.dispatcher.reconfigure)
    return json_response(config_view(svc))


routes = [
    Route("/api/chat", chat, methods=["POST"]),
    Route("/api/generate-embeddings", generate_embeddings, methods=["POST"]),
    Route("/api/config", config, methods=["GET", "POST"]),
]
