"""A Hermes/Qwen-style template with native tool calls (deploy/templates/hermes-tools.jinja,
on SmolLM2's weights) through both modes: llama-server's own tool calling in server mode,
its port (backends.hermes) in cli mode; the same call for the same seed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from openai.types.chat import ChatCompletionMessageParam

from backends import toolchain
from core.config import ModelConfig, Settings
from tests.e2e.conftest import real_settings, serving
from tests.e2e.test_tools_real import SCHEMAS, TOOLS, langchain_loop
from tests.helpers import sdk

pytestmark = pytest.mark.llama

TEMPLATE = Path(__file__).parents[2] / "deploy" / "templates" / "hermes-tools.jinja"
MODEL = "hermes-smollm2"
# Earlier turns with a call and its result: they go through the template's own markup.
HISTORY: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
    {"role": "assistant", "content": "It is 18 C and sunny in Paris."},
    {"role": "user", "content": "And what is the weather in Tokyo?"},
]


def hermes_settings(tmp_path: Path, backend: str) -> Settings:
    model = toolchain.smollm2_model_path(Settings().cache_path())
    template = TEMPLATE.read_text()
    models = {MODEL: ModelConfig(path=str(model), chat_template=template)}
    return real_settings(tmp_path / backend, backend=backend, models=models)


Calls = list[tuple[str, dict[str, Any]]]


async def calls_of(settings: Settings, **request: Any) -> tuple[Calls, int]:
    """The calls of the non-streamed answer, each validated (the streamed answer's equal),
    and its prompt's token count."""
    async with sdk(settings) as client:
        chat = await client.chat.completions.create(model=MODEL, **request)
        choice = chat.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        calls = [
            (c.function.name, json.loads(c.function.arguments))
            for c in choice.message.tool_calls or []
        ]
        for name, arguments in calls:
            jsonschema.validate(arguments, SCHEMAS[name])
        async with client.beta.chat.completions.stream(model=MODEL, **request) as stream:
            final = await stream.get_final_completion()
        streamed = final.choices[0].message.tool_calls or []
        assert [(c.function.name, json.loads(c.function.arguments)) for c in streamed] == calls
        assert chat.usage is not None
        return calls, chat.usage.prompt_tokens


@pytest.mark.timeout(300)  # two gateways, eight generations on a shared 2-core machine
async def test_hermes_template_same_tool_call_in_both_modes(tmp_path: Path) -> None:
    request: dict[str, Any] = {
        "messages": HISTORY, "tools": TOOLS, "tool_choice": "required",
        "max_tokens": 40, "temperature": 0.7, "seed": 11,
    }  # fmt: skip
    found: dict[str, tuple[Calls, int]] = {}
    for backend in ("server", "cli"):
        settings = hermes_settings(tmp_path, backend)
        async with serving(settings):
            found[backend] = await calls_of(settings, **request)
            # A named tool: that one is called.
            named = {"type": "function", "function": {"name": "get_time"}}
            (call,), _ = await calls_of(settings, **request | {"tool_choice": named})
            assert call[0] == "get_time"
    assert len(found["server"][0]) == 1, found
    # The same prompt (the template's own tool markup: > 250 tokens) and the same call.
    assert found["server"] == found["cli"], found
    assert found["server"][1] > 250


@pytest.mark.parametrize("backend", ["server", "cli"])
async def test_hermes_template_langchain_loop_ends_in_an_answer(
    tmp_path: Path, backend: str
) -> None:
    """LangChain's loop on the native path: the ToolMessage goes through the template's own
    `<tool_response>` markup."""
    await langchain_loop(hermes_settings(tmp_path, backend), MODEL)
