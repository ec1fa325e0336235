"""backends.tools: the answer's schema, the conversation the model sees, and the answer read
back, case by case; and the OpenAI tool fields' 400s."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import msgspec
import pytest

from backends.tools import (
    answer_schema,
    conversation,
    events_of,
    interpreted,
    parse,
    rewritten,
)
from core.chat import (
    Answer,
    ChatRequest,
    Finish,
    Message,
    NamedTool,
    TextDelta,
    TextPart,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
)
from core.errors import BadRequest
from gateway.dialects.openai import ChatCompletionRequest

CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = Tool(name="weather", description="now", parameters=CITY)
TIME = Tool(name="time", parameters={"type": "object"})
HI = (Message.of("user", "Hi"),)


def request(choice: ToolChoice = "auto", *, parallel: bool = False, **kw: Any) -> ChatRequest:
    return ChatRequest(
        messages=HI, tools=(WEATHER, TIME), tool_choice=choice, parallel_tool_calls=parallel, **kw
    )


CALL = {"tool_call": {"name": "weather", "arguments": {"city": "Paris"}}}
CALLS = {"tool_calls": [CALL["tool_call"], {"name": "time", "arguments": {}}]}


@pytest.mark.parametrize(
    ("choice", "parallel", "answer", "valid"),
    [
        ("auto", False, CALL, True),
        ("auto", False, {"response": "hello"}, True),
        ("required", False, CALL, True),
        ("required", False, {"response": "hello"}, False),  # required: a call or nothing
        (NamedTool(name="time"), False, CALL, False),  # only the named tool
        (NamedTool(name="time"), False, {"tool_call": {"name": "time", "arguments": {}}}, True),
        ("required", False, {"tool_call": {"name": "weather", "arguments": {}}}, False),
        ("required", False, {"tool_call": {"name": "nope", "arguments": {}}}, False),
        ("required", True, CALLS, True),
        ("required", True, {"tool_calls": []}, False),
        ("required", True, CALL, False),
    ],
)
def test_answer_schema_admits_exactly_the_calls_offered(
    choice: ToolChoice, parallel: bool, answer: object, valid: bool
) -> None:
    schema = answer_schema(request(choice, parallel=parallel))
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid(answer) is valid


def test_a_text_response_follows_the_requests_json_schema() -> None:
    schema = answer_schema(request(json_schema={"type": "object", "required": ["a"]}))
    assert jsonschema.Draft202012Validator(schema).is_valid({"response": {"a": 1}})
    assert not jsonschema.Draft202012Validator(schema).is_valid({"response": "text"})


@pytest.mark.parametrize(
    ("text", "choice", "calls", "said", "failed"),
    [
        (json.dumps(CALL), "auto", [("weather", {"city": "Paris"})], "", False),
        (json.dumps(CALLS), "required", [("weather", {"city": "Paris"}), ("time", {})], "", False),
        ('{"response": "Hello!"}', "auto", [], "Hello!", False),
        ('{"response": "Hello!"}', "required", [], '{"response": "Hello!"}', True),
        ('{"tool_call": {"name": "weather", "argu', "required", [], None, True),  # cut off
        ('{"tool_call": {"name": "weather", "arguments": {}}}', "auto", [], None, True),
        ('{"tool_call": {"name": "other", "arguments": {}}}', "auto", [], None, True),
        ("plain words", "auto", [], "plain words", True),
    ],
)
def test_parse_returns_valid_calls_or_text_never_a_broken_call(
    text: str, choice: ToolChoice, calls: list[tuple[str, object]], said: str | None, failed: bool
) -> None:
    parsed = parse(text, request(choice))
    assert [(c.name, json.loads(c.arguments)) for c in parsed.calls] == calls
    assert all(c.id.startswith("call_") for c in parsed.calls)
    assert len({c.id for c in parsed.calls}) == len(parsed.calls)
    assert parsed.text == (text if said is None else said)
    assert parsed.failed is failed


def test_interpreted_answer_and_its_stream_events() -> None:
    parsed = parse(json.dumps(CALL), request("required"))
    answer = interpreted(Answer(text=json.dumps(CALL), finish_reason="stop"), parsed)
    assert answer.finish_reason == "tool_calls" and answer.text == ""
    (call,) = answer.tool_calls
    assert events_of(answer) == [
        ToolCallDelta(index=0, id=call.id, name="weather"),
        ToolCallDelta(index=0, arguments='{"city": "Paris"}'),
        Finish(reason="tool_calls"),
    ]
    cut = interpreted(Answer(text='{"tool', finish_reason="length"), parse('{"tool', request()))
    assert (cut.text, cut.finish_reason, cut.tool_calls) == ('{"tool', "length", ())
    assert events_of(cut) == [TextDelta(text='{"tool'), Finish(reason="length")]


def test_the_model_sees_calls_as_its_json_and_results_as_user_turns() -> None:
    call = ToolCall(id="call_1", name="weather", arguments='{"city": "Paris"}')
    messages = (
        Message.of("system", "Be brief."),
        *HI,
        Message(role="assistant", tool_calls=(call,)),
        Message(role="tool", tool_call_id="call_1", content=(TextPart(text="Sunny"),)),
    )
    seen = rewritten(_with(messages))
    assert [m.role for m in seen] == ["system", "user", "assistant", "user"]
    assert seen[0].text.startswith("Be brief.\n\nYou can call the following tools")
    assert '"name": "weather"' in seen[0].text and '{"response": "..."}' in seen[0].text
    assert json.loads(seen[2].text) == {"tool_call": {"name": "weather", "arguments": CITY_OF}}
    assert json.loads(seen[3].text) == {"tool_response": {"name": "weather", "content": "Sunny"}}
    assert conversation(HI) == list(HI)


CITY_OF = {"city": "Paris"}


def _with(messages: tuple[Message, ...]) -> ChatRequest:
    return ChatRequest(messages=messages, tools=(WEATHER, TIME))


WEATHER_WIRE = {"type": "function", "function": {"name": "weather", "parameters": CITY}}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [WEATHER_WIRE, WEATHER_WIRE]}, "tools[1]"),
        ({"tools": [WEATHER_WIRE] * 129}, "tools"),
        ({"tools": [WEATHER_WIRE], "tool_choice": {"type": "function", "function": {"name": "x"}}},
         "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER_WIRE], "functions": [{"name": "f"}]}, "functions"),
        ({"functions": [{"name": "f"}], "function_call": {"name": "g"}}, "function_call"),
        ({"tools": [{"type": "function", "function": {
            "name": "big", "parameters": {"description": "x" * 40000}}}]}, "tools[0].parameters"),
        ({"messages": [{"role": "tool", "tool_call_id": "call_9", "content": "r"}]},
         "messages[0].tool_call_id"),
    ],
)  # fmt: skip
def test_bad_tool_fields_are_a_400_naming_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as caught:
        _decode({"messages": [{"role": "user", "content": "Hi"}]} | body)
    assert caught.value.param == param, caught.value.message


def _decode(body: dict[str, Any]) -> ChatRequest:
    return msgspec.convert(body, ChatCompletionRequest).decode()


def test_openai_tool_turns_and_legacy_functions_decode_into_ours() -> None:
    decoded = _decode(
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c1", "type": "function",
                     "function": {"name": "weather", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "Sunny"},
                {"role": "assistant", "function_call": {"name": "weather", "arguments": "{}"}},
                {"role": "function", "name": "weather", "content": "Rain"},
            ],
            "functions": [{"name": "weather", "parameters": CITY}],
            "function_call": {"name": "weather"},
        }
    )  # fmt: skip
    assert decoded.tools == (Tool(name="weather", parameters=CITY),)
    assert decoded.tool_choice == NamedTool(name="weather")
    assert [m.role for m in decoded.messages] == ["user", "assistant", "tool", "assistant", "tool"]
    assert decoded.messages[1].tool_calls == (ToolCall(id="c1", name="weather", arguments="{}"),)
    assert decoded.messages[2].tool_call_id == "c1" and decoded.messages[2].text == "Sunny"
    assert decoded.messages[4].tool_call_id == "function:weather"
