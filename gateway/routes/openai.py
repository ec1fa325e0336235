"""The OpenAI-compatible API: /v1/chat/completions, /v1/embeddings, /v1/models.

The same dispatcher, mode switch and parameter defaults as /api; streams are
`chat.completion.chunk` events in both modes."""

from __future__ import annotations

import base64
import struct
import time

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backends.base import ChatResult
from backends.ids import unique_id
from backends.vision import decode_base64_image
from gateway.bodies import decode_json, json_response
from gateway.openai_schemas import ChatCompletionRequest, EmbeddingRequest
from gateway.routes.job import Job


async def chat_completions(request: Request) -> Response:
    job = Job(request)
    body = await decode_json(request, ChatCompletionRequest, job.max_body)
    body.check_supported()
    params = body.params(job.config.llm_params)
    max_tokens = body.max_completion_tokens or body.max_tokens
    if image := body.image_request():
        url, prompt = image
        job.use(body.model, "vision")
        budget = max_tokens or job.svc.settings.limits.default_max_tokens
        result = await job.vision(decode_base64_image(url), prompt, budget, params, None)
        return _completion(result, job.model.name)
    job.use(body.model, "chat")
    task = msgspec.structs.replace(
        job.chat_task([m.as_chat() for m in body.messages], max_tokens, params),
        stop=body.stops,
        seed=body.seed,
        frequency_penalty=body.frequency_penalty,
        json_schema=body.json_schema(),
    )
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await job.chat_stream(task, include_usage)
    result = await job.chat(task)
    return _completion(result, job.model.name)


def _completion(result: ChatResult, model: str) -> Response:
    """A chat.completion; without `usage` where llama.cpp gave no counts (never a fake 0)."""
    usage: dict[str, object] = {}
    if result.prompt_tokens is not None and result.completion_tokens is not None:
        usage["usage"] = {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
        }
    return json_response(
        {
            "id": f"chatcmpl-{unique_id()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.content},
                    "finish_reason": result.finish_reason or "stop",
                }
            ],
            **usage,
        }
    )


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
