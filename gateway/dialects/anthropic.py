"""Anthropic's Messages API (/v1/messages): its request decoded into `core.chat.ChatRequest`,
and an answer or its events encoded as a `message` or as Anthropic's server-sent events;
its errors in Anthropic's shape.

Unknown fields are ignored, and so are the known ones a local model cannot act on
(`metadata`, `thinking`, `output_config`, `context_management`, `cache_control`): Claude Code
sends all of them. Claude Code's first system block, its `x-anthropic-billing-header:` line,
is left out of the prompt: it may change on every request, and at the top of the prompt it
would make llama-server evaluate the whole prompt every time (BENCHMARKS.md, anthropic
cache)."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType
from starlette.responses import Response

from backends.ids import unique_id
from backends.vision import decode_base64_image
from core import chat
from core.config import Temp, TopK, TopP
from core.errors import AiServerError, BadRequest
from gateway.dialects.openai_tools import (
    Function,
    Named,
    NamedChoice,
    ToolDef,
    ToolName,
    choice_of,
    tools_of,
)
from gateway.errors import headers_of, status_of
from gateway.schemas import MaxTokens

BILLING_HEADER = "x-anthropic-billing-header:"


class TextBlock(msgspec.Struct, tag_field="type", tag="text"):
    text: str


class ImageSource(msgspec.Struct, kw_only=True):
    type: str
    media_type: str = "application/octet-stream"
    data: str = ""


class ImageBlock(msgspec.Struct, tag_field="type", tag="image"):
    source: ImageSource

    def part(self, where: str) -> chat.ImagePart:
        """Only base64: the gateway never fetches a URL (or a file id) for a client."""
        if self.source.type != "base64":
            raise BadRequest(
                f"{where}: image source {self.source.type!r} is not supported; send the "
                "image as base64 (this server fetches nothing)",
                param=f"{where}.source.type",
            )
        data = decode_base64_image(self.source.data)
        return chat.ImagePart(data=data, media_type=self.source.media_type)


class ToolUseBlock(msgspec.Struct, tag_field="type", tag="tool_use"):
    id: str
    name: str
    input: dict[str, Any] = {}


class ToolResultBlock(msgspec.Struct, tag_field="type", tag="tool_result", kw_only=True):
    tool_use_id: str
    content: str | list[TextBlock | ImageBlock] = ""
    is_error: bool = False

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            text = self.content
        else:
            text = "\n".join(b.text for b in self.content if isinstance(b, TextBlock))
        return f"Error: {text}" if self.is_error else text


class ThinkingBlock(msgspec.Struct, tag_field="type", tag="thinking"):
    thinking: str = ""


class RedactedThinkingBlock(msgspec.Struct, tag_field="type", tag="redacted_thinking"):
    data: str = ""


Block = TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock
Blocks = list[Block | RedactedThinkingBlock]


class Message(msgspec.Struct, kw_only=True):
    role: Literal["user", "assistant", "system"]
    content: str | Blocks


class ToolWire(msgspec.Struct, kw_only=True):
    """A custom tool; a hosted one (a `type` such as `web_search_20250305`, no
    `input_schema`) is left out: nothing here can run it."""

    name: ToolName
    description: str = ""
    input_schema: dict[str, Any] | None = None
    type: str | None = None

    @property
    def hosted(self) -> bool:
        return self.input_schema is None and self.type not in (None, "custom")


class ToolChoiceWire(msgspec.Struct, kw_only=True):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool = False


Stop = Annotated[str, Meta(min_length=1, max_length=256)]


class MessagesRequest(msgspec.Struct, kw_only=True):
    model: str
    messages: Annotated[list[Message], Meta(min_length=1)]
    max_tokens: MaxTokens
    system: str | list[TextBlock] | None = None
    temperature: Temp | UnsetType = UNSET
    top_p: TopP | UnsetType = UNSET
    top_k: TopK | UnsetType = UNSET
    stop_sequences: Annotated[list[Stop], Meta(max_length=16)] | None = None
    tools: list[ToolWire] | None = None
    tool_choice: ToolChoiceWire | None = None
    stream: bool = False

    def decode(self) -> chat.ChatRequest:
        tools = self.decoded_tools()
        return chat.ChatRequest(
            messages=self.conversation(),
            model=self.model,
            tools=tools,
            tool_choice=self.choice(tools),
            sampling=chat.Sampling(
                temp=_given(self.temperature), top_p=_given(self.top_p), top_k=_given(self.top_k)
            ),
            max_tokens=self.max_tokens,
            stop=tuple(dict.fromkeys(self.stop_sequences or ())),
            stream=self.stream,
        )

    def decoded_tools(self) -> tuple[chat.Tool, ...]:
        """The custom tools, through the limits and checks the OpenAI dialect applies."""
        defs = []
        for i, tool in enumerate(self.tools or []):
            if tool.hosted:
                continue
            if tool.input_schema is None:
                raise BadRequest(
                    f"tools[{i}] ({tool.name}): input_schema is required",
                    param=f"tools[{i}].input_schema",
                )
            function = Function(
                name=tool.name, description=tool.description, parameters=tool.input_schema
            )
            defs.append(ToolDef(type="function", function=function))
        return tools_of(defs, None)

    def choice(self, tools: Sequence[chat.Tool]) -> chat.ToolChoice:
        wire = self.tool_choice
        if wire is None or wire.type == "auto":
            return "auto"
        if wire.type == "none":
            return "none"
        if wire.type == "any":
            return choice_of("required", None, tools)
        if wire.name is None:
            raise BadRequest("tool_choice of type tool needs a name", param="tool_choice.name")
        named = NamedChoice(type="function", function=Named(name=wire.name))
        return choice_of(named, None, tools)

    def system_text(self) -> str:
        if isinstance(self.system, str) or self.system is None:
            return self.system or ""
        return "\n".join(b.text for b in self.system if not b.text.startswith(BILLING_HEADER))

    def conversation(self) -> tuple[chat.Message, ...]:
        """Ours: the system prompt first; a `system` message inside `messages` stays where
        it is (a leading one joins the system prompt); tool results become tool turns."""
        out: list[chat.Message] = []
        if system := self.system_text():
            out.append(chat.Message.of("system", system))
        calls: set[str] = set()
        for i, message in enumerate(self.messages):
            for decoded in _decoded(message, f"messages[{i}]", calls):
                if decoded.role == "system" and out and all(m.role == "system" for m in out):
                    out[0] = chat.Message.of("system", f"{out[0].text}\n\n{decoded.text}")
                else:
                    out.append(decoded)
        return tuple(out)


def _given(value: Any) -> Any:
    return None if value is UNSET else value


def _decoded(message: Message, where: str, calls: set[str]) -> list[chat.Message]:
    """One Anthropic message as our turns: an assistant's text and calls in one turn; a
    user's tool results as tool turns, each followed by the text and images around them."""
    if isinstance(message.content, str):
        return [chat.Message.of(message.role, message.content)] if message.content else []
    if message.role == "assistant":
        return [_assistant(message.content, calls)]
    out: list[chat.Message] = []
    parts: list[chat.Part] = []
    for j, block in enumerate(message.content):
        match block:
            case TextBlock(text=text):
                parts.append(chat.TextPart(text=text))
            case ImageBlock():
                parts.append(block.part(f"{where}.content[{j}]"))
            case ToolResultBlock(tool_use_id=used):
                if used not in calls:
                    raise BadRequest(
                        f"{where}.content[{j}]: tool_use_id {used!r} answers no earlier tool_use",
                        param=f"{where}.content[{j}].tool_use_id",
                    )
                out += _flush(message.role, parts)
                out.append(
                    chat.Message(
                        role="tool", content=(chat.TextPart(text=block.text),), tool_call_id=used
                    )
                )
    return out + _flush(message.role, parts)


