"""OpenAI's everyday request fields through the `openai` client, with real llama.cpp and the
default chat model, in both modes: stop, seed, response_format, penalties, and usage
counts that match llama.cpp's own tokenizer."""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from backends import toolchain
from backends.catalog import GEMMA, SMOLLM2
from core.config import cache_dir
from tests.e2e.conftest import real_settings, serving
from tests.helpers import processes_named, sdk

pytestmark = pytest.mark.llama

ASK: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Describe the sea in three sentences."}
]
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
BOTH = pytest.mark.parametrize("backend", ["server", "cli"])


@asynccontextmanager
async def client_for(tmp_path: Path, backend: str) -> AsyncIterator[openai.AsyncOpenAI]:
    settings = real_settings(tmp_path, backend=backend)
    async with serving(settings), sdk(settings) as client:
        yield client


def tokenize(model: Path, text: str, *, bos: bool) -> int:
    """llama.cpp's own count of `text`'s tokens."""
    binary = toolchain.resolve_binary("llama-tokenize", None, cache_dir())
    argv = [str(binary), "--model", str(model), "--stdin", "--ids", "--log-disable"]
    done = subprocess.run(
        [*argv, *([] if bos else ["--no-bos"])], input=text.encode(), capture_output=True,
        check=True,
    )  # fmt: skip
    return len(json.loads(done.stdout))


@BOTH
async def test_stop_cuts_the_answer_before_the_stop_string(tmp_path: Path, backend: str) -> None:
    async with client_for(tmp_path, backend) as client:
        ask: dict[str, Any] = {"model": SMOLLM2, "messages": ASK, "max_tokens": 48, "seed": 1}
        full = await client.chat.completions.create(**ask, temperature=0)
        text = full.choices[0].message.content or ""
        assert "e" in text  # so the stop below is met
        cut = await client.chat.completions.create(**ask, temperature=0, stop=["e", "XYZ"])
        content = cut.choices[0].message.content or ""
        assert "e" not in content and text.startswith(content)
        assert cut.choices[0].finish_reason == "stop"
        assert cut.usage is not None
        smollm2 = toolchain.smollm2_model_path(cache_dir())
        assert cut.usage.completion_tokens == tokenize(smollm2, content, bos=False) or (
            backend == "server"  # llama-server counts the stop's own token too
            and cut.usage.completion_tokens == tokenize(smollm2, content, bos=False) + 1
        )


async def test_a_streamed_stop_in_cli_mode_never_reaches_the_client(tmp_path: Path) -> None:
    async with client_for(tmp_path, "cli") as client:
        ask: dict[str, Any] = {"model": SMOLLM2, "messages": ASK, "temperature": 0, "seed": 1}
        full = await client.chat.completions.create(**ask, max_tokens=48)
        text = full.choices[0].message.content or ""
        stop = text[len(text) // 2 : len(text) // 2 + 5]  # five characters from its middle
        assert len(stop) == 5 and stop in text
        pieces, reasons = [], []
        stream = await client.chat.completions.create(
            **ask, max_tokens=48, stop=stop, stream=True, stream_options={"include_usage": True}
        )
        async for chunk in stream:
            for choice in chunk.choices:
                pieces.append(choice.delta.content or "")
                reasons.append(choice.finish_reason)
        sent = "".join(pieces)
        assert stop not in sent and sent == text[: text.index(stop)]
        assert reasons[-1] == "stop"
        assert processes_named("llama-completion") == []  # its process group was stopped


@BOTH
async def test_a_seed_gives_the_same_answer_twice_at_a_high_temperature(
    tmp_path: Path, backend: str
) -> None:
    async with client_for(tmp_path, backend) as client:
        ask: dict[str, Any] = {"model": SMOLLM2, "messages": ASK, "max_tokens": 24}
        first, second, other = [
            (await client.chat.completions.create(**ask, temperature=1.5, seed=seed))
            .choices[0]
            .message.content
            for seed in (7, 7, 8)
        ]
        assert first == second
        assert first != other  # the seed is what made them equal


@BOTH
async def test_response_format_json_schema_and_json_object(tmp_path: Path, backend: str) -> None:
    async with client_for(tmp_path, backend) as client:
        messages: list[ChatCompletionMessageParam] = [
            {"role": "user", "content": "Make up a person. Answer in JSON with name and age."}
        ]
        answer = await client.chat.completions.create(
            model=SMOLLM2, messages=messages, max_tokens=200, temperature=0,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "person", "schema": PERSON, "strict": True},
            },
        )  # fmt: skip
        assert answer.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(answer.choices[0].message.content or ""), PERSON)
        loose = await client.chat.completions.create(
            model=SMOLLM2, messages=messages, max_tokens=200, temperature=0,
            response_format={"type": "json_object"},
        )  # fmt: skip
        assert loose.choices[0].finish_reason == "stop"
        assert isinstance(json.loads(loose.choices[0].message.content or ""), dict)
        # Cut off before its JSON closes: "length", never passed off as complete.
        short = await client.chat.completions.create(
            model=SMOLLM2, messages=messages, max_tokens=3, temperature=0,
            response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}},
        )  # fmt: skip
        assert short.choices[0].finish_reason == "length"


@BOTH
async def test_a_schema_llama_cpp_cannot_use_or_too_big_is_a_400_naming_it(
    tmp_path: Path, backend: str
) -> None:
    async with client_for(tmp_path, backend) as client:
        bad = {"type": "object", "properties": {"a": {"$ref": "#/definitions/nope"}}}
        huge = {"type": "array", "items": {"type": "integer"}, "minItems": 100000}
        for schema, words in ((bad, "nope"), (huge, "minItems 100000")):
            fmt: Any = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
            with pytest.raises(openai.BadRequestError) as caught:
                await client.chat.completions.create(
                    model=SMOLLM2, messages=ASK, max_tokens=8, response_format=fmt
                )
            assert words in caught.value.message


@BOTH
async def test_penalties_are_taken_per_request(tmp_path: Path, backend: str) -> None:
    async with client_for(tmp_path, backend) as client:
        answer = await client.chat.completions.create(
            model=SMOLLM2, messages=ASK, max_tokens=16,
            frequency_penalty=1.5, presence_penalty=-0.5,
        )  # fmt: skip
        assert answer.choices[0].message.content


async def test_embedding_usage_is_llama_cpps_count_in_both_modes(tmp_path: Path) -> None:
    texts = ["hello world", "the quick brown fox jumps over the lazy dog"]
    gemma = toolchain.default_model_path(cache_dir())
    expected = sum(tokenize(gemma, t, bos=True) for t in texts)
    for backend in ("server", "cli"):
        async with client_for(tmp_path / backend, backend) as client:
            answer = await client.embeddings.create(model=GEMMA, input=texts)
            assert answer.usage.prompt_tokens == expected, backend
            assert answer.usage.total_tokens == expected
