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


class StreamOptions(msgspec.Struct):
    include_usage: bool = False


class JsonSchemaFormat(msgspec.Struct, kw_only=True):
    schema: dict[str, Any] = {}  # {}: any JSON value
    name: str | None = None
    description: str | None = None
    strict: bool | None = None  # llama.cpp's grammar always holds the answer to the schema


class ResponseFormat(msgspec.Struct, kw_only=True):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaFormat | None = None


# A schema llama.cpp turns into a grammar: bounded, so one request cannot make it build a
# huge one (each required item or character of a `minItems`/`minLength` is a rule).
SCHEMA_MAX_BYTES = 32 * 1024
SCHEMA_MAX_COUNT = 256
_COUNTS = ("minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties")


def _bad(message: str, param: str) -> BadRequest:
    error = BadRequest(message)
    error.param = param
    return error


def check_schema(schema: object, where: str = "#") -> None:
    """A 400 naming the place of a count over SCHEMA_MAX_COUNT."""
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key in _COUNTS and isinstance(value, int) and value > SCHEMA_MAX_COUNT:
                raise _bad(
                    f"response_format: {key} {value} at {where} is over the limit of "
                    f"{SCHEMA_MAX_COUNT} this server turns into a grammar",
                    "response_format.json_schema.schema",
                )
            check_schema(value, f"{where}/{key}")
    elif isinstance(schema, list):
        for i, item in enumerate(schema):
            check_schema(item, f"{where}/{i}")


Stop = Annotated[str, Meta(max_length=256)]
Seed = Annotated[int, Meta(ge=0, le=2**32 - 1)]


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
    stop: Stop | Annotated[list[Stop], Meta(max_length=4)] | None = None
    seed: Seed | None = None
    frequency_penalty: PresencePenalty | None = None
    response_format: ResponseFormat | None = None
    # Supported only at their neutral value.
    n: Annotated[int, neutral(const=1)] = 1
    tools: Annotated[list[Any], neutral(maxItems=0)] | None = None
    functions: Annotated[list[Any], neutral(maxItems=0)] | None = None
    logprobs: Annotated[bool, neutral(const=False)] | None = None
    logit_bias: Annotated[dict[str, Any], neutral(maxProperties=0)] | None = None

    def check_supported(self) -> None:
        changed = {
            "n": self.n != 1,
            "tools": bool(self.tools),
            "functions": bool(self.functions),
            "logprobs": bool(self.logprobs),
            "logit_bias": bool(self.logit_bias),
        }
        if unsupported := [name for name, is_set in changed.items() if is_set]:
            raise BadRequest(f"not supported by this server: {', '.join(unsupported)}")

    @property
    def stops(self) -> tuple[str, ...]:
        found = [self.stop] if isinstance(self.stop, str) else self.stop or []
        return tuple(dict.fromkeys(s for s in found if s))

    def json_schema(self) -> dict[str, Any] | None:
        """The schema the answer must follow: `json_object` is any object; None for text."""
        fmt = self.response_format
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_object":
            return {"type": "object"}
        if fmt.json_schema is None:
            raise _bad("response_format json_schema needs its json_schema", "response_format")
        schema = fmt.json_schema.schema
        if len(msgspec.json.encode(schema)) > SCHEMA_MAX_BYTES:
            raise _bad(
                f"response_format: the schema is over {SCHEMA_MAX_BYTES} bytes",
                "response_format.json_schema.schema",
            )
        check_schema(schema)
        return schema

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