def _flush(
    role: Literal["user", "assistant", "system"], parts: list[chat.Part]
) -> list[chat.Message]:
    if not parts:
        return []
    message = chat.Message(role=role, content=tuple(parts))
    parts.clear()
    return [message]


def _assistant(blocks: Blocks, calls: set[str]) -> chat.Message:
    """Text and tool calls; thinking blocks (which we never write) are dropped."""
    text = [b.text for b in blocks if isinstance(b, TextBlock)]
    made = tuple(
        chat.ToolCall(id=b.id, name=b.name, arguments=json.dumps(b.input, ensure_ascii=False))
        for b in blocks
        if isinstance(b, ToolUseBlock)
    )
    calls.update(call.id for call in made)
    content = (chat.TextPart(text="\n".join(text)),) if text else ()
    return chat.Message(role="assistant", content=content, tool_calls=made)


class CountTokensRequest(msgspec.Struct, kw_only=True):
    """`/v1/messages/count_tokens`: a message request without `max_tokens`."""

    model: str
    messages: Annotated[list[Message], Meta(min_length=1)]
    system: str | list[TextBlock] | None = None
    tools: list[ToolWire] | None = None
    tool_choice: ToolChoiceWire | None = None

    def decode(self) -> chat.ChatRequest:
        full = MessagesRequest(
            model=self.model,
            messages=self.messages,
            max_tokens=1,
            system=self.system,
            tools=self.tools,
            tool_choice=self.tool_choice,
        )
        return full.decode()


