"""llama-server's OpenAI-compatible API as server mode speaks it: the bodies sent for a chat
task, and its answers, streamed or not, read back into `core.chat`'s answer and events.
(This is llama-server's wire format, not a client's: the dialects live in gateway/dialects.)"""

from __future__ import annotations

import base64
import io
import re
from typing import Any

import aiohttp
import msgspec

from backends.base import ChatTask
from core.chat import (
    Answer,
    ChatRequest,
    Event,
    Failure,
    Finish,
    FinishReason,
    ImagePart,
    Message,
    TextDelta,
    TextPart,
    ToolCall,
    Usage,
)
from core.config import LlmParams
from core.errors import ContextExceeded, UpstreamError


def sampling(p: LlmParams) -> dict[str, Any]:
    """The five sampling parameters as llama-server takes them per request (the three startup
    parameters are its flags; see supervisor.command)."""
    return {
        "temperature": p.temp,
        "top_p": p.top_p,
        "top_k": p.top_k,
        "presence_penalty": p.presence_penalty,
        "mirostat": p.mirostat,
    }


def _content(message: Message) -> str | list[dict[str, Any]]:
    """A message's content as llama-server takes it: a string, or parts when it has an image
    (each as a data URL)."""
    if len(message.content) == 1 and isinstance(message.content[0], TextPart):
        return message.content[0].text  # the common case, without building lists
    if not message.images:
        return message.text
    parts: list[dict[str, Any]] = []
    for part in message.content:
        if isinstance(part, ImagePart):
            url = f"data:{part.media_type};base64," + base64.b64encode(part.data).decode()
            parts.append({"type": "image_url", "image_url": {"url": url}})
        else:
            parts.append({"type": "text", "text": part.text})
    return parts


def _message(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": _content(message)}
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    return out


def _tools(request: ChatRequest) -> dict[str, Any]:
    """A request's tools for llama-server's own tool calling (backends.hermes: only with a
    template it calls tools in natively); a named tool has been made `required` of one."""
    if not request.tools:
        return {}
    choice = request.tool_choice if isinstance(request.tool_choice, str) else "required"
    return {
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.parameters,
                },
            }
            for t in request.tools
        ],
        "tool_choice": choice,
        "parallel_tool_calls": request.parallel_tool_calls,
    }


def chat_payload(task: ChatTask) -> dict[str, Any]:
    """The /v1/chat/completions body of a chat task."""
    request = task.request
    return {"messages": [_message(m) for m in request.messages], **_tools(request)} | _common(task)


def generation(task: ChatTask) -> tuple[str, dict[str, Any]]:
    """Where a task goes, and its body: a chat to /v1/chat/completions; a raw prompt to the
    native /completion (no chat template), or with a suffix to /infill, which formats the
    fill-in-the-middle prompt with the model's own tokens (a 501 for a model without them)."""
    request = task.request
    if request.suffix is not None:
        fill = {"input_prefix": request.prompt, "input_suffix": request.suffix, "prompt": ""}
        return "/infill", fill | _common(task)
    if request.raw:
        return "/completion", {"prompt": request.prompt} | _common(task)
    return "/v1/chat/completions", chat_payload(task)


def _common(task: ChatTask) -> dict[str, Any]:
    """What every generation's body has. A seed keeps the prompt out of the cache (a cached
    prefix can change the result), and so does an image (no pinned slot: `id_slot` is left
    to llama-server)."""
    request = task.request
    payload: dict[str, Any] = {
        "max_tokens": task.max_tokens,
        **sampling(task.params),
        "stream": False,
    }
    if request.stop:
        # `verbose`: llama-server's OpenAI answers say which stop string ended them only there.
        payload |= {"stop": list(request.stop), "verbose": True}
    if request.seed is not None:
        payload |= {"seed": request.seed, "cache_prompt": False}
    elif request.has_images:
        payload["cache_prompt"] = False
    if request.sampling.frequency_penalty is not None:
        payload["frequency_penalty"] = request.sampling.frequency_penalty
    if request.json_schema is not None:
        payload["json_schema"] = request.json_schema
    if request.grammar is not None:
        payload["grammar"] = request.grammar
    return payload


