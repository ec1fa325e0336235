"""Ollama's chat routes, for the Ollama port only (the main port's /api/chat is the seed's):
POST /api/chat, /api/generate, /api/embed and the older /api/embeddings, in Ollama's shapes
(`gateway.dialects.ollama`, `gateway.dialects.ollama_answers`)."""

from __future__ import annotations

import time
from functools import partial

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from core.chat import ChatRequest
from core.errors import ModelNotFound
from gateway.bodies import decode_json, json_response
from gateway.dialects.ollama import ChatBody, EmbedBody, EmbeddingsBody, GenerateBody
from gateway.dialects.ollama_answers import MEDIA_TYPE, Writer, embed_answer, lines, replayed
from gateway.responses import event_stream
from gateway.routes.job import Job


def use(job: Job, given: str, role: str) -> None:
    """The model named `given` (`x` or `x:latest`); Ollama's 404 for none."""
    try:
        job.use(given.removesuffix(":latest"), role)
    except ModelNotFound:
        raise ModelNotFound(f"model '{given}' not found") from None


async def answer(job: Job, request: ChatRequest, writer: Writer) -> Response:
    """A chat, or an image to the vision model (which backends answer whole, so a stream of
    it is replayed from the answer), as one object or NDJSON lines."""
    if request.has_images:
        use(job, writer.model, "vision")
        whole = await job.vision(msgspec.structs.replace(request, stream=False))
        if request.stream:
            return await event_stream(replayed(whole, writer), MEDIA_TYPE)
        return json_response(writer.whole(whole))
    use(job, writer.model, "chat")
    task = job.chat_task(request)
    if request.stream:
        return await job.chat_stream(task, partial(lines, writer=writer), MEDIA_TYPE)
    return json_response(writer.whole(await job.chat(task)))


async def _answering(request: Request, kind: type[ChatBody | GenerateBody]) -> Response:
    """A chat or a generate; without a prompt, the model's status (loaded or unloaded)."""
    started = time.monotonic_ns()
    job = Job(request)
    body = await decode_json(request, kind, job.max_body)
    decoded = body.decode()
    writer = Writer(body.model, started, generate=kind is GenerateBody)
    if body.no_prompt:
        use(job, body.model, "chat")
        return json_response(writer.status("unload" if body.keep_alive == 0 else "load"))
    return await answer(job, decoded, writer)


async def chat(request: Request) -> Response:
    return await _answering(request, ChatBody)


async def generate(request: Request) -> Response:
    return await _answering(request, GenerateBody)


async def embed(request: Request) -> Response:
    started = time.monotonic_ns()
    job = Job(request)
    body = await decode_json(request, EmbedBody, job.max_body)
    inputs = body.inputs()
    use(job, body.model, "embedding")
    if not inputs:
        return json_response(embed_answer(body.model, [], None, started))
    embedded = await job.embed(inputs)
    return json_response(
        embed_answer(body.model, embedded.vectors, embedded.prompt_tokens, started)
    )


async def embeddings(request: Request) -> Response:
    job = Job(request)
    body = await decode_json(request, EmbeddingsBody, job.max_body)
    inputs = body.inputs()
    use(job, body.model, "embedding")
    vectors = (await job.embed(inputs)).vectors if inputs else [[]]
    return json_response({"embedding": vectors[0]})


# For the Ollama port's router (gateway/app.py puts them there, never on the main port).
routes = [
    Route("/api/chat", chat, methods=["POST"]),
    Route("/api/generate", generate, methods=["POST"]),
    Route("/api/embed", embed, methods=["POST"]),
    Route("/api/embeddings", embeddings, methods=["POST"]),
]
