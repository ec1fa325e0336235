"""The OpenAI-compatible request bodies (/v1): OpenAI's names, mapped onto ours.

Unknown fields are ignored, as OpenAI clients send many; fields we support only at their
neutral value (they would change what the answer means) are a 400 naming them otherwise."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from gateway.config import LlmParams, Mirostat, PresencePenalty, Temp, TopK, TopP
from gateway.errors import BadRequest
from gateway.schemas import ChatMessage, EmbedText, MaxTokens


def neutral(**schema: object) -> Meta:
    """The JSON schema of a value we take only at its neutral value: `check_supported`
    refuses the rest with a 400 naming the field; /openapi.json says the same."""
    return Meta(extra_json_schema=schema)


NEVER = neutral(**{"not": {}})  # only null is accepted


class TextPart(msgspec.Struct, tag_field="type", tag="text"):
    text: str


class ImageUrl(msgspec.Struct):
    url: str


class ImagePart(msgspec.Struct, tag_field="type", tag="image_url"):
    image_url: ImageUrl


class Message(msgspec.Struct, kw_only=True):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart | ImagePart] | None = None

    @property
    def images(self) -> list[str]:
        parts = self.content if isinstance(self.content, list) else []
        return [part.image_url.url for part in parts if isinstance(part, ImagePart)]

    def as_chat(self) -> ChatMessage:
        if isinstance(self.content, list):
            text = "\n".join(part.text for part in self.content if isinstance(part, TextPart))
        else:
            text = self.content or ""
        return ChatMessage(role="system" if self.role == "developer" else self.role, content=text)


TEXT_FORMAT = {"type": {"const": "text"}}


class StreamOptions(msgspec.Struct):
    include_usage: bool = False


class ChatCompletionRequest(msgspec.Struct, kw_only=True):
    messages: Annotated[list[Message], Meta(min_length=1)]
    model: str | None = None
    temperature: Temp | UnsetType = UNSET
    top_p: TopP | UnsetType = UNSET
    presence_penalty: PresencePenalty | UnsetType = UNSET
    top_k: TopK | UnsetType = UNSET
    mirostat: Mirostat | UnsetType = UNSET
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Supported only at their neutral value.
    n: Annotated[int, neutral(const=1)] = 1
    stop: Annotated[str, neutral(const="")] | Annotated[list[str], neutral(maxItems=0)] | None = (
        None
    )
    tools: Annotated[list[Any], neutral(maxItems=0)] | None = None
    functions: Annotated[list[Any], neutral(maxItems=0)] | None = None
    response_format: Annotated[dict[str, Any], neutral(properties=TEXT_FORMAT)] | None = None
    logprobs: Annotated[bool, neutral(const=False)] | None = None
    logit_bias: Annotated[dict[str, Any], neutral(maxProperties=0)] | None = None
    frequency_penalty: Annotated[float, neutral(const=0)] | None = None

    def check_supported(self) -> None:
        changed = {
            "n": self.n != 1,
            "stop": bool(self.stop),
            "tools": bool(self.tools),
            "functions": bool(self.functions),
            "response_format": (self.response_format or {}).get("type", "text") != "text",
            "logprobs": bool(self.logprobs),
            "logit_bias": bool(self.logit_bias),
            "frequency_penalty": bool(self.frequency_penalty),
        }
        if unsupported := [name for name, is_set in changed.items() if is_set]:
            raise BadRequest(f"not supported by this server: {', '.join(unsupported)}")

    def image_request(self) -> tuple[str, str] | None:
        """(image data URL, prompt) when the request carries an image. The vision path
        takes one user message with one image: anything else is refused, not guessed at."""
        if not any(m.images for m in self.messages):
            return None
        if len(self.messages) != 1 or len(self.messages[0].images) != 1 or self.stream:
            raise BadRequest(
                "images are supported as one image in a single user message, without streaming"
            )
        return self.messages[0].images[0], self.messages[0].as_chat().content

    def params(self, base: LlmParams) -> LlmParams:
        ours = {
            "temp": self.temperature,
            "top_p": self.top_p,
            "presence_penalty": self.presence_penalty,
            "top_k": self.top_k,
            "mirostat": self.mirostat,
        }
        return msgspec.structs.replace(base, **{k: v for k, v in ours.items() if v is not UNSET})


class EmbeddingRequest(msgspec.Struct, kw_only=True):
    input: EmbedText | Annotated[list[EmbedText], Meta(min_length=1)]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    # The model's own size only: shortening embeddings is not supported.
    dimensions: Annotated[int, NEVER] | None = None

    def check_supported(self) -> None:
        if self.dimensions is not None:
            raise BadRequest("not supported by this server: dimensions")
