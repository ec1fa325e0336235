"""Ollama's dialect (the Ollama port's /api/chat, /api/generate, /api/embed, /api/embeddings):
its request bodies, field by field as ollama's `api/types.go` has them, decoded into
`core.chat.ChatRequest`. Its answers are `gateway.dialects.ollama_answers`.

Where Ollama and we differ, the table is:
- `stream` is true unless the body says false.
- `options` are Ollama's (`temperature`, `num_predict`, ...): a known option of the wrong type
  is a 400 with Ollama's message; the ones we map go onto our parameters (`Options`), the
  others (`num_ctx`, `num_gpu`, `min_p`, ...) are accepted and ignored, as Ollama ignores
  unknown ones. `num_ctx` sets a startup parameter of llama-server: the model runs at its
  configured context, whatever a request says.
- `format`: "json" (any JSON object) or a JSON schema, which the answer then follows.
- `images`: base64, decoded here, checked and re-encoded by the gateway's image path.
- `tools` are OpenAI's tool definitions (`gateway.dialects.openai_tools` checks them); an
  assistant's `tool_calls` have `arguments` as an object, and a `tool` message answers a call
  by `tool_call_id`, else by `tool_name`, else the oldest call not yet answered.
- `think` is accepted: the models here don't reason, so they answer without thinking.
- `/api/generate`'s `raw` prompt goes to the model as it is; a `template` (Go's text/template,
  `gateway.dialects.ollama_template`) builds it instead of the model's chat template; a
  `suffix` is filled in the middle by the model's own FIM tokens (a 400 for a model without).
- Errors are `{"error": "text"}` (`gateway.dialects.ollama_common.render`): 400 for a bad
  field or image, 404 for an unknown model (the route resolves names: `x:latest` is `x`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from backends.vision import decode_base64_image
from core import chat
from core.config import Mirostat, PresencePenalty, Temp, TopK, TopP
from core.errors import BadRequest
from gateway.dialects.ollama_template import TemplateValues, render
from gateway.dialects.openai import Seed, Stop, checked_schema
from gateway.dialects.openai_tools import ToolDef, check_results, tools_of

# The longest `template` taken: model templates are a few KB; rendering is bounded anyway.
TEMPLATE_MAX = 64 * 1024

# Ollama's own options and the JSON type each takes (ollama's api.Options and api.Runner,
# with the ones older clients still send): a value of another type is a 400, as in Ollama.
_INT, _FLOAT, _BOOL, _ARRAY = "integer", "float32", "boolean", "array"
_INTS = "num_keep seed num_predict top_k repeat_last_n mirostat num_ctx num_batch num_gpu"
_INTS += " main_gpu num_thread draft_num_predict"
_FLOATS = "top_p min_p typical_p temperature repeat_penalty presence_penalty frequency_penalty"
_FLOATS += " mirostat_tau mirostat_eta tfs_z"
_BOOLS = "use_mmap use_mlock numa low_vram f16_kv vocab_only penalize_newline"
KNOWN_OPTIONS: dict[str, str] = {
    **dict.fromkeys(_INTS.split(), _INT),
    **dict.fromkeys(_FLOATS.split(), _FLOAT),
    **dict.fromkeys(_BOOLS.split(), _BOOL),
    "stop": _ARRAY,
}


class Options(msgspec.Struct, kw_only=True):
    """The options we apply, with our ranges (the wire name is Ollama's; the comment is ours):
    a value out of range is a 400 naming `options.NAME`."""

    temperature: Temp | None = None  # sampling.temp
    top_p: TopP | None = None  # sampling.top_p
    top_k: TopK | None = None  # sampling.top_k
    presence_penalty: PresencePenalty | None = None  # sampling.presence_penalty
    frequency_penalty: PresencePenalty | None = None  # sampling.frequency_penalty
    mirostat: Mirostat | None = None  # sampling.mirostat
    seed: Seed | None = None  # seed (a negative one: Ollama's "random", none)
    stop: Annotated[list[Stop], Meta(max_length=16)] | None = None  # stop
    num_predict: int | None = None  # max_tokens (-1, -2 or 0: the configured default)

    def sampling(self) -> chat.Sampling:
        return chat.Sampling(
            temp=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            mirostat=self.mirostat,
        )

    @property
    def max_tokens(self) -> int | None:
        return self.num_predict if self.num_predict and self.num_predict > 0 else None


def _typed(key: str, value: object) -> object:
    """`value` as option `key`'s JSON type (a float for an integer option is truncated, as
    Ollama does); Ollama's message for another type."""
    kind = KNOWN_OPTIONS[key]
    if isinstance(value, int | float) and not isinstance(value, bool):
        if kind == _INT:
            return int(value)
        if kind == _FLOAT:
            return float(value)
    if kind == _BOOL and isinstance(value, bool):
        return value
    if kind == _ARRAY and isinstance(value, list):
        if not all(isinstance(item, str) for item in value):
            raise BadRequest(
                f'option "{key}" must be of an array of strings', param=f"options.{key}"
            )
        return value
    raise BadRequest(f'option "{key}" must be of type {kind}', param=f"options.{key}")


