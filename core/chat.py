"""The vocabulary of a chat, whatever dialect it arrived in.

Every dialect at the edge (`gateway.dialects`) decodes its body into one `ChatRequest` and
encodes the `Event`s a backend yields (or the `Answer` they add up to) into its own JSON or
stream. The backends see only these types: no wire format of a client crosses this module.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import msgspec

from core.config import LlmParams

Role = Literal["system", "user", "assistant", "tool"]


class _Value(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    pass


# Content parts.


class TextPart(_Value, frozen=True, tag="text"):
    text: str


class ImagePart(_Value, frozen=True, tag="image"):
    """An image's bytes as the client sent them (decoded from base64 at the edge); the
    gateway checks and re-encodes them before a backend sees them."""

    data: bytes
    media_type: str = "application/octet-stream"


Part = TextPart | ImagePart


class ToolCall(_Value, frozen=True):
    """One call the model made: `arguments` is JSON text, as the model wrote it."""

    id: str
    name: str
    arguments: str


class Message(_Value, frozen=True):
    """One turn. An assistant turn may carry `tool_calls` (and no text); a `tool` turn is the
    result of the call named by `tool_call_id`."""

    role: Role
    content: tuple[Part, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None

    @classmethod
    def of(cls, role: Role, text: str) -> Message:
        return cls(role=role, content=(TextPart(text=text),))

    @property
    def text(self) -> str:
        """The text parts, one line each (an image part adds none)."""
        return "\n".join(part.text for part in self.content if isinstance(part, TextPart))

    @property
    def images(self) -> list[ImagePart]:
        return [part for part in self.content if isinstance(part, ImagePart)]


# Tools.


class Tool(_Value, frozen=True):
    """A function the model may call; `parameters` is the JSON Schema of its arguments."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = {}


class NamedTool(_Value, frozen=True):
    """`tool_choice` naming the one tool the model must call."""

    name: str


ToolChoice = Literal["auto", "none", "required"] | NamedTool


# The request.


class Sampling(_Value, frozen=True):
    """This request's overrides of the configured sampling parameters; None: the config's."""

    temp: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    presence_penalty: float | None = None
    mirostat: Literal[0, 1, 2] | None = None
    frequency_penalty: float | None = None  # not one of the eight: llama.cpp's default if None

    def apply_to(self, params: LlmParams) -> LlmParams:
        """`params` with these overrides (validated by the dialect that decoded them)."""
        changed = {
            name: value
            for name in ("temp", "top_p", "top_k", "presence_penalty", "mirostat")
            if (value := getattr(self, name)) is not None
        }
        return msgspec.structs.replace(params, **changed) if changed else params


class ChatRequest(_Value, frozen=True):
    """One chat, as every dialect decodes it. `model` is the name or alias the client asked
    for (None: its role's model); `max_tokens` None is the configured default."""

    messages: tuple[Message, ...]
    model: str | None = None
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = "auto"
    parallel_tool_calls: bool = False  # several calls in one answer may be made
    sampling: Sampling = Sampling()
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    json_schema: dict[str, Any] | None = None  # the answer is JSON following it
    grammar: str | None = None  # GBNF for the answer (our own routes, e.g. image tags)
    stream: bool = False
    # A completion rather than a chat (Ollama's generate): `messages` is one user turn whose
    # text is the whole prompt, sent as it is, without the model's chat template; with a
    # `suffix`, the model fills in the middle between that prompt and the suffix.
    raw: bool = False
    suffix: str | None = None

    @property
    def prompt(self) -> str:
        """A raw request's prompt (the text of its one message)."""
        return "".join(message.text for message in self.messages)

    @property
    def images(self) -> list[ImagePart]:
        return [image for message in self.messages for image in message.images]

    @property
    def has_images(self) -> bool:
        return any(isinstance(p, ImagePart) for m in self.messages for p in m.content)


# The events of an answer, in the order a backend yields them: deltas, then one Finish, then
# at most one Usage. A Failure ends a stream that had already started.

FinishReason = Literal["stop", "length", "tool_calls"]


class _Event(_Value, frozen=True, tag_field="event"):
    pass


class TextDelta(_Event, frozen=True, tag="text"):
    text: str


class ToolCallDelta(_Event, frozen=True, tag="tool_call"):
    """A piece of tool call `index`: its first delta has the id and name, later ones more of
    its arguments (JSON text, in fragments)."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class Finish(_Event, frozen=True, tag="finish"):
    reason: FinishReason
    stop_sequence: str | None = None  # the request's stop string that ended it, if one did


class Usage(_Event, frozen=True, tag="usage"):
    prompt_tokens: int
    completion_tokens: int
    tokens_per_second: float | None = None  # generation speed, where llama.cpp says it
    timings: dict[str, float] | None = None  # llama-server's own `timings`, as it gave them


class Failure(_Event, frozen=True, tag="failure"):
    type: str  # the kind, as in core.errors (e.g. "upstream_error")
    message: str


Event = TextDelta | ToolCallDelta | Finish | Usage | Failure


class Answer(_Value, frozen=True):
    """A whole answer: what a non-streamed request gets. `usage` is None where llama.cpp
    gives no counts (an image's tokens in cli mode): never a made-up 0."""

    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: FinishReason = "stop"
    usage: Usage | None = None
    stop_sequence: str | None = None  # the request's stop string that ended it, if one did


def collect(events: Iterable[Event]) -> Answer:
    """The answer a sequence of events adds up to (a Failure is not part of an answer)."""
    text: list[str] = []
    calls: dict[int, list[str]] = {}
    heads: dict[int, ToolCallDelta] = {}
    finish: FinishReason = "stop"
    usage = None
    stop_sequence = None
    for event in events:
        match event:
            case TextDelta(text=piece):
                text.append(piece)
            case ToolCallDelta(index=index):
                heads.setdefault(index, event)
                calls.setdefault(index, []).append(event.arguments)
            case Finish(reason=reason):
                finish, stop_sequence = reason, event.stop_sequence
            case Usage():
                usage = event
    tool_calls = tuple(
        ToolCall(id=heads[i].id or "", name=heads[i].name or "", arguments="".join(calls[i]))
        for i in sorted(calls)
    )
    return Answer(
        text="".join(text),
        tool_calls=tool_calls,
        finish_reason=finish,
        usage=usage,
        stop_sequence=stop_sequence,
    )
