"""Ollama's chat routes, for the Ollama port only (the main port's /api/chat is the seed's):
POST /api/chat, /api/generate, /api/embed and the older /api/embeddings, in Ollama's shapes
(`gateway.dialects.ollama`, `gateway.dialects.ollama_answers`). Each request's `keep_alive`
goes to the pool (`Job.keep_alive`); one without a prompt loads or unloads its model."""

from __future__ import annotations

import time
from functools import partial

import anyio
import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from core.chat import ChatRequest
from core.errors import BadRequest
from gateway.bodies import decode_json, json_response
from gateway.dialects.ollama import (
    ChatBody,
    EmbedBody,
    EmbeddingsBody,
    GenerateBody,
    KeepAlive,
)
from gateway.dialects.ollama_answers import MEDIA_TYPE, Writer, embed_answer, lines, replayed
from gateway.dialects.ollama_common import fills_in, keep_alive_seconds, resolve
from gateway.responses import event_stream
from gateway.routes.job import Job


async def use(job: Job, given: str, role: str, keep_alive: KeepAlive) -> None:
    """The model named `given` (`x` or `x:latest`; Ollama's 400 or 404 for none), kept
    loaded as `keep_alive` says."""
    job.use(resolve(job.svc.dispatcher.catalog, given).name, role)
    await job.keep_alive(keep_alive_seconds(keep_alive))


async def answer(job: Job, request: ChatRequest, writer: Writer, keep_alive: KeepAlive) -> Response:
    """A chat, or an image to the vision model (which backends answer whole, so a stream of
    it is replayed from the answer), as one object or NDJSON lines."""
    if request.has_images:
        await use(job, writer.model, "vision", keep_alive)
        whole = await job.vision(msgspec.structs.replace(request, stream=False))
        if request.stream:
            return await event_stream(replayed(whole, writer), MEDIA_TYPE)
        return json_response(writer.whole(whole))
    if request.suffix is not None:  # refused before anything is loaded for it
        model = resolve(job.svc.dispatcher.catalog, writer.model)
        if not await anyio.to_thread.run_sync(fills_in, model):
            raise BadRequest(f'"{writer.model}" does not support insert', param="suffix")
    await use(job, writer.model, "chat", keep_alive)
    task = job.chat_task(request)
    if request.stream:
        return await job.chat_stream(task, partial(lines, writer=writer), MEDIA_TYPE)
    return json_response(writer.whole(await job.chat(task)))


async def _answering(request: Request, kind: type[ChatBody | GenerateBody]) -> Response:
    """A chat or a generate; without a prompt, its model loaded (or unloaded, with
    `keep_alive` 0) and a status: Open WebUI's load and unload buttons send these."""
    started = time.monotonic_ns()
    job = Job(request)
    body = await decode_json(request, kind, job.max_body)
    templated = isinstance(body, GenerateBody) and body.template
    decoded = await anyio.to_thread.run_sync(body.decode) if templated else body.decode()
    writer = Writer(body.model, started, generate=kind is GenerateBody)
    if body.no_prompt:
        job.use(resolve(job.svc.dispatcher.catalog, body.model).name, "chat")
        seconds = keep_alive_seconds(body.keep_alive)
        await job.warm(seconds)
        return json_response(writer.status("unload" if seconds == 0 else "load"))
    return await answer(job, decoded, writer, body.keep_alive)


async def chat(request: Request) -> Response:
    return await _answering(request, ChatBody)


async def generate(request: Request) -> Response:
    return await _answering(request, GenerateBody)


async def embed(request: Request) -> Response:
    started = time.monotonic_ns()
    job = Job(request)
    body = await decode_json(request, EmbedBody, job.max_body)
    inputs = body.inputs()
    await use(job, body.model, "embedding", body.keep_alive)
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
    await use(job, body.model, "embedding", body.keep_alive)
    vectors = (await job.embed(inputs)).vectors if inputs else [[]]
    return json_response({"embedding": vectors[0]})


# For the Ollama port's router (gateway/app.py puts them there, never on the main port).
routes = [
    Route("/api/chat", chat, methods=["POST"]),
    Route("/api/generate", generate, methods=["POST"]),
    Route("/api/embed", embed, methods=["POST"]),
    Route("/api/embeddings", embeddings, methods=["POST"]),
]
