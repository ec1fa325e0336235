"""A Responses answer: the `response` object a request gets whole, and the events of one
streamed, each with its `type` and a `sequence_number` counting from 0:

    response.created, response.in_progress
    per output item: response.output_item.added,
      a message: response.content_part.added, response.output_text.delta...,
                 response.output_text.done, response.content_part.done
      a call:    response.function_call_arguments.delta..., .done
    response.output_item.done
    response.completed (response.incomplete at the token budget)

A failure after the start is an `error` event, then `response.failed`; nothing follows."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Literal

import msgspec

from backends.ids import unique_id
from core import chat
from gateway.dialects.responses import ResponsesRequest

Status = Literal["in_progress", "completed", "incomplete", "failed"]


class Head(msgspec.Struct, kw_only=True):
    """What every state of one response repeats: its id and the request's settings."""

    id: str
    created_at: int
    model: str
    namespaces: dict[str, str]
    echo: dict[str, Any]

    @classmethod
    def of(cls, body: ResponsesRequest, model: str, namespaces: dict[str, str]) -> Head:
        text = msgspec.to_builtins(body.text.format) if body.text and body.text.format else None
        choice = body.tool_choice
        echo = {
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "metadata": body.metadata or {},
            "parallel_tool_calls": body.parallel_tool_calls is not False,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "store": False,
            "temperature": body.temperature,
            "text": {"format": text or {"type": "text"}},
            "tool_choice": msgspec.to_builtins(choice) if choice is not None else "auto",
            "tools": body.tools or [],
            "top_p": body.top_p,
            "truncation": "disabled",
            "user": body.user,
        }
        return cls(
            id=f"resp_{unique_id()}",
            created_at=int(time.time()),
            model=model,
            namespaces=namespaces,
            echo=echo,
        )

    def response(
        self,
        status: Status,
        output: list[dict[str, Any]],
        usage: chat.Usage | None = None,
        error: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
        done = {"completed_at": int(time.time())} if status == "completed" else {}
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": error,
            "incomplete_details": incomplete,
            "model": self.model,
            "output": output,
            "usage": usage_of(usage) if usage is not None else None,
            **done,
            **self.echo,
        }

    def call(self, call: chat.ToolCall, status: str = "completed") -> dict[str, Any]:
        """A `function_call` output item; with its `namespace` where the function came from one."""
        item: dict[str, Any] = {
            "id": f"fc_{unique_id()}",
            "type": "function_call",
            "status": status,
            "call_id": call.id,
            "name": call.name,
            "arguments": call.arguments,
        }
        if (space := self.namespaces.get(call.name)) is not None:
            item["namespace"] = space
        return item


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message(text: str | None, status: str = "completed") -> dict[str, Any]:
    """A `message` output item; without content while it is only announced."""
    content = [text_part(text)] if text is not None else []
    return {
        "id": f"msg_{unique_id()}",
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def usage_of(usage: chat.Usage) -> dict[str, Any]:
    """The counts; the prompt tokens llama-server found in its cache as `cached_tokens`."""
    cached = int((usage.timings or {}).get("cache_n", 0))
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def response_of(answer: chat.Answer, head: Head) -> dict[str, Any]:
    """A finished response: its text as one message (also when empty and no call was made),
    then its calls; `incomplete` when it stopped at its token budget."""
    status: Status = "incomplete" if answer.finish_reason == "length" else "completed"
    output = [message(answer.text, status)] if answer.text or not answer.tool_calls else []
    output += [head.call(call, status) for call in answer.tool_calls]
    return head.response(status, output, answer.usage)


# The stream.

_encode = msgspec.json.Encoder().encode


class _Item:
    """The output item being written: a message (`call` None) or call `call`."""

    def __init__(self, index: int, item: dict[str, Any], call: int | None = None) -> None:
        self.index = index
        self.item = item
        self.call = call
        self.pieces: list[str] = []


class Writer:
    """The events of one streamed response, numbered in order."""

    def __init__(self, head: Head) -> None:
        self.head = head
        self.sequence = 0
        self.output: list[dict[str, Any]] = []
        self.open: _Item | None = None
        self.reason: chat.FinishReason = "stop"
        self.usage: chat.Usage | None = None

    def event(self, type_: str, **fields: Any) -> bytes:
        data = {"type": type_, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return b"event: " + type_.encode() + b"\ndata: " + _encode(data) + b"\n\n"

    def start(self) -> bytes:
        response = self.head.response("in_progress", [])
        return self.event("response.created", response=response) + self.event(
            "response.in_progress", response=response
        )

    def on(self, event: chat.Event) -> bytes:
        match event:
            case chat.TextDelta(text=text):
                return self._text(text)
            case chat.ToolCallDelta():
                return self._call(event)
            case chat.Finish(reason=reason):
                self.reason = reason
                return self._close()
            case chat.Usage():
                self.usage = event
            case chat.Failure(type=type_, message=text):
                return self._failed(type_, text)
        return b""

    def end(self) -> bytes:
        """The last events: any item still open closed, then the whole response."""
        out = self._close()
        if not self.output:  # no text, no call: one empty message, as a non-streamed answer
            out += self._open_message() + self._close()
        status: Status = "incomplete" if self.reason == "length" else "completed"
        response = self.head.response(status, self.output, self.usage)
        return out + self.event(f"response.{status}", response=response)

    def _where(self, item: _Item) -> dict[str, Any]:
        return {"item_id": item.item["id"], "output_index": item.index}

    def _open_message(self) -> bytes:
        item = self.open = _Item(len(self.output), message(None, "in_progress"))
        return self.event(
            "response.output_item.added", output_index=item.index, item=item.item
        ) + self.event(
            "response.content_part.added", **self._where(item), content_index=0, part=text_part("")
        )

    def _text(self, text: str) -> bytes:
        out = b""
        if self.open is None or self.open.call is not None:
            out = self._close() + self._open_message()
        assert self.open is not None
        self.open.pieces.append(text)
        return out + self.event(
            "response.output_text.delta",
            **self._where(self.open),
            content_index=0,
            delta=text,
            logprobs=[],
        )

    def _call(self, delta: chat.ToolCallDelta) -> bytes:
        out = b""
        if self.open is None or self.open.call != delta.index:
            out = self._close()
            call = chat.ToolCall(id=delta.id or "", name=delta.name or "", arguments="")
            item = self.open = _Item(
                len(self.output), self.head.call(call, "in_progress"), delta.index
            )
            out += self.event("response.output_item.added", output_index=item.index, item=item.item)
        if not delta.arguments:
            return out
        self.open.pieces.append(delta.arguments)
        return out + self.event(
            "response.function_call_arguments.delta",
            **self._where(self.open),
            delta=delta.arguments,
        )

    def _close(self) -> bytes:
        """The open item's last events, and the item into the output."""
        item, self.open = self.open, None
        if item is None:
            return b""
        status = "incomplete" if self.reason == "length" else "completed"
        whole = "".join(item.pieces)
        where = self._where(item)
        if item.call is not None:
            done = item.item | {"arguments": whole, "status": status}
            out = self.event("response.function_call_arguments.done", **where, arguments=whole)
        else:
            part = text_part(whole)
            done = item.item | {"content": [part], "status": status}
            out = self.event(
                "response.output_text.done", **where, content_index=0, text=whole, logprobs=[]
            ) + self.event("response.content_part.done", **where, content_index=0, part=part)
        self.output.append(done)
        return out + self.event("response.output_item.done", output_index=item.index, item=done)

    def _failed(self, type_: str, text: str) -> bytes:
        error = {"code": "server_error", "message": text}
        response = self.head.response("failed", self.output, self.usage, error)
        return self.event("error", code=type_, message=text, param=None) + self.event(
            "response.failed", response=response
        )


async def stream(events: AsyncIterator[chat.Event], head: Head) -> AsyncGenerator[bytes, None]:
    """The response's events. `response.created` waits for the backend's first event, so a
    failure before it (queue full, no backend) is still an HTTP error a client retries."""
    writer = Writer(head)
    started = False
    async for event in events:
        out = b"" if started else writer.start()
        started = True
        out += writer.on(event)
        if out:
            yield out
        if isinstance(event, chat.Failure):
            return
    yield (b"" if started else writer.start()) + writer.end()