_PATH = re.compile(r"`\$\.(\w+)")


def options_of(given: dict[str, Any] | None) -> Options:
    """Ollama's `options` as ours: each known one type-checked, the mapped ones range-checked,
    unknown ones ignored (as Ollama ignores them)."""
    typed = {
        k: _typed(k, v) for k, v in (given or {}).items() if k in KNOWN_OPTIONS and v is not None
    }
    if isinstance(seed := typed.get("seed"), int) and seed < 0:
        del typed["seed"]
    mapped = {k: v for k, v in typed.items() if k in Options.__struct_fields__}
    try:
        return msgspec.convert(mapped, Options)
    except msgspec.ValidationError as exc:
        message = _PATH.sub(r"`$.options.\1", str(exc))
        match = _PATH.search(str(exc))
        raise BadRequest(
            message, param=f"options.{match.group(1)}" if match else "options"
        ) from None


def schema_of(format: str | dict[str, Any] | None) -> dict[str, Any] | None:
    """`format`: "json" is any JSON object; a schema is bounded as /v1's; "" or none, text."""
    if format is None or format == "":
        return None
    if format == "json":
        return {"type": "object"}
    if isinstance(format, str):
        raise BadRequest(f'format must be "json" or a JSON schema, not {format!r}', param="format")
    return checked_schema(format, "format", "format")


# Messages.


class CalledFunction(msgspec.Struct, kw_only=True):
    name: str
    arguments: dict[str, Any] = {}  # an object, where OpenAI has JSON text
    index: int | None = None


class ToolCall(msgspec.Struct, kw_only=True):
    function: CalledFunction
    id: str | None = None


class Message(msgspec.Struct, kw_only=True):
    role: str  # Ollama lowercases it
    content: str | None = ""  # null is "", as Go decodes it
    thinking: str = ""  # an earlier answer's thinking: not sent to the model, as in Ollama
    images: list[str] | None = None  # base64
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None  # a tool message: the function whose result it is
    tool_call_id: str | None = None  # a tool message: the call it answers


_ROLES: dict[str, chat.Role] = {
    "system": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}


def images_of(images: list[str] | None, field: str) -> tuple[chat.Part, ...]:
    """Each base64 image's bytes; a 400 naming the one that is not base64."""
    parts: list[chat.Part] = []
    for j, text in enumerate(images or []):
        try:
            parts.append(chat.ImagePart(data=decode_base64_image(text)))
        except BadRequest:
            raise BadRequest(
                f"{field}[{j}] is not base64 image data", param=f"{field}[{j}]"
            ) from None
    return tuple(parts)


def _answered(message: Message, pending: list[chat.ToolCall]) -> str | None:
    """The call a tool message answers (taken off `pending`): by id, by name, else the oldest."""
    for call in pending:
        if message.tool_call_id is not None:
            if call.id != message.tool_call_id:
                continue
        elif message.tool_name and call.name != message.tool_name:
            continue
        pending.remove(call)
        return call.id
    return message.tool_call_id


def messages_of(wire: list[Message]) -> tuple[chat.Message, ...]:
    """Ours: images first, then the text; calls without an id get one (`call_I_J`), which
    the tool messages after them answer."""
    pending: list[chat.ToolCall] = []
    out: list[chat.Message] = []
    for i, m in enumerate(wire):
        role = _ROLES.get(m.role.lower())
        if role is None:
            raise BadRequest(f"messages[{i}]: unknown role {m.role!r}", param=f"messages[{i}].role")
        calls = tuple(
            chat.ToolCall(
                id=c.id or f"call_{i}_{j}",
                name=c.function.name,
                arguments=msgspec.json.encode(c.function.arguments).decode(),
            )
            for j, c in enumerate(m.tool_calls or [])
        )
        pending += calls
        text = (chat.TextPart(text=m.content),) if m.content else ()
        out.append(
            chat.Message(
                role=role,
                content=images_of(m.images, f"messages[{i}].images") + text,
                tool_calls=calls,
                tool_call_id=_answered(m, pending) if role == "tool" else None,
            )
        )
    check_results(out)
    return tuple(out)


# Requests.

KeepAlive = str | int | float | None  # "5m", seconds, -1 for ever: the pool reads it
Think = bool | str | None  # true/false, or "high", "medium", "low"


