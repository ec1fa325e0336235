"""Anthropic's Messages API through the official `anthropic` client and LangChain's
`ChatAnthropic`, with the real llama.cpp, in both modes (issue 27)."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anthropic
import jsonschema
import pytest
from anthropic.types import Message, MessageParam, ToolChoiceToolParam, ToolParam
from langchain_anthropic import ChatAnthropic
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from PIL import Image
from pydantic import SecretStr

from backends.catalog import GEMMA, SMOLLM2
from core.config import Auth, ModelConfig, Settings
from tests.claude_code import HEADERS, request
from tests.e2e.conftest import Client, real_settings, serving

# Several real requests each; a cli-mode request loads the model every time.
pytestmark = [pytest.mark.llama, pytest.mark.timeout(300)]

CITY: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 40}},
    "required": ["city"],
}
TOOLS: list[ToolParam] = [
    {"name": "get_weather", "description": "The weather now in a city", "input_schema": CITY},
    {
        "name": "get_time",
        "description": "The time now",
        "input_schema": {
            "type": "object",
            "properties": {"timezone": {"type": "string", "enum": ["UTC", "CET", "JST"]}},
            "required": ["timezone"],
        },
    },
]
ASK: list[MessageParam] = [{"role": "user", "content": "What is the weather in Paris?"}]
HI: list[MessageParam] = [{"role": "user", "content": "Hi"}]


@asynccontextmanager
async def client(
    settings: Settings, key: str = "unused"
) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=f"http://127.0.0.1:{settings.port}", api_key=key, max_retries=0
    ) as sdk:
        yield sdk


@pytest.mark.parametrize("backend", ["server", "cli"])
async def test_anthropic_sdk_create_stream_count(tmp_path: Path, backend: str) -> None:
    settings = real_settings(tmp_path, backend=backend)
    async with serving(settings), client(settings) as sdk:
        made = await sdk.messages.create(model=SMOLLM2, max_tokens=8, messages=HI)
        assert made.type == "message" and made.role == "assistant" and made.id.startswith("msg_")
        assert made.model == SMOLLM2
        assert made.stop_reason in ("end_turn", "max_tokens")
        (block,) = made.content
        assert block.type == "text" and block.text
        assert 1 <= made.usage.output_tokens <= 8
        counted = await sdk.messages.count_tokens(model=SMOLLM2, messages=HI)
        assert counted.input_tokens == made.usage.input_tokens  # llama.cpp's own count

        async with sdk.messages.stream(model=SMOLLM2, max_tokens=8, messages=HI) as stream:
            pieces = [piece async for piece in stream.text_stream]
            final = await stream.get_final_message()
        assert len(pieces) >= 1 and final.content[0].type == "text"
        assert final.content[0].text == "".join(pieces)
        assert final.usage.input_tokens == counted.input_tokens
        assert 1 <= final.usage.output_tokens <= 8

        # Greedy, SmolLM2 says "Hello! How can I assist you today?": "e" ends it at "H".
        cut: dict[str, Any] = {
            "model": SMOLLM2,
            "max_tokens": 16,
            "temperature": 0,
            "stop_sequences": ["e"],
        }
        stopped = await sdk.messages.create(messages=HI, **cut)
        assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", "e"), stopped
        assert [(b.type, getattr(b, "text", "")) for b in stopped.content] == [("text", "H")]
        async with sdk.messages.stream(messages=HI, **cut) as stream:
            final = await stream.get_final_message()
        assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "e"), final


@pytest.mark.parametrize("backend", ["server", "cli"])
async def test_anthropic_sdk_tool_use_loop(tmp_path: Path, backend: str) -> None:
    settings = real_settings(tmp_path, backend=backend)
    async with serving(settings), client(settings) as sdk:
        # A named tool is called, through the grammar; its result goes back as tool_result.
        named: ToolChoiceToolParam = {"type": "tool", "name": "get_weather"}
        called = await sdk.messages.create(
            model=SMOLLM2, max_tokens=120, temperature=0, messages=ASK, tools=TOOLS,
            tool_choice=named,
        )  # fmt: skip
        assert called.stop_reason == "tool_use", called
        (use,) = [b for b in called.content if b.type == "tool_use"]
        assert use.name == "get_weather"
        jsonschema.validate(use.input, CITY)
        with_tools = await sdk.messages.count_tokens(
            model=SMOLLM2,
            messages=ASK,
            tools=TOOLS,
            tool_choice=named,
        )
        assert with_tools.input_tokens == called.usage.input_tokens  # the tools counted
        loop: list[MessageParam] = [
            *ASK,
            {"role": "assistant", "content": called.content},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": use.id, "content": "Sunny, 21 C"}
                ],
            },
        ]
        answered = await sdk.messages.create(
            model=SMOLLM2, max_tokens=24, messages=loop, tools=TOOLS, tool_choice={"type": "none"}
        )
        assert answered.stop_reason in ("end_turn", "max_tokens")
        assert answered.content[0].type == "text" and answered.content[0].text

        # `any`, streamed: the SDK puts the call back together from input_json_delta events.
        async with sdk.messages.stream(
            model=SMOLLM2, max_tokens=120, temperature=0, messages=ASK, tools=TOOLS,
            tool_choice={"type": "any"},
        ) as stream:  # fmt: skip
            final = await stream.get_final_message()
        assert final.stop_reason == "tool_use"
        (streamed,) = [b for b in final.content if b.type == "tool_use"]
        assert streamed.name in ("get_weather", "get_time") and isinstance(streamed.input, dict)


def png(color: tuple[int, int, int]) -> str:
    out = io.BytesIO()
    Image.new("RGB", (28, 28), color).save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


@pytest.mark.parametrize("backend", ["server", "cli"])
async def test_anthropic_sdk_image_to_the_vision_model(tmp_path: Path, backend: str) -> None:
    settings = real_settings(tmp_path, backend=backend)
    image: MessageParam = {
        "role": "user",
        "content": [
            {
                "type": "image",
                "source": {"type": "base64", "media_type": "image/png", "data": png((200, 0, 0))},
            },
            {"type": "text", "text": "What is in this image?"},
        ],
    }
    async with serving(settings), client(settings) as sdk:
        answer = await sdk.messages.create(model=GEMMA, max_tokens=8, messages=[image])
        # A base model may answer nothing (then no block at all, as Anthropic answers).
        assert [b.type for b in answer.content] in (["text"], []), answer
        assert answer.stop_reason in ("end_turn", "max_tokens")
        async with sdk.messages.stream(model=GEMMA, max_tokens=8, messages=[image]) as stream:
            streamed = await stream.get_final_message()
        assert streamed.stop_reason in ("end_turn", "max_tokens")
        url: MessageParam = {
            "role": "user",
            "content": [{"type": "image", "source": {"type": "url", "url": "http://x/a.png"}}],
        }
        with pytest.raises(anthropic.BadRequestError) as caught:
            await sdk.messages.create(model=GEMMA, max_tokens=8, messages=[url])
        assert "base64" in caught.value.message


async def test_anthropic_sdk_error_types(tmp_path: Path) -> None:
    settings = real_settings(
        tmp_path,
        backend="cli",
        auth=Auth(api_keys=["right-key"]),
        models={SMOLLM2: ModelConfig(aliases=["claude-haiku-4-5"])},  # docs/api.md
    )
    async with serving(settings), client(settings, "right-key") as sdk:
        aliased = await sdk.messages.count_tokens(model="claude-haiku-4-5", messages=HI)
        assert aliased.input_tokens > 0
        with pytest.raises(anthropic.NotFoundError) as missing:
            await sdk.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=HI)
        assert missing.value.body == {
            "type": "error",
            "error": {"type": "not_found_error", "message": missing.value.body["error"]["message"]},  # type: ignore[index]
        }
        with pytest.raises(anthropic.BadRequestError) as no_max:
            # The SDK's own create() insists on max_tokens: its raw post does not.
            await sdk.post("/v1/messages", cast_to=Message, body={"model": SMOLLM2, "messages": HI})
        assert "max_tokens" in no_max.value.message
        counted = await sdk.messages.count_tokens(model=SMOLLM2, messages=HI)  # x-api-key
        assert counted.input_tokens == aliased.input_tokens
        async with client(settings, "wrong-key") as wrong:
            with pytest.raises(anthropic.AuthenticationError) as refused:
                await wrong.messages.count_tokens(model=SMOLLM2, messages=HI)
        assert refused.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]


@pytest.mark.parametrize("backend", ["server", "cli"])
async def test_langchain_chat_anthropic_with_tools(tmp_path: Path, backend: str) -> None:
    @tool
    def get_weather(city: str) -> str:
        """The weather now in a city."""
        return f"Sunny and 21 degrees in {city}."

    settings = real_settings(tmp_path, backend=backend)
    async with serving(settings):
        model = ChatAnthropic(  # type: ignore[call-arg]
            model=SMOLLM2, temperature=0, max_tokens=120, max_retries=0,
            base_url=f"http://127.0.0.1:{settings.port}", api_key=SecretStr("unused"),
        )  # fmt: skip
        try:
            messages: list[Any] = [HumanMessage("What is the weather in Paris?")]
            bound = model.bind_tools([get_weather], tool_choice="get_weather")
            called = await bound.ainvoke(messages)
            assert len(called.tool_calls) == 1, called
            call = called.tool_calls[0]
            assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str)
            result = ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])
            answer = await model.ainvoke([*messages, called, result])
            assert not answer.tool_calls and answer.text.strip()
        finally:
            # Its HTTP client is LangChain's own (cached per base URL): closed here.
            await model._async_client.close()


async def refusal(gateway: Client, body: dict[str, Any]) -> tuple[int, Any]:
    """The error of a request: its JSON body, or a stream's `error` event (a refusal that
    took longer than the first ping comes in the stream)."""
    async with gateway.http.post("/v1/messages?beta=true", json=body, headers=HEADERS) as resp:
        text = (await resp.read()).decode()
    if resp.status != 200:
        return resp.status, json.loads(text)
    data = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    return resp.status, json.loads(data[-1])


@pytest.mark.parametrize("backend", ["server", "cli"])
async def test_claude_code_request_over_the_context_is_prompt_too_long(
    tmp_path: Path, backend: str
) -> None:
    """Claude Code's 75 KB request is more than SmolLM2's 8192 tokens: Anthropic's words,
    which Claude Code shows its user, streamed or not."""
    settings = real_settings(tmp_path, backend=backend)
    async with serving(settings) as gateway:
        for stream in (False, True):
            status, body = await refusal(gateway, request(SMOLLM2, stream=stream))
            assert status == (200 if stream and status == 200 else 400), body
            assert body["type"] == "error"
            assert body["error"]["type"] == "invalid_request_error"
            assert body["error"]["message"].startswith("prompt is too long"), body
