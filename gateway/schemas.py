"""Request and response bodies of the /api routes: validated once, at the edge."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import UNSET, Meta, UnsetType

from core import chat
from core.config import Backend, Mirostat, PresencePenalty, Temp, TopK, TopP


class Body(msgspec.Struct, kw_only=True, omit_defaults=True):
    pass


# A completion budget; past the largest context llama.cpp takes it can only be a mistake.
MaxTokens = Annotated[int, Meta(ge=1, le=1 << 20)]
# Something to embed: not empty, not only whitespace (the route checks it with a message
# naming the input; the schema says it for /openapi.json).
EmbedText = Annotated[str, Meta(extra_json_schema={"pattern": r"\S"})]


class SamplingOverrides(Body):
    """Per-request overrides of the sampling parameters; unset means the current config."""

    temp: Temp | UnsetType = UNSET
    top_p: TopP | UnsetType = UNSET
    top_k: TopK | UnsetType = UNSET
    presence_penalty: PresencePenalty | UnsetType = UNSET
    mirostat: Mirostat | UnsetType = UNSET

    def sampling(self) -> chat.Sampling:
        """Ours; each override was validated on decoding."""
        fields = SamplingOverrides.__struct_fields__
        given = {name: value for name in fields if (value := getattr(self, name)) is not UNSET}
        return chat.Sampling(**given)


# A model's name or alias; unset: the route's role's model.
ModelName = Annotated[str, Meta(min_length=1, max_length=256)]


class EmbeddingsRequest(Body):
    input: EmbedText | Annotated[list[EmbedText], Meta(min_length=1)]
    model: ModelName | None = None


class EmbeddingsResponse(Body):
    embeddings: list[list[float]]
    dimensions: int
    model: str
    backend: Backend


class ConfigUpdate(Body, forbid_unknown_fields=True):
    """A partial update of the runtime config: `backend` (alias `llm_mode`), `llm_params`."""

    backend: Backend | UnsetType = UNSET
    llm_mode: Backend | UnsetType = UNSET
    llm_params: dict[str, object] | UnsetType = UNSET