# Answers.

_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def stop_reason(finish: chat.FinishReason, stop_sequence: str | None = None) -> str:
    return "stop_sequence" if stop_sequence else _STOP_REASONS[finish]


def usage_of(usage: chat.Usage | None) -> dict[str, int]:
    """Anthropic's usage is never absent: where llama.cpp gave no counts (an image in cli
    mode) both are 0 (docs/api.md says so)."""
    if usage is None:
        return {"input_tokens": 0, "output_tokens": 0}
    return {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens}


def _input(arguments: str) -> Any:
    try:
        return json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        return {}


def message(answer: chat.Answer, model: str) -> dict[str, Any]:
    """A `message`: its text block (if any), then a tool_use block per call."""
    content: list[dict[str, Any]] = [{"type": "text", "text": answer.text}] if answer.text else []
    content += [
        {"type": "tool_use", "id": c.id, "name": c.name, "input": _input(c.arguments)}
        for c in answer.tool_calls
    ]
    return {
        "id": f"msg_{unique_id()}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(answer.finish_reason, answer.stop_sequence),
        "stop_sequence": answer.stop_sequence,
        "usage": usage_of(answer.usage),
    }


# Errors: Anthropic's types, and the statuses it uses for them.

_BY_STATUS: dict[int, tuple[int, str]] = {
    400: (400, "invalid_request_error"),
    401: (401, "authentication_error"),
    403: (403, "permission_error"),
    404: (404, "not_found_error"),
    409: (409, "invalid_request_error"),
    413: (413, "request_too_large"),
    415: (415, "invalid_request_error"),
    429: (529, "overloaded_error"),  # our queue is full: the server's capacity, not a budget
    500: (500, "api_error"),
    502: (500, "api_error"),
    503: (529, "overloaded_error"),  # restarting, loading, waited too long in the queue
    504: (500, "api_error"),
}


def error_status(status: int, exc: AiServerError | None = None) -> tuple[int, str]:
    """Anthropic's status and type for our `status` (gateway.errors' table). A key's rate
    budget is its `rate_limit_error`; a model that can never fit the memory budget, or a
    missing component, is no passing overload."""
    if exc is not None and exc.code == "rate_limit_exceeded":
        return 429, "rate_limit_error"
    if exc is not None and status == 503 and not hasattr(exc, "retry_after"):
        return 500, "api_error"
    return _BY_STATUS.get(
        status, (status, "api_error" if status >= 500 else "invalid_request_error")
    )


_TOO_LONG = ("too long", "exceeds the available context")


def too_long(message: str) -> str:
    """A prompt over the context in Anthropic's words, by which Claude Code recognises it
    (and tells its user to compact the conversation): core.errors.ContextExceeded's, or
    llama.cpp's other ones (an embedding input over its batch...)."""
    if message.startswith("prompt is too long") or not any(w in message for w in _TOO_LONG):
        return message
    return f"prompt is too long: {message}"


