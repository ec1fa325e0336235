"""What every backend does, and the typed values that cross the dispatcher."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import Literal, Protocol

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


class VisionTask(msgspec.Struct, frozen=True, kw_only=True):
    model: ModelDef  # one with a projector
    image: PreparedImage  # already through backends.vision.prepare_image
    prompt: str
    max_tokens: int
    params: LlmParams
    grammar: str | None = None  # GBNF constraining the answer (tags)


class ChatResult(msgspec.Struct, frozen=True, kw_only=True):
    content: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None
    tokens_per_second: float | None = None  # generation speed as llama.cpp reports it


class Backend(Protocol):
    @property
    def name(self) -> Literal["server", "cli"]: ...

    async def chat(self, task: ChatTask) -> ChatResult: ...

    def chat_stream(self, task: ChatTask, include_usage: bool) -> AsyncGenerator[bytes, None]:
        """SSE events of OpenAI `chat.completion.chunk`s, ending with `data: [DONE]`."""
        ...

    async def embed(
        self, model: ModelDef, texts: Sequence[str], params: LlmParams
    ) -> list[list[float]]: ...

    async def vision(self, task: VisionTask) -> ChatResult: ...