JSON = {"Content-Type": "application/json"}
TOO_LARGE = re.compile(r"input \(\d+ tokens\) is too large to process")


def json_body(payload: dict[str, Any]) -> bytes | io.BytesIO:
    """Encoded with msgspec (aiohttp's `json=` uses the slower json.dumps); over 1 MiB as a
    stream, which aiohttp writes in chunks instead of in one call on the event loop."""
    data = msgspec.json.encode(payload)
    return io.BytesIO(data) if len(data) > 2**20 else data


def _finish(reason: str | None) -> FinishReason:
    return "length" if reason == "length" else "tool_calls" if reason == "tool_calls" else "stop"


def _usage(usage: dict[str, Any] | None, timings: dict[str, Any] | None) -> Usage | None:
    """llama-server's counts (and its timings, and the generation speed in them)."""
    prompt, completion = (usage or {}).get("prompt_tokens"), (usage or {}).get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    timings = timings or None
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        tokens_per_second=timings.get("predicted_per_second") if timings else None,
        timings=timings,
    )


class _Delta(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    finish_reason: str | None = None


class _Chunk(msgspec.Struct):
    """The parts of a streamed chat.completion.chunk (or error) we read, or of a native
    /completion or /infill event (`content`, and `stop` true on the last one)."""

    choices: list[_Choice] = []
    usage: dict[str, Any] | None = None
    timings: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    verbose: dict[str, Any] | None = msgspec.field(default=None, name="__verbose")
    content: str | None = None
    stop: bool = False
    stop_type: str = ""
    stopping_word: str = ""
    tokens_evaluated: int | None = None
    tokens_predicted: int | None = None

    def native(self) -> list[Event]:
        """A native event's text, and on the last one its finish and counts."""
        found: list[Event] = [TextDelta(text=self.content)] if self.content else []
        if self.stop:
            found.append(_native_finish(self.stop_type, self.stopping_word))
            if (usage := _native_usage(self)) is not None:
                found.append(usage)
        return found


def _native_usage(answer: _Chunk | Upstream) -> Usage | None:
    counts = {"prompt_tokens": answer.tokens_evaluated}
    return _usage(counts | {"completion_tokens": answer.tokens_predicted}, answer.timings)


def _native_finish(stop_type: str, stopping_word: str) -> Finish:
    """llama-server's native `stop_type` (eos, limit, word) as our finish."""
    if stop_type == "limit":
        return Finish(reason="length")
    word = stopping_word if stop_type == "word" and stopping_word else None
    return Finish(reason="stop", stop_sequence=word)


def _stopped_by(verbose: dict[str, Any] | None) -> str | None:
    """The stop string that ended an answer, from llama-server's `__verbose` (requests with
    `stop` ask for it)."""
    if not verbose or verbose.get("stop_type") != "word":
        return None
    word = verbose.get("stopping_word")
    return word if isinstance(word, str) and word else None


_decode_chunk = msgspec.json.Decoder(_Chunk).decode


def events_of(sse: bytes) -> list[Event]:
    """Our events in one of llama-server's SSE events (`data: {...}`; `[DONE]` has none,
    nor a comment: llama-server sends `:` to keep the connection alive while it evaluates a
    long prompt, e.g. Codex's 17 KB of instructions)."""
    if sse.startswith(b":"):  # a comment, perhaps with the event's data after it
        sse = b"\n".join(line for line in sse.splitlines() if not line.startswith(b":"))
    data = sse.strip().removeprefix(b"data:").strip()
    if not data or data == b"[DONE]":
        return []
    try:
        chunk = _decode_chunk(data)
    except msgspec.DecodeError as exc:
        raise UpstreamError(f"llama-server streamed invalid JSON: {exc}") from None
    if chunk.error is not None:
        message = str(chunk.error.get("message") or chunk.error)
        return [Failure(type="upstream_error", message=f"llama-server: {message}")]
    if not chunk.choices and (chunk.content is not None or chunk.stop):
        return chunk.native()
    found: list[Event] = []
    for choice in chunk.choices[:1]:
        if choice.delta is not None and choice.delta.content:
            found.append(TextDelta(text=choice.delta.content))
        if choice.finish_reason is not None:
            stop = _stopped_by(chunk.verbose)
            found.append(Finish(reason=_finish(choice.finish_reason), stop_sequence=stop))
    if (usage := _usage(chunk.usage, chunk.timings)) is not None:
        found.append(usage)
    return found


class Upstream(msgspec.Struct):
    """The parts of llama-server's answers we read."""

    choices: list[dict[str, Any]] = []
    usage: dict[str, Any] = {}
    data: list[dict[str, Any]] = []
    timings: dict[str, Any] = {}
    verbose: dict[str, Any] | None = msgspec.field(default=None, name="__verbose")
    prompt: str = ""  # POST /apply-template
    tokens: list[Any] = []  # POST /tokenize
    content: str | None = None  # POST /completion and /infill, with what follows
    stop_type: str = ""
    stopping_word: str = ""
    tokens_evaluated: int | None = None
    tokens_predicted: int | None = None


def decode(body: bytes) -> Upstream:
    try:
        return msgspec.json.decode(body, type=Upstream)
    except msgspec.DecodeError as exc:
        raise UpstreamError(f"llama-server answered invalid JSON: {exc}") from None


def _error_object(body: bytes) -> dict[str, Any] | None:
    """The `error` object of llama-server's own error answer; None for any other body."""
    try:
        error = msgspec.json.decode(body).get("error")
    except (msgspec.DecodeError, AttributeError):
        return None
    return error if isinstance(error, dict) else None


def llama_error(body: bytes) -> str | None:
    """The message of llama-server's own error answer (`{"error": {"message": ...}}`), or
    None when the body is not one: then something other than llama-server's handlers
    answered (a proxy or another server at its address, or cpp-httplib refusing a request
    it could not read, with an empty body)."""
    message = (_error_object(body) or {}).get("message")
    return message if isinstance(message, str) else None


def context_exceeded(body: bytes) -> ContextExceeded | None:
    """llama-server's error for a prompt over a slot's context, as ours (None: not that)."""
    error = _error_object(body) or {}
    if error.get("type") != "exceed_context_size_error":
        return None
    tokens, limit = error.get("n_prompt_tokens"), error.get("n_ctx")
    if not isinstance(tokens, int) or not isinstance(limit, int):
        return None
    return ContextExceeded(tokens, limit)


def upstream_message(body: bytes) -> str:
    try:
        error = msgspec.json.decode(body).get("error", {})
        return str(error.get("message") or error)
    except (msgspec.DecodeError, AttributeError):
        return body[:500].decode(errors="replace")


def answer_of(answer: Upstream) -> Answer:
    """A non-streamed chat.completion of llama-server's (or a native /completion or /infill
    answer) as our answer."""
    if answer.content is not None:
        finish = _native_finish(answer.stop_type, answer.stopping_word)
        return Answer(
            text=answer.content,
            finish_reason=finish.reason,
            usage=_native_usage(answer),
            stop_sequence=finish.stop_sequence,
        )
    try:
        choice = answer.choices[0]
        calls = choice["message"].get("tool_calls") or []
        return Answer(
            text=choice["message"]["content"] or "",
            tool_calls=tuple(_call(call) for call in calls),
            finish_reason=_finish(choice.get("finish_reason")),
            usage=_usage(answer.usage, answer.timings),
            stop_sequence=_stopped_by(answer.verbose),
        )
    except (IndexError, KeyError, TypeError) as exc:
        raise UpstreamError(f"llama-server answered an unexpected shape: {exc!r}") from None


def _call(call: dict[str, Any]) -> ToolCall:
    """One call llama-server's parser found (arguments as the model wrote them)."""
    function = call["function"]
    return ToolCall(id=call.get("id") or "", name=function["name"], arguments=function["arguments"])


async def read_event(content: aiohttp.StreamReader) -> bytes | None:
    """The next complete SSE event (its lines and the blank line ending it), None at the end."""
    lines: list[bytes] = []
    while line := await content.readline():
        if line.strip():
            lines.append(line)
        elif lines:
            return b"".join(lines) + b"\n"
    return b"".join(lines) + b"\n" if lines else None
