"""The Anthropic dialect as a table: what each field decodes into, what a bad one gets, the
statuses and types of our errors, and the event sequence of a stream (issue 27)."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

import anyio
import msgspec
import pytest

from backends.llama_api import events_of
from core import chat
from core.errors import (
    AiServerError,
    BackendTimeout,
    BackendUnavailable,
    BadRequest,
    ContextExceeded,
    ModelExceedsBudget,
    ModelNotFound,
    Overloaded,
    Unauthorized,
    UpstreamError,
)
from gateway.budgets import RateLimited
from gateway.dialects import anthropic
from gateway.dialects.anthropic import MessagesRequest, Ping
from gateway.keepalive import with_ticks
from tests.claude_code import request

BASE: dict[str, Any] = {
    "model": "m",
    "max_tokens": 8,
    "messages": [{"role": "user", "content": "Hi"}],
}


def decoded(**changes: Any) -> chat.ChatRequest:
    return msgspec.json.decode(json.dumps(BASE | changes), type=MessagesRequest).decode()


def test_claude_code_request_decodes_without_the_billing_line() -> None:
    req = msgspec.json.decode(json.dumps(request("m")), type=MessagesRequest).decode()
    assert len(req.tools) == 24 and req.max_tokens == 32000
    system, user, inner = req.messages
    assert system.role == "system" and system.text.startswith("You are Claude Code")
    assert "x-anthropic-billing-header" not in system.text
    assert user.role == "user" and inner.role == "system"  # kept where Claude Code put it


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"system": "Be brief."}, ("system", "user")),
        ({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}]},
         ("system", "user")),
        ({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}, ("user",)),
    ],
)  # fmt: skip
def test_roles(changes: dict[str, Any], expected: tuple[str, ...]) -> None:
    assert tuple(m.role for m in decoded(**changes).messages) == expected


def test_tool_use_and_result_become_a_call_and_a_tool_turn() -> None:
    messages = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hm", "signature": "x"},
            {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                {"type": "text", "text": "Sunny"}]},
            {"type": "text", "text": "And tomorrow?"}]},
    ]  # fmt: skip
    tools = [{"name": "w", "input_schema": {"type": "object"}}]
    req = decoded(messages=messages, tools=tools, tool_choice={"type": "tool", "name": "w"})
    _, assistant, result, follow = req.messages
    assert assistant.tool_calls == (
        chat.ToolCall(id="toolu_1", name="w", arguments='{"city": "Paris"}'),
    )
    assert (result.role, result.tool_call_id, result.text) == ("tool", "toolu_1", "Sunny")
    assert (follow.role, follow.text) == ("user", "And tomorrow?")
    assert req.tool_choice == chat.NamedTool(name="w")


@pytest.mark.parametrize(
    ("wire", "ours"),
    [(None, "auto"), ({"type": "auto"}, "auto"), ({"type": "any"}, "required"),
     ({"type": "none"}, "none")],
)  # fmt: skip
def test_tool_choice(wire: dict[str, Any] | None, ours: str) -> None:
    tools = [{"name": "w", "input_schema": {"type": "object"}}]
    choice = {"tool_choice": wire} if wire else {}
    assert decoded(tools=tools, **choice).tool_choice == ours


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": "http://x"}}]}]}, "base64"),
        ({"messages": [{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "nope", "content": "x"}]}]}, "tool_use_id"),
        ({"tools": [{"name": "w"}]}, "input_schema"),
        ({"tools": [{"name": "w", "input_schema": {}}],
          "tool_choice": {"type": "tool", "name": "v"}}, "tool_choice"),
        ({"temperature": -1}, "temperature"),
    ],
)  # fmt: skip
def test_bad_fields_are_400s_naming_them(changes: dict[str, Any], named: str) -> None:
    body = {k: v for k, v in (BASE | changes).items() if v is not None}
    with pytest.raises((BadRequest, msgspec.ValidationError)) as caught:
        msgspec.json.decode(json.dumps(body), type=MessagesRequest).decode()
    assert named in str(caught.value)


def test_hosted_tools_are_left_out_and_ignored_fields_taken() -> None:
    tools = [{"type": "web_search_20250305", "name": "web_search"},
             {"name": "w", "input_schema": {"type": "object"}, "cache_control": {}}]  # fmt: skip
    extra = {"thinking": {"type": "adaptive"}, "metadata": {"user_id": "u"},
             "output_config": {"effort": "high"}, "context_management": {}}  # fmt: skip
    assert [t.name for t in decoded(tools=tools, **extra).tools] == ["w"]


@pytest.mark.parametrize(
    ("exc", "status", "type_"),
    [
        (BadRequest("x"), 400, "invalid_request_error"),
        (Unauthorized("x"), 401, "authentication_error"),
        (ModelNotFound("x"), 404, "not_found_error"),
        (RateLimited("x"), 429, "rate_limit_error"),
        (Overloaded("queue full"), 529, "overloaded_error"),
        (BackendUnavailable("restarting"), 529, "overloaded_error"),
        (ModelExceedsBudget("never fits"), 500, "api_error"),
        (UpstreamError("x"), 500, "api_error"),
        (BackendTimeout("x"), 500, "api_error"),
    ],
)
def test_error_statuses_and_types(exc: AiServerError, status: int, type_: str) -> None:
    response = anthropic.render(exc)
    assert response.status_code == status
    assert json.loads(bytes(response.body)) == {
        "type": "error", "error": {"type": type_, "message": exc.message}
    }  # fmt: skip


def test_prompt_over_the_context_in_anthropics_words() -> None:
    body = json.loads(bytes(anthropic.render(ContextExceeded(9000, 8192)).body))
    assert body["error"] == {
        "type": "invalid_request_error",
        "message": "prompt is too long: 9000 tokens > 8192 maximum",
    }
    # llama.cpp's own words, where they come as text (a stream's late error)
    late = "llama-server: request (9000 tokens) exceeds the available context size"
    assert anthropic.too_long(late) == "prompt is too long: " + late


async def _events(*items: chat.Event | Ping | AiServerError) -> AsyncGenerator[Any, None]:
    for item in items:
        yield item


async def _stream(*items: chat.Event | Ping | AiServerError) -> list[str]:
    out = [chunk async for chunk in anthropic.events(_events(*items), "m")]
    return [line[7:] for line in b"".join(out).decode().splitlines() if line.startswith("event: ")]


async def test_stream_sequence_text_then_a_call() -> None:
    names = await _stream(
        chat.TextDelta(text="a"), chat.ToolCallDelta(index=0, id="c", name="w"),
        chat.ToolCallDelta(index=0, arguments="{}"), chat.Finish(reason="tool_calls"),
        chat.Usage(prompt_tokens=3, completion_tokens=2),
    )  # fmt: skip
    assert names == [
        "message_start", "ping", "content_block_start", "content_block_delta",
        "content_block_stop", "content_block_start", "content_block_delta",
        "content_block_stop", "message_delta", "message_stop",
    ]  # fmt: skip


async def test_stream_error_before_anything_raises_and_after_a_ping_is_an_event() -> None:
    with pytest.raises(Overloaded):
        await _stream(Overloaded("full"))
    assert await _stream(Ping(), Overloaded("full")) == ["message_start", "ping", "error"]


async def test_ticks_while_nothing_comes() -> None:
    go = anyio.Event()

    async def slow() -> AsyncGenerator[chat.Event, None]:
        await go.wait()
        yield chat.TextDelta(text="x")

    seen: list[object] = []
    async for item in with_ticks(slow(), Ping(), first=0.01, every=0.01):
        seen.append(item)
        if len(seen) == 2:
            go.set()  # two ticks, then the event
    assert seen[:2] == [Ping(), Ping()] and seen[-1] == chat.TextDelta(text="x")


def test_a_stop_sequence_is_its_stop_reason() -> None:
    answer = chat.Answer(text="H", stop_sequence="e")
    body = anthropic.message(answer, "m")
    assert (body["stop_reason"], body["stop_sequence"]) == ("stop_sequence", "e")
    assert anthropic.message(chat.Answer(text="H"), "m")["stop_reason"] == "end_turn"


def test_llama_servers_keep_alive_comment_is_no_event() -> None:
    """llama-server writes `:` while it evaluates a long prompt (Claude Code's): not JSON."""
    assert events_of(b":\n\n") == []
    data = b': keep\ndata: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n'
    assert events_of(data) == [chat.TextDelta(text="a")]


async def test_a_stream_that_ends_early_closes_its_source_in_its_own_task() -> None:
    closed: list[bool] = []

    async def source() -> AsyncGenerator[Any, None]:
        try:
            yield Ping()
            yield Overloaded("full")
            yield chat.TextDelta(text="never read")
        finally:
            closed.append(True)

    out = [chunk async for chunk in anthropic.events(source(), "m")]
    assert b"event: error" in out[-1] and closed == [True]


async def test_ticks_closed_early_close_their_stream_quietly() -> None:
    closed: list[bool] = []

    async def endless() -> AsyncGenerator[chat.Event, None]:
        try:
            while True:
                yield chat.TextDelta(text="x")
        finally:
            closed.append(True)

    ticking = with_ticks(endless(), Ping(), first=10, every=10)
    assert await anext(ticking) == chat.TextDelta(text="x")
    await ticking.aclose()  # no group of GeneratorExit: a plain, quiet close
    assert closed == [True]
