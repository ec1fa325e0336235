"""Cli mode's port of llama-server's native Hermes-style tool calling (backends.hermes, and
backends.prompt with tools), checked against the real llama-server given
deploy/templates/hermes-tools.jinja: the same prompt for requests with tools, calls and
results, and the same grammar rules for the tools' schemas."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest

from backends import hermes, toolchain
from backends.prompt import render_chat
from core.chat import Message, Tool
from core.config import cache_dir
from supervisor.logtail import LogTail
from tests.integration.conftest import RunningServer, running_llama_server

pytestmark = pytest.mark.llama

TEMPLATE = (Path(__file__).parents[2] / "deploy" / "templates" / "hermes-tools.jinja").read_text()

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather now",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}},
            "required": ["city"],
        },
    },
}
# Every kind of schema backends.hermes turns into rules.
KINDS = {
    "type": "function",
    "function": {
        "name": "book.trip",
        "description": "Grüße: naïve «tool»",
        "parameters": {
            "type": "object",
            "properties": {
                "to": {"type": "string", "minLength": 2},
                "days": {"type": "integer"},
                "budget": {"type": ["number", "null"]},
                "flexible": {"type": "boolean"},
                "class": {"enum": ["eco", "business", 1, None]},
                "kind": {"const": "trip"},
                "stops": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
                "tags": {"type": "array"},
                "who": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                    "required": ["name"],
                },
                "extra": {"type": "object"},
                "any": {},
                "either": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
            },
            "required": ["to", "days"],
        },
    },
}
EMPTY = {"type": "function", "function": {"name": "ping", "description": "", "parameters": {}}}

CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather"}}
CONVERSATIONS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "What is the weather in Paris?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather?"}],
    [
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                CALL | {"function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Nice","n":[1,2.5]}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "Grüße 👋 21 C"},
        {"role": "assistant", "content": "Paris 18 C, Nice 21 C."},
        {"role": "user", "content": "And Tokyo?"},
    ],
    [
        {"role": "user", "content": "Weather in Rome?"},
        {"role": "assistant", "content": hermes.OPEN},  # the prefill of a required call
    ],
]


def as_message(turn: dict[str, Any]) -> Message:
    calls = [
        {"id": c["id"], "name": c["function"]["name"], "arguments": c["function"]["arguments"]}
        for c in turn.get("tool_calls", [])
    ]
    content = [{"type": "text", "text": turn["content"]}] if turn["content"] else []
    fields = {"role": turn["role"], "content": content, "tool_calls": calls}
    if "tool_call_id" in turn:
        fields["tool_call_id"] = turn["tool_call_id"]
    return msgspec.convert(fields, Message)


def as_tool(tool: dict[str, Any]) -> Tool:
    return msgspec.convert(tool["function"], Tool)


@asynccontextmanager
async def verbose_server(llama_bin: Path, tail: LogTail) -> AsyncIterator[RunningServer]:
    """The real llama-server with the Hermes template and `-v` (it then logs each
    request's grammar) into `tail`."""
    model = toolchain.smollm2_model_path(cache_dir())
    async with running_llama_server(
        llama_bin, model, embeddings=False, chat_template=TEMPLATE, extra=["-v"], tail=tail
    ) as server:
        yield server


async def test_hermes_prompt_with_tools_and_results_renders_as_llama_server(
    llama_bin: Path,
) -> None:
    model = toolchain.smollm2_model_path(cache_dir())
    async with verbose_server(llama_bin, LogTail(max_lines=100)) as server:
        for tools in ([WEATHER], [WEATHER, KINDS, EMPTY]):
            for turns in CONVERSATIONS:
                body = {"messages": turns, "tools": tools}
                expected = (await server.post("/apply-template", body))["prompt"]
                ours = render_chat(
                    TEMPLATE,
                    [as_message(t) for t in turns],
                    model,
                    hermes.tools_json([as_tool(t) for t in tools]),
                )
                assert ours == expected, turns
        assert hermes.is_hermes(TEMPLATE)


RULE = re.compile(r"([a-zA-Z0-9-]+) ::= (.*)")


def rules_of(lines: list[str]) -> dict[str, str]:
    return {m[1]: m[2] for line in lines if (m := RULE.fullmatch(line))}


def logged_grammar(log: str) -> list[str]:
    """The rule lines of the grammar llama-server logs (`-v`) for the request."""
    lines = log.splitlines()
    (start,) = [i for i, line in enumerate(lines) if "Grammar (tool_calls): " in line]
    first = lines[start].split("Grammar (tool_calls): ", 1)[1]
    rest = []
    for line in lines[start + 1 :]:
        if not RULE.fullmatch(line):
            break
        rest.append(line)
    return [first, *rest]


@pytest.mark.parametrize("parallel", [False, True])
async def test_hermes_grammar_rules_are_llama_servers(llama_bin: Path, parallel: bool) -> None:
    """Every rule of cli mode's grammar but its root is one of llama-server's, the same;
    its root is what llama-server's root leaves after the `<tool_call>` prefill."""
    tail = LogTail(max_lines=20000)
    tools = [WEATHER, KINDS, EMPTY]
    async with verbose_server(llama_bin, tail) as server:
        body = {
            "messages": [{"role": "user", "content": "hi"}], "tools": tools,
            "tool_choice": "required", "parallel_tool_calls": parallel, "max_tokens": 1,
        }  # fmt: skip
        await server.post("/v1/chat/completions", body)
    theirs = rules_of(logged_grammar(tail.text(last=20000)))
    ours = rules_of(hermes.grammar([as_tool(t) for t in tools], parallel).splitlines())
    assert ours.pop("root").endswith('"</tool_call>" space (tool-call space)*')
    assert theirs["tool-calls"] == "(tool-call space)+"
    assert {name: theirs.get(name) for name in ours} == ours
