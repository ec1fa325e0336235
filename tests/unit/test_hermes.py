from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from backends import hermes
from backends.base import ChatTask
from backends.catalog import ModelDef
from backends.prompt import JINJA_CHATML
from backends.tools import Parsed, native, parse_native
from core.chat import Answer, ChatRequest, Message, NamedTool, Tool, ToolCall
from core.config import LlmParams

TEMPLATE = (Path(__file__).parents[2] / "deploy" / "templates" / "hermes-tools.jinja").read_text()
CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = Tool(name="get_weather", parameters=CITY)
TIME = Tool(name="get_time", parameters={"type": "object", "properties": {}})


def call(name: str, arguments: str) -> ToolCall:
    return ToolCall(id="", name=name, arguments=arguments)


def test_hermes_template_is_recognised_and_others_not() -> None:
    assert hermes.is_hermes(TEMPLATE)
    assert not hermes.is_hermes(JINJA_CHATML)
    assert not hermes.is_hermes(None)
    # Qwen3-Coder's XML arguments go to other code in llama-server.
    assert not hermes.is_hermes(TEMPLATE.replace('{\\"name\\"', "<function=x>"))


def test_hermes_parse_finds_every_complete_call() -> None:
    text = 'Let me see. <tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>\n'
    text += '<tool_call>{"name": "b", "arguments": {}}, '
    text += '{"name": "c", "arguments": {"y": "é"}}</tool_call>'
    content, calls = hermes.parse(text)
    assert content == "Let me see. "
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("a", {"x": 1}),
        ("b", {}),
        ("c", {"y": "é"}),
    ]


@pytest.mark.parametrize(
    "text",
    [
        "no call at all",
        '<tool_call>\n{"name": "a", "arguments": {"x": 1',  # cut off by max_tokens
        '<tool_call>\n{"name": "a", "arguments": "x"}\n</tool_call>',  # arguments not an object
        '<tool_call>\n{"name": "a", "arguments": {}}\n',  # never closed
    ],
)
def test_hermes_parse_drops_what_is_not_a_complete_call(text: str) -> None:
    content, calls = hermes.parse(text)
    assert calls == []
    assert content == text.split("<tool_call>")[0]


def test_hermes_grammar_for_one_required_call() -> None:
    grammar = hermes.grammar([WEATHER], parallel=False)
    rules = dict(line.split(" ::= ", 1) for line in grammar.splitlines())
    assert rules["root"] == (
        'space (tool-get-weather) space "</tool_call>" space (tool-call space)*'
    )
    assert rules["tool-get-weather-schema-city-kv"] == '"\\"city\\"" space ":" space string'
    assert rules["space"] == '| " " | "\\n"{1,2} [ \\t]{0,20}'
    assert list(rules) == sorted(rules)  # written as llama.cpp's std::map orders them


def test_hermes_optional_properties_as_llama_cpp_writes_them() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "boolean"}, "c": {"type": "null"}},
        "required": ["a"],
    }
    rules = hermes.Rules()
    assert rules.schema(schema, "t") == "t"
    assert rules.rules["t"] == (
        '"{" space t-a-kv ( "," space ( t-b-kv t-b-rest | t-c-kv ) )? space "}"'
    )
    assert rules.rules["t-b-rest"] == '( "," space t-c-kv )?'


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "pattern": "^a+$"},
        {"type": "string", "format": "date"},
        {"$ref": "#/defs/x"},
        {"type": "integer", "minimum": 0},
        {"type": "object", "properties": {"a": {}}, "additionalProperties": True},
    ],
)
def test_hermes_schemas_outside_the_port_are_unsupported(schema: dict[str, object]) -> None:
    tool = Tool(name="t", parameters={"type": "object", "properties": {"x": schema}})
    assert not hermes.supported([tool])
    assert hermes.supported([WEATHER, TIME])


def task_of(request: ChatRequest) -> ChatTask:
    model = ModelDef(name="m", path="/nowhere.gguf", chat_template=TEMPLATE)
    return ChatTask(request=request, model=model, params=LlmParams(), max_tokens=32)


def test_native_named_tool_is_a_required_call_of_it_opened_at_once() -> None:
    request = ChatRequest(
        messages=(Message.of("user", "hi"),),
        tools=(WEATHER, TIME),
        tool_choice=NamedTool(name="get_time"),
    )
    prepared = native(task_of(request)).request
    assert prepared.tools == (TIME,)
    assert prepared.tool_choice == "required"
    assert prepared.messages[-1] == Message.of("assistant", hermes.OPEN)
    assert prepared.stop == (hermes.CLOSE,)  # one call: it ends the answer
    parallel = native(task_of(msgspec.structs.replace(request, parallel_tool_calls=True)))
    assert parallel.request.stop == ()
    auto = native(task_of(msgspec.structs.replace(request, tool_choice="auto"))).request
    assert auto.messages == request.messages and auto.tool_choice == "auto"


def test_parse_native_checks_every_call() -> None:
    request = ChatRequest(
        messages=(Message.of("user", "hi"),), tools=(WEATHER,), tool_choice="required"
    )
    good = Answer(text="", tool_calls=(call("get_weather", '{"city": "Nice"}'),) * 2)
    parsed = parse_native(good, request)
    assert not parsed.failed
    assert [(c.name, c.arguments) for c in parsed.calls] == [("get_weather", '{"city": "Nice"}')]
    assert parsed.calls[0].id.startswith("call_")
    for wrong in ('{"town": "Nice"}', "{", '{"city": 3}'):
        bad = parse_native(Answer(text="", tool_calls=(call("get_weather", wrong),)), request)
        assert bad.failed and not bad.calls and "<tool_call>" in bad.text
    unknown = parse_native(Answer(text="", tool_calls=(call("rm_rf", "{}"),)), request)
    assert unknown.failed
    # A required call that never came is a failure; under auto, text is an answer.
    assert parse_native(Answer(text="Hello"), request).failed
    auto = msgspec.structs.replace(request, tool_choice="auto")
    assert parse_native(Answer(text="Hello"), auto) == Parsed(text="Hello")
