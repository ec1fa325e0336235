"""The OpenAI dialect (/v1): its request bodies decoded into `core.chat.ChatRequest`, and an
answer or its events encoded as `chat.completion` JSON or `chat.completion.chunk` SSE.

Unknown fields are ignored, as OpenAI clients send many; fields we support only at their
neutral value (they would change what the answer means) are a 400 naming them otherwise."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from backends.ids import unique_id
from backends.vision import decode_base64_image
from core import chat
from core.config import Mirostat, PresencePenalty, Temp, TopK, TopP
from core.errors import BadRequest
from gateway.dialects.openai_tools import (
    CalledFunction,
    Function,
    FunctionCallWire,
    ToolCallWire,
    ToolChoiceWire,
    ToolDef,
    calls_of,
    check_results,
    choice_of,
    tool_calls_out,
    tools_of,
)
from gateway.schemas import EmbedText, MaxTokens


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


_ROLES: dict[str, chat.Role] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
    "function": "tool",
}


class Message(msgspec.Struct, kw_only=True):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart | ImagePart] | None = None
    tool_calls: list[ToolCallWire] | None = None  # an assistant's calls
    tool_call_id: str | None = None  # a tool message: the call it answers
    name: str | None = None  # a legacy function message: the function it answers
    function_call: CalledFunction | None = None  # a legacy assistant call

    def decode(self) -> chat.Message:
        """Ours: `developer` is the system role; an image's data URL becomes its bytes; a
        legacy function call and its result are a tool call (id `function:NAME`) and a tool
        message."""
        calls = calls_of(self.tool_calls or [])
        if self.function_call is not None:
            f = self.function_call
            calls += (chat.ToolCall(id=f"function:{f.name}", name=f.name, arguments=f.arguments),)
        result_of = f"function:{self.name}" if self.role == "function" else self.tool_call_id
        role = _ROLES[self.role]
        return chat.Message(
            role=role,
            content=self._parts(),
            tool_calls=calls,
            tool_call_id=result_of if role == "tool" else None,
        )

    def _parts(self) -> tuple[chat.Part, ...]:
        if not isinstance(self.content, list):
            return (chat.TextPart(text=self.content),) if self.content else ()
        parts: list[chat.Part] = []
        for part in self.content:
            if isinstance(part, TextPart):
                parts.append(chat.TextPart(text=part.text))
            else:
                parts.append(chat.ImagePart(data=decode_base64_image(part.image_url.url)))
        return tuple(parts)


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


def check_schema(
    schema: object,
    where: str = "#",
    field: str = "response_format",
    param: str = "response_format.json_schema.schema",
) -> None:
    """A 400 naming the place of a count over SCHEMA_MAX_COUNT."""
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key in _COUNTS and isinstance(value, int) and value > SCHEMA_MAX_COUNT:
                raise BadRequest(
                    f"{field}: {key} {value} at {where} is over the limit of "
                    f"{SCHEMA_MAX_COUNT} this server turns into a grammar",
                    param=param,
                )
            check_schema(value, f"{where}/{key}", field, param)
    elif isinstance(schema, list):
        for i, item in enumerate(schema):
            check_schema(item, f"{where}/{i}", field, param)


def checked_schema(
    schema: dict[str, Any],
    field: str = "response_format",
    param: str = "response_format.json_schema.schema",
) -> dict[str, Any]:
    """`schema`, bounded in size and counts (a 400 naming `field` and `param` otherwise):
    what llama.cpp turns into a grammar. The Responses dialect's `text.format` shares it."""
    if len(msgspec.json.encode(schema)) > SCHEMA_MAX_BYTES:
        raise BadRequest(f"{field}: the schema is over {SCHEMA_MAX_BYTES} bytes", param=param)
    check_schema(schema, "#", field, param)
    return schema


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
    tools: list[ToolDef] | None = None
    tool_choice: ToolChoiceWire | None = None
    parallel_tool_calls: bool | None = None  # None: one call per answer
    functions: list[Function] | None = None  # legacy
    function_call: FunctionCallWire | None = None  # legacy
    logprobs: Annotated[bool, neutral(const=False)] | None = None
    logit_bias: Annotated[dict[str, Any], neutral(maxProperties=0)] | None = None

    def check_supported(self) -> None:
        changed = {
            "n": self.n != 1,
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
            raise BadRequest(
                "response_format json_schema needs its json_schema", param="response_format"
            )
        return checked_schema(fmt.json_schema.schema)

    def decode(self) -> chat.ChatRequest:
        """Ours, after the checks only this dialect has (unsupported fields, the schema)."""
        self.check_supported()
        sampling = chat.Sampling(
            temp=_given(self.temperature),
            top_p=_given(self.top_p),
            top_k=_given(self.top_k),
            presence_penalty=_given(self.presence_penalty),
            mirostat=_given(self.mirostat),
            frequency_penalty=self.frequency_penalty,
        )
        messages = tuple(m.decode() for m in self.messages)
        check_results(messages)
        tools = tools_of(self.tools, self.functions)
        return chat.ChatRequest(
            messages=messages,
            model=self.model,
            tools=tools,
            tool_choice=choice_of(self.tool_choice, self.function_call, tools),
            parallel_tool_calls=bool(self.parallel_tool_calls),
            sampling=sampling,
            max_tokens=self.max_completion_tokens or self.max_tokens,
            stop=self.stops,
            seed=self.seed,
            json_schema=self.json_schema(),
            stream=self.stream,
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def _given(value: Any) -> Any:
    return None if value is UNSET else value


class EmbeddingRequest(msgspec.Struct, kw_only=True):
    input: EmbedText | Annotated[list[EmbedText], Meta(min_length=1)]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    # The model's own size only: shortening embeddings is not supported.
    dimensions: Annotated[int, NEVER] | None = None

    def check_supported(self) -> None:
        if self.dimensions is not None:
            raise BadRequest("not supported by this server: dimensions")


# Answers.


def usage_of(usage: chat.Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def completion(answer: chat.Answer, model: str) -> dict[str, Any]:
    """A chat.completion; without `usage` where llama.cpp gave no counts (never a fake 0)."""
    usage = {"usage": usage_of(answer.usage)} if answer.usage is not None else {}
    return {
        "id": f"chatcmpl-{unique_id()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message_of(answer),
                "finish_reason": answer.finish_reason,
            }
        ],
        **usage,
    }


def message_of(answer: chat.Answer) -> dict[str, Any]:
    """The assistant's message: its text, or its calls (and `content` null, as OpenAI)."""
    if not answer.tool_calls:
        return {"role": "assistant", "content": answer.text}
    calls = tool_calls_out(answer.tool_calls)
    return {"role": "assistant", "content": answer.text or None, "tool_calls": calls}


DONE = b"data: [DONE]\n\n"

_encode = msgspec.json.Encoder().encode


def sse(data: object) -> bytes:
    return b"data: " + _encode(data) + b"\n\n"


def error_event(type_: str, message: str) -> bytes:
    """How a stream that already started reports a failure: not a silent cut."""
    return sse({"error": {"type": type_, "code": type_, "message": message}})


class ChunkWriter:
    """Builds the chunks of one streamed completion."""

    def __init__(self, model: str) -> None:
        self.id = f"chatcmpl-{unique_id()}"
        self.created = int(time.time())
        self.model = model
        self._started = False

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return sse(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": choices,
                **extra,
            }
        )

    def _delta(self, delta: dict[str, Any]) -> bytes:
        if not self._started:
            delta = {"role": "assistant", **delta}
        self._started = True
        return self._chunk([{"index": 0, "delta": delta, "finish_reason": None}])

    def delta(self, text: str) -> bytes:
        return self._delta({"content": text})

    def tool_call(self, d: chat.ToolCallDelta) -> bytes:
        """A call's first delta has its id, type and name; the next ones its arguments."""
        call: dict[str, Any] = {"index": d.index}
        if d.id is not None:
            call |= {"id": d.id, "type": "function"}
        function = {"name": d.name} if d.name is not None else {}
        call["function"] = function | {"arguments": d.arguments}
        return self._delta({"tool_calls": [call]})

    def finish(self, reason: str) -> bytes:
        return self._chunk([{"index": 0, "delta": {}, "finish_reason": reason}])

    def usage(self, usage: chat.Usage) -> bytes:
        """The usage chunk; with llama-server's `timings` where it gave them (its own
        stream has them, and clients of llama.cpp read them)."""
        timings = {"timings": usage.timings} if usage.timings else {}
        return self._chunk([], usage=usage_of(usage), **timings)


async def chunks(
    events: AsyncIterator[chat.Event], model: str, *, include_usage: bool
) -> AsyncGenerator[bytes, None]:
    """`chat.completion.chunk` events, ending with `[DONE]`; the usage chunk only for a
    client that asked for it; a failure as an error event, after which nothing follows."""
    writer = ChunkWriter(model)
    async for event in events:
        match event:
            case chat.TextDelta(text=text):
                yield writer.delta(text)
            case chat.ToolCallDelta():
                yield writer.tool_call(event)
            case chat.Finish(reason=reason):
                yield writer.finish(reason)
            case chat.Usage() if include_usage:
                yield writer.usage(event)
            case chat.Failure(type=type_, message=message):
                yield error_event(type_, message)
                return
    yield DONE
