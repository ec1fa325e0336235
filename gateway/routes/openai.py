"""The OpenAI-compatible API: /v1/chat/completions, /v1/embeddings, /v1/models.

The same dispatcher, mode switch and parameter defaults as /api; streams are
`chat.completion.chunk` events in both modes."""

from __future__ import annotations

import base64
import struct
from functools import partial

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.bodies import decode_json, json_response
from gateway.dialects import openai
from gateway.dialects.openai import ChatCompletionRequest, EmbeddingRequest
from gateway.routes.job import Job


async def chat_completions(request: Request) -> Response:
    job = Job(request)
    body = await decode_json(request, ChatCompletionRequest, job.max_body)
    chat = body.decode()
    if chat.has_images:
        job.use(chat.model, "vision")
        return json_response(openai.completion(await job.vision(chat), job.model.name))
    job.use(chat.model, "chat")
    task = job.chat_task(chat)
    if chat.stream:
        encode = partial(openai.chunks, model=job.model.name, include_usage=body.include_usage)
        return await job.chat_stream(task, encode)
    return json_response(openai.completion(await job.chat(task), job.model.name))


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


async def embeddings(request: Request) -> Response:
    job = Job(request)
    body = await decode_json(request, EmbeddingRequest, job.max_body)
    body.check_supported()
    job.use(body.model, "embedding")
    embedded = await job.embed(body.input)
    data = [
        {"object": "embedding", "index": i, "embedding": _encode(v, body.encoding_format)}
        for i, v in enumerate(embedded.vectors)
    ]
    answer: dict[str, object] = {"object": "list", "data": data, "model": job.model.name}
    if (tokens := embedded.prompt_tokens) is not None:
        answer["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    return json_response(answer)


routes = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/embeddings", embeddings, methods=["POST"]),
]
