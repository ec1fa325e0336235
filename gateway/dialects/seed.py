"""The seed's dialect (/api/chat): its body decoded into `core.chat.ChatRequest`, and an
answer encoded as its JSON. Its stream is OpenAI's `chat.completion.chunk` SSE with the usage
chunk always included (`gateway.dialects.openai.chunks`)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from core import chat
from core.config import Backend
from gateway.schemas import Body, MaxTokens, ModelName, SamplingOverrides


class ChatMessage(msgspec.Struct, frozen=True, kw_only=True):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(SamplingOverrides, kw_only=True):
    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    model: ModelName | None = None
    max_tokens: MaxTokens | UnsetType = UNSET
    stream: bool = False  # SSE of OpenAI chat.completion.chunk events, usage in the last


class Usage(Body):
    prompt_tokens: int
    completion_tokens: int


class ChatResponse(Body):
    message: ChatMessage
    backend: Backend
    model: str
    usage: Usage
    finish_reason: str | None = None


def decode(body: ChatRequest) -> chat.ChatRequest:
    return chat.ChatRequest(
        messages=tuple(chat.Message.of(m.role, m.content) for m in body.messages),
        model=body.model,
        sampling=body.sampling(),
        max_tokens=body.max_tokens or None,
        stream=body.stream,
    )


def response(answer: chat.Answer, backend: Backend, model: str) -> ChatResponse:
    usage = answer.usage  # a text chat is always counted
    return ChatResponse(
        message=ChatMessage(role="assistant", content=answer.text),
        backend=backend,
        model=model,
        usage=Usage(
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
        ),
        finish_reason=answer.finish_reason,
    )
