"""Tool calling through the clients agents use (`openai`, LangChain), on the real SmolLM2, in
both modes: every call returned names an offered tool and has arguments that validate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam
from pydantic import SecretStr

from backends.catalog import SMOLLM2
from core.config import Settings
from tests.e2e.conftest import real_settings, serving
from tests.helpers import sdk

pytestmark = pytest.mark.llama

CITY: dict[str, object] = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 40}},
    "required": ["city"],
}
TOOLS: list[ChatCompletionToolParam] = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "The weather now", "parameters": CITY},
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The time now",
            "parameters": {
                "type": "object",
                "properties": {"timezone": {"type": "string", "enum": ["UTC", "CET", "JST"]}},
                "required": ["timezone"],
            },
        },
    },
]
SCHEMAS = {t["function"]["name"]: t["function"].get("parameters", {}) for t in TOOLS}
ASK: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the weather in Paris?"}
]


def checked(name: str, arguments: str) -> dict[str, Any]:
    """The arguments of a call of an offered tool, validated against its parameters."""
    assert name in SCHEMAS, name
    parsed: dict[str, Any] = json.loads(arguments)
    jsonschema.validate(parsed, SCHEMAS[name])
    return parsed


@pytest.mark.parametrize("backend", ["server", "cli"])
async def test_openai_sdk_tool_calls_validate_streamed_or_not(tmp_path: Path, backend: str) -> None:
    settings = real_settings(tmp_path, backend=backend)
    async with serving(settings), sdk(settings) as client:
        common: dict[str, Any] = {
            "model": SMOLLM2, "messages": ASK, "tools": TOOLS, "tool_choice": "required",
            "max_tokens": 120, "temperature": 0, "seed": 7,
        }  # fmt: skip
        chat = await client.chat.completions.create(**common)
        choice = chat.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        calls = choice.message.tool_calls or []
        assert len(calls) == 1 and calls[0].id.startswith("call_")
        assert calls[0].type == "function"
        checked(calls[0].function.name, calls[0].function.arguments)

        # The same request streamed: the SDK's accumulated calls equal the non-streamed ones.
        async with client.beta.chat.completions.stream(**common) as stream:
            final = await stream.get_final_completion()
        streamed = final.choices[0].message.tool_calls or []
        assert final.choices[0].finish_reason == "tool_calls"
        assert [(c.function.name, json.loads(c.function.arguments)) for c in streamed] == [
            (c.function.name, json.loads(c.function.arguments)) for c in calls
        ]

        # A named tool is the one called, whatever the question.
        named = await client.chat.completions.create(
            **common | {"tool_choice": {"type": "function", "function": {"name": "get_time"}}}
        )
        (call,) = named.choices[0].message.tool_calls or []
        assert call.function.name == "get_time"
        assert checked("get_time", call.function.arguments)["timezone"] in ("UTC", "CET", "JST")

        # `auto`: a valid call, or text; never a broken call.
        auto = await client.chat.completions.create(**common | {"tool_choice": "auto"})
        message = auto.choices[0].message
        for c in message.tool_calls or []:
            checked(c.function.name, c.function.arguments)
        assert message.tool_calls or isinstance(message.content, str)


async def langchain_loop(settings: Settings, model_name: str) -> None:
    """The model calls the tool, its result goes back as a ToolMessage, the model answers."""

    @tool
    def get_weather(city: str) -> str:
        """The weather now in a city."""
        return f"Sunny and 21 degrees in {city}."

    async with serving(settings), httpx.AsyncClient() as http:
        model = ChatOpenAI(
            model=model_name, temperature=0, max_completion_tokens=120, max_retries=0,
            base_url=f"http://127.0.0.1:{settings.port}/v1", api_key=SecretStr("unused"),
            http_async_client=http,
        )  # fmt: skip
        messages: list[Any] = [HumanMessage("What is the weather in Paris?")]
        called = await model.bind_tools([get_weather], tool_choice="get_weather").ainvoke(messages)
        assert len(called.tool_calls) == 1, called
        call = called.tool_calls[0]
        assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str)
        result = get_weather.invoke(call["args"])
        messages += [called, ToolMessage(result, tool_call_id=call["id"])]
        answer = await model.bind_tools([get_weather], tool_choice="none").ainvoke(messages)
        assert not answer.tool_calls
        assert isinstance(answer.content, str) and answer.content.strip()


@pytest.mark.parametrize("backend", ["server", "cli"])
async def test_langchain_agent_loop_ends_in_an_answer(tmp_path: Path, backend: str) -> None:
    await langchain_loop(real_settings(tmp_path, backend=backend), SMOLLM2)
