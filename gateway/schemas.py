"""Request and response bodies of the /api routes: validated once, at the edge."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from gateway.config import Backend, LlmParams, Mirostat, PresencePenalty, Temp, TopK, TopP


class _Body(msgspec.Struct, kw_only=True, omit_defaults=True):
    pass


# A completion budget; past the largest context llama.cpp takes it can only be a mistake.
MaxTokens = Annotated[int, Meta(ge=1, le=1 << 20)]
# Something to embed: not empty, not only whitespace (the route checks it with a message
# naming the input; the schema says it for /openapi.json).
EmbedText = Annotated[str, Meta(extra_json_schema={"pattern": r"\S"})]


class ChatMessage(msgspec.Struct, frozen=True, kw_only=True):
    role: Literal["system", "user", "assistant"]
    content: str


class SamplingOverrides(_Body):
    """Per-request overrides of the sampling parameters; unset means the current config."""

    temp: Temp | UnsetType = UNSET
    top_p: TopP | UnsetType = UNSET
    top_k: TopK | UnsetType = UNSET
    presence_penalty: PresencePenalty | UnsetType = UNSET
    mirostat: Mirostat | UnsetType = UNSET

    def apply_to(self, params: LlmParams) -> LlmParams:
        """`params` with this request's overrides; each was validated on decoding."""
        fields = SamplingOverrides.__struct_fields__
        changed = {name: getattr(self, name) for name in fields}
        return msgspec.structs.replace(
            params, **{name: v for name, v in changed.items() if v is not UNSET}
        )


# A model's name or alias; unset: the route's role's model.
ModelName = Annotated[str, Meta(min_length=1, max_length=256)]


class ChatRequest(SamplingOverrides, kw_only=True):
    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    model: ModelName | None = None
    max_tokens: MaxTokens | UnsetType = UNSET
    stream: bool = False  # SSE of OpenAI chat.completion.chunk events, usage in the last


class Usage(_Body):
    prompt_tokens: int
    completion_tokens: int


class ChatResponse(_Body):
    message: ChatMessage
    backend: Backend
    model: str
    usage: Usage
    finish_reason: str | None = None


class EmbeddingsRequest(_Body):
    input: EmbedText | Annotated[list[EmbedText], Meta(min_length=1)]
    model: ModelName | None = None


class EmbeddingsResponse(_Body):
    embeddings: list[list[float]]
    dimensions: int
    model: str
    backend: Backend


class ConfigUpdate(_Body, forbid_unknown_fields=True):
    """A partial update of the runtime config: `backend` (alias `llm_mode`), `llm_params`."""

    backend: Backend | UnsetType = UNSET
    llm_mode: Backend | UnsetType = UNSET
    llm_params: dict[str, object] | UnsetType = UNSET


class RuntimeConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What /api/config changes at runtime, and what the state directory persists."""

    backend: Backend
    llm_params: LlmParams
