"""The Responses dialect: bodies decoded into `core.chat`, answers and events encoded."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from backends import llama_api
from core import chat
from core.errors import BadRequest
from gateway.dialects.responses import ResponsesRequest
from gateway.dialects.responses_answer import Head, response_of, stream
from tests.codex import DEVELOPER_TEXT, codex_body

PNG_URL = "data:image/png;base64,iVBORw0KGgo="


def decoded(**body: Any) -> chat.ChatRequest:
    request, _ = msgspec.convert(body, ResponsesRequest).decode()
    return request


def refused(**body: Any) -> BadRequest:
    with pytest.raises(BadRequest) as caught:
        decoded(**body)
    return caught.value


def test_string_input_is_one_user_message() -> None:
    assert decoded(input="Hi").messages == (chat.Message.of("user", "Hi"),)


def test_instructions_and_developer_messages_are_one_system_message() -> None:
    request = decoded(
        instructions="Be brief.",
        input=[
            {"role": "developer", "content": [{"type": "input_text", "text": "Use tools."}]},
            {"type": "message", "role": "user", "content": "Hi"},
        ],
    )
    assert request.messages == (
        chat.Message.of("system", "Be brief.\n\nUse tools."),
        chat.Message.of("user", "Hi"),
    )


def test_a_function_call_joins_its_assistant_turn_and_its_output_is_a_tool_message() -> None:
    request = decoded(
        input=[
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": [{"type": "output_text", "text": "Looking."}]},
            {"type": "function_call", "call_id": "call_1", "name": "get", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            {"type": "reasoning", "summary": [], "encrypted_content": "..."},
        ]
    )
    _, assistant, tool = request.messages
    assert assistant.text == "Looking."
    assert assistant.tool_calls == (chat.ToolCall(id="call_1", name="get", arguments="{}"),)
    assert tool == chat.Message(
        role="tool", content=(chat.TextPart(text="sunny"),), tool_call_id="call_1"
    )


ORPHAN_OUTPUT = {"type": "function_call_output", "call_id": "x", "output": "?"}
REMOTE_IMAGE = {"type": "input_image", "image_url": "https://example.com/a.png"}
HUGE_SCHEMA = {"type": "json_schema", "name": "a", "schema": {"type": "string", "maxLength": 1000}}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": [ORPHAN_OUTPUT]}, "input[0].call_id"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]"),
        ({"input": [{"role": "user", "content": [{"type": "input_file"}]}]}, "input[0]"),
        ({"input": [{"role": "user", "content": [REMOTE_IMAGE]}]}, "input[0].content[0]"),
        ({"input": "Hi", "store": True}, "store"),
        ({"input": "Hi", "previous_response_id": "resp_1"}, "previous_response_id"),
        ({"input": "Hi", "tool_choice": {"type": "web_search"}}, "tool_choice"),
        ({"input": "Hi", "tool_choice": "required"}, "tool_choice"),
        ({"input": "Hi", "text": {"format": HUGE_SCHEMA}}, "text.format.schema"),
        ({"input": "Hi", "tools": [{"type": "function", "name": "bad name"}]}, "tools[0]"),
        ({"input": []}, "input"),
    ],
)  # fmt: skip
def test_bad_bodies_are_400s_naming_the_field(body: dict[str, Any], param: str) -> None:
    error = refused(**body)
    assert error.param is not None and error.param.startswith(param), (error.param, error)


def test_an_image_data_url_is_an_image_part() -> None:
    image = {"type": "input_image", "image_url": PNG_URL, "detail": "auto"}
    request = decoded(
        input=[{"role": "user", "content": [{"type": "input_text", "text": "?"}, image]}]
    )
    assert request.has_images and request.images[0].data.startswith(b"\x89PNG")


def test_codex_request_decodes_with_namespace_functions_and_no_hosted_tool() -> None:
    body = msgspec.convert(codex_body("m"), ResponsesRequest)
    request, namespaces = body.decode()
    names = [tool.name for tool in request.tools]
    assert len(names) == 8 and names[-1] == "search_docs"  # 7 functions + the namespace's one
    assert namespaces == {"search_docs": "mcp__docs__"}
    assert request.stream and request.parallel_tool_calls and request.tool_choice == "auto"
    system, user = request.messages
    assert system.role == "system" and system.text.endswith(DEVELOPER_TEXT)
    assert user.text == "List the files here."


def test_fields_a_model_cannot_act_on_are_accepted() -> None:
    request = decoded(
        input="Hi", max_output_tokens=10**9, reasoning={"effort": "high"}, store=False,
        include=["reasoning.encrypted_content"], metadata={"a": "b"}, user="u",
        truncation="auto", service_tier="auto", prompt_cache_key="k", top_p=0.5,
        text={"format": {"type": "json_object"}}, temperature=0,
    )  # fmt: skip
    assert request.max_tokens == 10**9 and request.json_schema == {"type": "object"}
    assert request.sampling == chat.Sampling(temp=0, top_p=0.5)


def test_a_named_function_choice_is_that_tool() -> None:
    tools = [{"type": "function", "name": "get", "parameters": {"type": "object"}}]
    named = {"type": "function", "name": "get"}
    assert decoded(input="Hi", tools=tools, tool_choice=named).tool_choice == chat.NamedTool(
        name="get"
    )
    assert refused(input="Hi", tools=tools, tool_choice=named | {"name": "other"}).param == (
        "tool_choice"
    )


HEAD = Head(id="resp_1", created_at=1, model="m", namespaces={"search": "docs"}, echo={})
USAGE = chat.Usage(prompt_tokens=5, completion_tokens=3, timings={"cache_n": 2.0})


def test_response_of_a_text_answer() -> None:
    response = response_of(chat.Answer(text="Hello", usage=USAGE), HEAD)
    assert response["status"] == "completed" and response["object"] == "response"
    (item,) = response["output"]
    assert item["type"] == "message" and item["content"][0]["text"] == "Hello"
    assert response["usage"]["total_tokens"] == 8
    assert response["usage"]["input_tokens_details"]["cached_tokens"] == 2


def test_response_of_calls_and_a_cut_answer() -> None:
    call = chat.ToolCall(id="call_1", name="search", arguments='{"q": 1}')
    response = response_of(
        chat.Answer(text="", tool_calls=(call,), finish_reason="tool_calls"), HEAD
    )
    (item,) = response["output"]
    assert item["type"] == "function_call" and item["call_id"] == "call_1"
    assert item["namespace"] == "docs" and item["arguments"] == '{"q": 1}'
    cut = response_of(chat.Answer(text="Hel", finish_reason="length"), HEAD)
    assert cut["status"] == "incomplete"
    assert cut["incomplete_details"] == {"reason": "max_output_tokens"}


async def _events(*events: chat.Event) -> AsyncIterator[chat.Event]:
    for event in events:
        yield event


async def streamed(*events: chat.Event) -> list[dict[str, Any]]:
    body = b"".join([chunk async for chunk in stream(_events(*events), HEAD)])
    parsed = []
    for block in body.decode().split("\n\n")[:-1]:
        name, data = block.split("\n")
        parsed.append(json.loads(data.removeprefix("data: ")))
        assert name == "event: " + parsed[-1]["type"]
    assert [e["sequence_number"] for e in parsed] == list(range(len(parsed)))
    return parsed


async def test_a_streamed_text_answer_has_the_whole_event_sequence() -> None:
    events = await streamed(
        chat.TextDelta(text="Hel"), chat.TextDelta(text="lo"), chat.Finish(reason="stop"), USAGE
    )
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    final = events[-1]["response"]
    assert final["output"] == [events[-2]["item"]] and final["usage"]["output_tokens"] == 3
    assert final["output"][0]["content"][0]["text"] == "Hello" == events[6]["text"]
    assert events[0]["response"]["status"] == "in_progress"


async def test_streamed_calls_are_function_call_items() -> None:
    events = await streamed(
        chat.ToolCallDelta(index=0, id="call_a", name="search", arguments='{"q"'),
        chat.ToolCallDelta(index=0, arguments=": 1}"),
        chat.ToolCallDelta(index=1, id="call_b", name="get", arguments="{}"),
        chat.Finish(reason="tool_calls"),
    )
    kinds = [e["type"] for e in events]
    assert kinds.count("response.function_call_arguments.done") == 2
    first, second = events[-1]["response"]["output"]
    assert (first["call_id"], first["arguments"], first["namespace"]) == (
        "call_a", '{"q": 1}', "docs",
    )  # fmt: skip
    assert (second["call_id"], second["name"]) == ("call_b", "get")
    assert events[-1]["response"]["usage"] is None


async def test_a_cut_stream_is_incomplete_and_a_failure_ends_it() -> None:
    cut = await streamed(chat.TextDelta(text="a"), chat.Finish(reason="length"))
    assert cut[-1]["type"] == "response.incomplete"
    assert cut[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    failed = await streamed(
        chat.TextDelta(text="a"), chat.Failure(type="upstream_error", message="gone")
    )
    assert [e["type"] for e in failed[-2:]] == ["error", "response.failed"]
    assert failed[-2]["message"] == "gone" and failed[-1]["response"]["status"] == "failed"
    empty = await streamed(chat.Finish(reason="stop"))
    assert empty[-1]["response"]["output"][0]["content"][0]["text"] == ""


def test_llama_servers_keep_alive_comments_are_no_events() -> None:
    """llama-server writes `:` lines while it evaluates a long prompt (a Codex request's
    17 KB developer message): they are SSE comments, not invalid JSON."""
    assert llama_api.events_of(b":\n\n") == [] == llama_api.events_of(b": ping")
    assert llama_api.events_of(b'data: {"choices": [{"delta": {"content": "a"}}]}') == [
        chat.TextDelta(text="a")
    ]
