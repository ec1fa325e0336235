"""What every backend does, and the typed values that cross the dispatcher.

A backend takes a chat as `core.chat` says it, resolved into a `ChatTask`, and answers with
`core.chat`'s events or the `Answer` they add up to: it never sees a client's wire format."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import Literal, Protocol

import msgspec

from backends.catalog import ModelDef
from core.chat import Answer, ChatRequest, Event
from core.config import LlmParams


class ChatTask(msgspec.Struct, frozen=True, kw_only=True):
    """A chat request resolved against the config: its model, the eight parameters with its
    sampling overrides applied, and its token budget (`request.max_tokens` bounded)."""

    request: ChatRequest
    model: ModelDef
    params: LlmParams
    max_tokens: int


class Embedded(msgspec.Struct, frozen=True, kw_only=True):
    vectors: list[list[float]]
    prompt_tokens: int | None = None  # as llama.cpp counted them; None if it did not say


class Backend(Protocol):
    @property
    def name(self) -> Literal["server", "cli"]: ...

    async def chat(self, task: ChatTask) -> Answer: ...

    def chat_stream(self, task: ChatTask) -> AsyncGenerator[Event, None]:
        """The answer's events as they come: deltas, one Finish, then Usage where llama.cpp
        counted the tokens. A failure raises (a stream's encoder turns one after the first
        event into its dialect's error event)."""
        ...

    async def embed(self, model: ModelDef, texts: Sequence[str], params: LlmParams) -> Embedded: ...

    async def count_tokens(self, task: ChatTask) -> int:
        """The tokens of the prompt `task` would evaluate, by llama.cpp's tokenizer (its
        text: an image's tokens are not counted)."""
        ...

    async def vision(self, task: ChatTask) -> Answer:
        """A task of one user message holding one image, already through
        `backends.vision.prepare_image` (so a JPEG or a PNG)."""
        ...
