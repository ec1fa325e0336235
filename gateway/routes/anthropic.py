"""Anthropic's Messages API: POST /v1/messages and /v1/messages/count_tokens (Claude Code's
`?beta=true` query and its `anthropic-version` / `anthropic-beta` headers change nothing).

The same dispatcher, admission and tool calling as /v1/chat/completions; errors in
Anthropic's shape (gateway.error_handlers, by path)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from functools import partial

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backends.tools import events_of
from core.chat import Answer, Event
from gateway.bodies import decode_json, json_response
from gateway.dialects import anthropic
from gateway.dialects.anthropic import CountTokensRequest, MessagesRequest, Ping
from gateway.keepalive import with_ticks
from gateway.responses import event_stream
from gateway.routes.job import Job

# A stream's first `ping` (and its start) after this long without an event: an error before
# it is still an ordinary error response with its status; then one per quiet spell.
FIRST_PING_S = 2.0
PING_EVERY_S = 10.0


def _encoder(model: str, events: AsyncIterator[Event]) -> AsyncGenerator[bytes, None]:
    assert isinstance(events, AsyncGenerator)  # the Job's stream, which we close
    ticking = with_ticks(events, Ping(), first=FIRST_PING_S, every=PING_EVERY_S)
    return anthropic.events(ticking, model)


async def _replayed(answer: Answer) -> AsyncGenerator[Event, None]:
    for event in events_of(answer):
        yield event
    if answer.usage is not None:
        yield answer.usage


async def messages(request: Request) -> Response:
    job = Job(request)
    body = await decode_json(request, MessagesRequest, job.max_body)
    chat = body.decode()
    if chat.has_images:
        job.use(chat.model, "vision")
        # Answered whole (as the vision route answers), then streamed if asked.
        answer = await job.vision(msgspec.structs.replace(chat, stream=False))
        if chat.stream:
            return await event_stream(anthropic.events(_replayed(answer), body.model))
        return json_response(anthropic.message(answer, body.model))
    job.use(chat.model, "chat")
    task = job.chat_task(chat)
    if chat.stream:
        return await job.chat_stream(task, partial(_encoder, body.model))
    return json_response(anthropic.message(await job.chat(task), body.model))


async def count_tokens(request: Request) -> Response:
    """llama.cpp's count of the prompt the request would evaluate, its tools included."""
    job = Job(request)
    body = await decode_json(request, CountTokensRequest, job.max_body)
    chat = body.decode()
    job.use(chat.model, "chat")
    return json_response({"input_tokens": await job.backend.count_tokens(job.chat_task(chat))})


routes = [
    Route("/v1/messages", messages, methods=["POST"]),
    Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
]
