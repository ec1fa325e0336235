"""The seed's dialect (/api/chat): its body decoded into `core.chat.ChatRequest`, and an
answer encoded as its JSON. Its stream is OpenAI's `chat.completion.chunk` SSE with the usage
chunk always included (`gateway.dialects.openai.chunks`). Tools are OpenAI's fields and
shapes (`gateway.dialects.openai_tools`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from core import chat
from core.config import Backend
from core.errors import BadRequest
from gateway.dialects.openai_tools import (
    ToolCallWire,
    ToolChoiceWire,
    ToolDef,
    calls_of,
    check_results,
    choice_of,
    tool_calls_out,
    tools_of,
)
from gateway.schemas import Body, MaxTokens, ModelName, SamplingOverrides


class ChatMessage(msgspec.Struct, frozen=True, kw_only=True):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None  # may be null on an assistant turn that calls tools
    tool_calls: list[ToolCallWire] | None = None
    tool_call_id: str | None = None  # a tool turn: the call it answers

    def decode(self) -> chat.Message:
        parts = (chat.TextPart(text=self.content),) if self.content else ()
        return chat.Message(
            role=self.role,
            content=parts,
            tool_calls=calls_of(self.tool_calls or []),
            tool_call_id=self.tool_call_id if self.role == "tool" else None,
        )


class ChatRequest(SamplingOverrides, kw_only=True):
    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    model: ModelName | None = None
    max_tokens: MaxTokens | UnsetType = UNSET
    stream: bool = False  # SSE of OpenAI chat.completion.chunk events, usage in the last
    tools: list[ToolDef] | None = None
    tool_choice: ToolChoiceWire | None = None
    parallel_tool_calls: bool | None = None
    # Ollama's /api/chat has the same path and means these: refused here with a 400 that
    # says where Ollama's is (`ollama_only`), never ignored.
    options: Any | UnsetType = UNSET
    keep_alive: Any | UnsetType = UNSET
    images: Any | UnsetType = UNSET
    think: Any | UnsetType = UNSET
    format: Any | UnsetType = UNSET

    def ollama_only(self) -> str | None:
        """The first Ollama-only field the body has."""
        return next((f for f in OLLAMA_ONLY if getattr(self, f) is not UNSET), None)


OLLAMA_ONLY = ("options", "keep_alive", "images", "think", "format")


class Usage(Body):
    prompt_tokens: int
    completion_tokens: int


class AnswerMessage(Body):
    role: Literal["assistant"]
    content: str
    tool_calls: list[dict[str, Any]] | UnsetType = UNSET


class ChatResponse(Body):
    message: AnswerMessage
    backend: Backend
    model: str
    usage: Usage
    finish_reason: str | None = None


def decode(body: ChatRequest) -> chat.ChatRequest:
    if (field := body.ollama_only()) is not None:
        raise BadRequest(
            f"`{field}` is a field of Ollama's /api/chat, which is served on the Ollama "
            "port ([ollama] listen, 127.0.0.1:11434 by default); this is AI Server's own "
            "/api/chat (docs/api.md), which has no such field",
            param=field,
        )
    messages = tuple(m.decode() for m in body.messages)
    check_results(messages)
    tools = tools_of(body.tools, None)
    return chat.ChatRequest(
        messages=messages,
        model=body.model,
        tools=tools,
        tool_choice=choice_of(body.tool_choice, None, tools),
        parallel_tool_calls=bool(body.parallel_tool_calls),
        sampling=body.sampling(),
        max_tokens=body.max_tokens or None,
        stream=body.stream,
    )


def response(answer: chat.Answer, backend: Backend, model: str) -> ChatResponse:
    usage = answer.usage  # a text chat is always counted
    calls = tool_calls_out(answer.tool_calls) if answer.tool_calls else UNSET
    return ChatResponse(
        message=AnswerMessage(role="assistant", content=answer.text, tool_calls=calls),
        backend=backend,
        model=model,
        usage=Usage(
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
        ),
        finish_reason=answer.finish_reason,
    )
