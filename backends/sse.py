"""Server-sent events in the OpenAI `chat.completion.chunk` shape: the one streaming format of
both modes (llama-server's own events are passed through as they are)."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import msgspec

from backends.ids import unique_id

DONE = b"data: [DONE]\n\n"

_encode = msgspec.json.Encoder().encode


def event(data: object) -> bytes:
    return b"data: " + _encode(data) + b"\n\n"


def error_event(type_: str, message: str) -> bytes:
    """How a stream that already started reports a failure: not a silent cut."""
    return event({"error": {"type": type_, "code": type_, "message": message}})


async def read_event(content: aiohttp.StreamReader) -> bytes | None:
    """The next complete event (its lines and the blank line ending it), None at the end."""
    lines: list[bytes] = []
    while line := await content.readline():
        if line.strip():
            lines.append(line)
        elif lines:
            return b"".join(lines) + b"\n"
    return b"".join(lines) + b"\n" if lines else None


class ChunkWriter:
    """Builds the chunks of one streamed completion."""

    def __init__(self, model: str) -> None:
        self.id = f"chatcmpl-{unique_id()}"
        self.created = int(time.time())
        self.model = model
        self._started = False

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return event(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": choices,
                **extra,
            }
        )

    def delta(self, text: str) -> bytes:
        delta = {"content": text} if self._started else {"role": "assistant", "content": text}
        self._started = True
        return self._chunk([{"index": 0, "delta": delta, "finish_reason": None}])

    def finish(self, reason: str) -> bytes:
        return self._chunk([{"index": 0, "delta": {}, "finish_reason": reason}])

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        return self._chunk([], usage=usage)
