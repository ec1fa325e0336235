"""Ollama's answers to /api/chat and /api/generate: one JSON object, or NDJSON
(`application/x-ndjson`) lines, each a piece of the answer with `done: false`, then the last
with `done: true`, `done_reason` and the counts and durations in nanoseconds. A stream that
fails after it started ends with an `{"error": "..."}` line, as Ollama's does.

The durations come from llama.cpp's own timings (llama-server's `timings`; in cli mode the
perf lines llama-completion prints as it exits, which a run stopped at a stop string never
gets to: its prompt and generation durations are then 0, never made up).
`total_duration` is the gateway's own clock from the request's arrival, and `load_duration`
what is left of it after the prompt and the generation (waiting for a slot, loading)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import UTC, datetime
from typing import Any

import msgspec

from core import chat

MEDIA_TYPE = "application/x-ndjson"
_MS = 1_000_000  # nanoseconds in a millisecond

_encode = msgspec.json.Encoder().encode


def line(body: object) -> bytes:
    return _encode(body) + b"\n"


def error_line(message: str) -> bytes:
    """How a stream that already started reports a failure."""
    return line({"error": message})


def created_at() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def durations(usage: chat.Usage | None, started_ns: int) -> dict[str, int]:
    """The counts and durations (ns) of Ollama's last line, from llama.cpp's timings."""
    total = time.monotonic_ns() - started_ns
    if usage is None:
        return {"total_duration": total, "load_duration": 0}
    timings = usage.timings or {}
    prompt_ns = int(timings.get("prompt_ms", 0) * _MS)
    if "predicted_ms" in timings:
        eval_ns = int(timings["predicted_ms"] * _MS)
    elif usage.tokens_per_second:
        eval_ns = int(usage.completion_tokens / usage.tokens_per_second * 1e9)
    else:
        eval_ns = 0
    return {
        "total_duration": total,
        "load_duration": max(total - prompt_ns - eval_ns, 0),
        "prompt_eval_count": usage.prompt_tokens,
        "prompt_eval_duration": prompt_ns,
        "eval_count": usage.completion_tokens,
        "eval_duration": eval_ns,
    }


def arguments_of(text: str) -> dict[str, Any]:
    """A call's JSON text as the object Ollama sends (the tool machinery checked it is one)."""
    try:
        value = json.loads(text) if text.strip() else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def tool_calls_out(calls: tuple[chat.ToolCall, ...]) -> list[dict[str, Any]]:
    return [
        {
            "id": c.id,
            "function": {"index": i, "name": c.name, "arguments": arguments_of(c.arguments)},
        }
        for i, c in enumerate(calls)
    ]


def done_reason(reason: chat.FinishReason) -> str:
    """Ollama ends an answer with calls as any other: `stop`."""
    return "length" if reason == "length" else "stop"


class Writer:
    """The objects of one answer, for /api/chat (`message`) or /api/generate (`response`)."""

    def __init__(self, model: str, started_ns: int, *, generate: bool) -> None:
        self.model = model
        self.started_ns = started_ns
        self.generate = generate

    def _object(self, text: str, calls: tuple[chat.ToolCall, ...], **rest: Any) -> dict[str, Any]:
        head: dict[str, Any] = {"model": self.model, "created_at": created_at()}
        if self.generate:
            return head | {"response": text, **rest}
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if calls:
            message["tool_calls"] = tool_calls_out(calls)
        return head | {"message": message, **rest}

    def piece(self, text: str, calls: tuple[chat.ToolCall, ...] = ()) -> bytes:
        return line(self._object(text, calls, done=False))

    def last(self, text: str, answer: chat.Answer) -> dict[str, Any]:
        """The closing object: the answer's `text` and calls (all of it, or none when
        streamed), `done`, and the counts."""
        return self._object(
            text,
            answer.tool_calls,
            done=True,
            done_reason=done_reason(answer.finish_reason),
            **durations(answer.usage, self.started_ns),
        )

    def whole(self, answer: chat.Answer) -> dict[str, Any]:
        """A non-streamed answer: one object."""
        return self.last(answer.text, answer)

    def status(self, reason: str) -> dict[str, Any]:
        """The answer to a request without a prompt: the model was loaded or unloaded."""
        return self._object("", (), done=True, done_reason=reason)


async def lines(events: AsyncIterator[chat.Event], writer: Writer) -> AsyncGenerator[bytes, None]:
    """The answer's NDJSON: text as it comes; tool calls in one line once they are whole
    (Ollama's calls carry their arguments as an object, which can't come in fragments); the
    closing line; or an error line, after which nothing follows."""
    kept: list[chat.Event] = []  # the calls, the finish and the counts, for the last lines
    async for event in events:
        match event:
            case chat.TextDelta(text=text):
                yield writer.piece(text)
            case chat.Failure(message=message):
                yield error_line(message)
                return
            case _:
                kept.append(event)
    answer = chat.collect(kept)
    if answer.tool_calls:
        yield writer.piece("", answer.tool_calls)
    yield line(writer.last("", msgspec.structs.replace(answer, tool_calls=())))


async def replayed(answer: chat.Answer, writer: Writer) -> AsyncGenerator[bytes, None]:
    """A whole answer (an image's: never streamed by the backends) as a stream's lines."""
    if answer.text or answer.tool_calls:
        yield writer.piece(answer.text, answer.tool_calls)
    yield line(writer.last("", msgspec.structs.replace(answer, tool_calls=())))


def embed_answer(
    model: str, vectors: list[list[float]], tokens: int | None, started_ns: int
) -> dict[str, Any]:
    """/api/embed's answer."""
    total = time.monotonic_ns() - started_ns
    counts = {"prompt_eval_count": tokens} if tokens is not None else {}
    return {
        "model": model,
        "embeddings": vectors,
        "total_duration": total,
        "load_duration": 0,
        **counts,
    }