class _Common(msgspec.Struct, kw_only=True):
    model: str = ""
    stream: bool = True
    format: str | dict[str, Any] | None = None
    keep_alive: KeepAlive = None
    options: dict[str, Any] | None = None
    think: Think = None  # accepted: the models here answer without thinking
    truncate: bool | None = None  # accepted: a prompt over the context is an error
    shift: bool | None = None  # accepted: llama.cpp's own context handling applies
    logprobs: bool = False
    top_logprobs: int = 0

    def _request(self, messages: tuple[chat.Message, ...], **extra: Any) -> chat.ChatRequest:
        if self.logprobs or self.top_logprobs:
            raise BadRequest("not supported by this server: logprobs", param="logprobs")
        options = options_of(self.options)
        return chat.ChatRequest(
            messages=messages,
            model=self.model or None,  # resolved by the route (x:latest is x)
            sampling=options.sampling(),
            max_tokens=options.max_tokens,
            stop=tuple(dict.fromkeys(s for s in options.stop or [] if s)),
            seed=options.seed,
            json_schema=schema_of(self.format),
            stream=self.stream,
            **extra,
        )


class ChatBody(_Common, kw_only=True):
    """POST /api/chat. No messages: the model is loaded (or unloaded), nothing generated."""

    messages: list[Message] = []
    tools: list[ToolDef] | None = None

    @property
    def no_prompt(self) -> bool:
        return not self.messages

    def decode(self) -> chat.ChatRequest:
        tools = tools_of(self.tools, None)
        return self._request(messages_of(self.messages), tools=tools)


class GenerateBody(_Common, kw_only=True):
    """POST /api/generate: `prompt` (with `system` and `images`) as one user turn. No
    prompt: the model is loaded (or unloaded), nothing generated."""

    prompt: str | None = ""  # null is "", as Go decodes it
    suffix: str = ""
    system: str = ""
    template: Annotated[str, Meta(max_length=TEMPLATE_MAX)] = ""
    context: list[int] | None = None
    raw: bool = False
    images: list[str] | None = None

    @property
    def no_prompt(self) -> bool:
        return not self.prompt and not self.images

    def decode(self) -> chat.ChatRequest:
        """`raw`: the prompt as it is; `template`: the prompt that Go template builds
        (`gateway.dialects.ollama_template`), then as it is; `suffix`: the middle between the
        prompt and it, by the model's fill-in-the-middle tokens; otherwise the model's chat
        template on the system prompt and the prompt (with its images). Rendering a template
        takes up to a few hundred ms: the route calls this in a worker thread then."""
        if self.raw and (self.template or self.system or self.context):
            raise BadRequest("raw mode does not support template, system, or context", param="raw")
        if self.context:
            raise BadRequest(
                "context: this server does not return or take one: send the conversation"
                " to /api/chat",
                param="context",
            )
        if self.images and (self.raw or self.suffix or self.template):
            what = "raw" if self.raw else "template" if self.template else "suffix"
            raise BadRequest(f"images need the model's template: not with {what}", param="images")
        if self.template:
            # Ollama's template builds the whole prompt: the suffix too, when it takes one.
            values = TemplateValues(
                system=self.system, prompt=self.prompt or "", suffix=self.suffix
            )
            prompt = (chat.Message.of("user", render(self.template, values)),)
            return self._request(prompt, raw=True)
        if self.raw or self.suffix:
            prompt = (chat.Message.of("user", self.prompt or ""),)
            return self._request(prompt, raw=True, suffix=self.suffix or None)
        system = (chat.Message.of("system", self.system),) if self.system else ()
        parts = (*images_of(self.images, "images"), chat.TextPart(text=self.prompt or ""))
        return self._request((*system, chat.Message(role="user", content=parts)))


class EmbedBody(msgspec.Struct, kw_only=True):
    """POST /api/embed. An empty input embeds nothing (clients send one to load the model)."""

    model: str = ""
    input: str | list[str] = []
    truncate: bool | None = None  # accepted: an input over the model's batch is an error
    dimensions: int | None = None
    keep_alive: KeepAlive = None
    options: dict[str, Any] | None = None

    def inputs(self) -> list[str]:
        if self.dimensions:
            raise BadRequest("not supported by this server: dimensions", param="dimensions")
        options_of(self.options)
        return (
            [self.input] if isinstance(self.input, str) and self.input else list(self.input or [])
        )


class EmbeddingsBody(msgspec.Struct, kw_only=True):
    """POST /api/embeddings, the older route: one `prompt`, one `embedding`."""

    model: str = ""
    prompt: str = ""
    keep_alive: KeepAlive = None
    options: dict[str, Any] | None = None

    def inputs(self) -> list[str]:
        options_of(self.options)
        return [self.prompt] if self.prompt else []