def error_body(type_: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": type_, "message": message}}


def error_response(
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
    exc: AiServerError | None = None,
) -> Response:
    """Our error of `status` as Anthropic answers it (gateway.error_handlers calls this for
    the /v1/messages routes, and gateway.auth through it)."""
    status, type_ = error_status(status, exc)
    text = too_long(message) if status == 400 else message
    body = msgspec.json.encode(error_body(type_, text))
    return Response(body, status, headers, media_type="application/json")


def render(exc: AiServerError) -> Response:
    return error_response(status_of(exc), exc.message, headers_of(exc), exc)


# Streams.

_encode = msgspec.json.Encoder().encode


def sse(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _encode(data) + b"\n\n"


PING = sse("ping", {"type": "ping"})


class Ping(msgspec.Struct, frozen=True):
    """A tick while no event has come (gateway.keepalive): written as Anthropic's `ping`."""


class StreamWriter:
    """The events of one streamed message, block by block."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.index = -1
        self.open: str | None = None  # the type of the block being written
        self.finish = chat.Finish(reason="stop")
        self.usage: chat.Usage | None = None

    def start(self) -> bytes:
        head = message(chat.Answer(text=""), self.model) | {"stop_reason": None}
        return sse("message_start", {"type": "message_start", "message": head}) + PING

    def _open(self, block: dict[str, Any]) -> bytes:
        closed = self.close()
        self.index += 1
        self.open = block["type"]
        start = {"type": "content_block_start", "index": self.index, "content_block": block}
        return closed + sse("content_block_start", start)

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return sse(
            "content_block_delta",
            {"type": "content_block_delta", "index": self.index, "delta": delta},
        )

    def close(self) -> bytes:
        if self.open is None:
            return b""
        self.open = None
        return sse("content_block_stop", {"type": "content_block_stop", "index": self.index})

    def text(self, text: str) -> bytes:
        opened = b"" if self.open == "text" else self._open({"type": "text", "text": ""})
        return opened + self._delta({"type": "text_delta", "text": text})

    def tool_call(self, d: chat.ToolCallDelta) -> bytes:
        opened = b""
        if d.id is not None:
            block = {"type": "tool_use", "id": d.id, "name": d.name or "", "input": {}}
            opened = self._open(block)
        if not d.arguments:
            return opened
        return opened + self._delta({"type": "input_json_delta", "partial_json": d.arguments})

    def end(self) -> bytes:
        finish = self.finish
        delta = {
            "stop_reason": stop_reason(finish.reason, finish.stop_sequence),
            "stop_sequence": finish.stop_sequence,
        }
        end = {"type": "message_delta", "delta": delta, "usage": usage_of(self.usage)}
        return (
            self.close() + sse("message_delta", end) + sse("message_stop", {"type": "message_stop"})
        )


def error_event(type_: str, message: str) -> bytes:
    return sse("error", error_body(type_, message))


async def events(
    source: AsyncGenerator[chat.Event | Ping | AiServerError, None], model: str
) -> AsyncGenerator[bytes, None]:
    """Anthropic's event sequence. `source` (gateway.keepalive) may tick before the first
    event, which starts the stream with `message_start` and a `ping`; an error before any
    event raises (an ordinary error response), one after is an `error` event. `source` is
    closed here, in this task, however this ends (its ticks run in a task group)."""
    async with aclosing(source):
        async for chunk in _encoded(source, model):
            yield chunk


async def _encoded(
    source: AsyncIterator[chat.Event | Ping | AiServerError], model: str
) -> AsyncGenerator[bytes, None]:
    writer = StreamWriter(model)
    started = False
    async for item in source:
        if isinstance(item, AiServerError):
            if not started:
                raise item
            status, type_ = error_status(status_of(item), item)
            yield error_event(type_, too_long(item.message) if status == 400 else item.message)
            return
        head = b"" if started else writer.start()
        started = True
        match item:
            case Ping():
                yield head or PING
            case chat.TextDelta(text=text):
                yield head + writer.text(text)
            case chat.ToolCallDelta():
                yield head + writer.tool_call(item)
            case chat.Finish():
                writer.finish = item
                if closed := head + writer.close():
                    yield closed
            case chat.Usage():
                writer.usage = item
            case chat.Failure(type=type_, message=text):
                yield head + error_event(_failure_type(type_), too_long(text))
                return
    yield (b"" if started else writer.start()) + writer.end()


def _failure_type(ours: str) -> str:
    """A failure after the first event, by our kind: Anthropic's nearest type."""
    return {
        "invalid_request": "invalid_request_error",
        "overloaded": "overloaded_error",
        "backend_unavailable": "overloaded_error",
    }.get(ours, "api_error")
