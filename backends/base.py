"""What every backend does, and the typed values that cross the dispatcher."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import Any, Literal, Protocol

import msgspec

from backends.catalog import ModelDef
from backends.vision import PreparedImage
from gateway.config import LlmParams
from gateway.schemas import ChatMessage


class ChatTask(msgspec.Struct, frozen=True, kw_only=True):
    model: ModelDef
    messages: Sequence[ChatMessage]
    max_tokens: int
    params: LlmParams  # the config's eight parameters with this request's overrides
    # OpenAI's per-request fields (/v1/chat/completions).
    stop: tuple[str, ...] = ()  # the answer ends before the first of these
    seed: int | None = None
    frequency_penalty: float | None = None
    json_schema: dict[str, Any] | None = None  # the answer is JSON following it


class VisionTask(msgspec.Struct, frozen=True, kw_only=True):
    model: ModelDef  # one with a projector
    image: PreparedImage  # already through backends.vision.prepare_image
    prompt: str
    max_tokens: int
    params: LlmParams
    grammar: str | None = None  # GBNF constraining the answer (tags)


class ChatResult(msgspec.Struct, frozen=True, kw_only=True):
    content: str
    # None where llama.cpp gives no number (an image's tokens in cli mode): no `usage`.
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    tokens_per_second: float | None = None  # generation speed as llama.cpp reports it


class Embedded(msgspec.Struct, frozen=True, kw_only=True):
    vectors: list[list[float]]
    prompt_tokens: int | None = None  # as llama.cpp counted them; None if it did not say


class Backend(Protocol):
    @property
    def name(self) -> Literal["server", "cli"]: ...

    async def chat(self, task: ChatTask) -> ChatResult: ...

    def chat_stream(self, task: ChatTask, include_usage: bool) -> AsyncGenerator[bytes, None]:
        """SSE events of OpenAI `chat.completion.chunk`s, ending with `data: [DONE]`."""
        ...

    async def embed(self, model: ModelDef, texts: Sequence[str], params: LlmParams) -> Embedded: ...

    async def vision(self, task: VisionTask) -> ChatResult: ...
