"""The /v1 API through the official `openai` client, with the real llama.cpp, in both modes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import aiohttp
import anyio
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from backends.catalog import GEMMA, SMOLLM2
from core.config import ModelConfig
from tests.conftest import wait_until
from tests.e2e.conftest import Client, real_settings, serving
from tests.helpers import alive, processes_named, sdk

pytestmark = pytest.mark.llama

STORY: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Write a very long story about a lighthouse keeper."}
]


@pytest.mark.parametrize("backend", ["server", "cli"])
async def test_openai_client_chat_stream_embeddings_models(tmp_path: Path, backend: str) -> None:
    settings = real_settings(tmp_path, backend=backend)
    async with serving(settings), sdk(settings) as client:
        chat = await client.chat.completions.create(
            model=SMOLLM2, messages=[{"role": "user", "content": "Hi"}], max_tokens=5
        )
        assert chat.choices[0].message.role == "assistant"
        assert isinstance(chat.choices[0].message.content, str)
        assert chat.usage is not None and 1 <= chat.usage.completion_tokens <= 5

        started = time.monotonic()
        arrivals: list[float] = []
        text: list[str] = []
        usage = None
        stream = await client.chat.completions.create(
            model=GEMMA,  # a base model: it writes up to max_tokens
            messages=STORY,
            max_tokens=24,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            arrivals.append(time.monotonic() - started)
            text.extend(c.delta.content or "" for c in chunk.choices)
            usage = chunk.usage or usage
        assert usage is not None and usage.completion_tokens == 24
        assert len(arrivals) >= 10 and arrivals[0] < arrivals[-1]  # chunks came as generated
        assert "".join(text)

        embedded = await client.embeddings.create(model=GEMMA, input=["hello", "world", "!"])
        assert [len(d.embedding) for d in embedded.data] == [640, 640, 640]
        assert [d.index for d in embedded.data] == [0, 1, 2]
        as_floats = await client.embeddings.create(
            model=GEMMA, input="hello", encoding_format="float"
        )
        assert as_floats.data[0].embedding == pytest.approx(embedded.data[0].embedding, abs=1e-6)

        models = await client.models.list()
        assert {m.id for m in models.data} == {SMOLLM2, GEMMA}


async def test_openai_errors_use_the_openai_envelope(tmp_path: Path) -> None:
    settings = real_settings(tmp_path, backend="cli")
    async with serving(settings), sdk(settings) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(
                model=SMOLLM2, messages=[{"role": "user", "content": "Hi"}], n=2
            )
    assert caught.value.status_code == 400
    assert "not supported by this server: n" in caught.value.message


async def drop_after_first_chunk(client: Client, path: str, body: object) -> None:
    async with client.http.post(path, json=body) as resp:
        assert resp.status == 200
        assert (await resp.content.readline()).startswith(b"data: ")
    # Leaving the block closes the connection mid-stream.


async def test_disconnect_kills_the_cli_process(tmp_path: Path) -> None:
    async with serving(real_settings(tmp_path, backend="cli")) as client:
        # Gemma, a base model, writes all 2000 tokens: a minute on two cores if not stopped.
        body = {"model": GEMMA, "messages": STORY, "max_tokens": 2000, "stream": True}
        async with aiohttp.ClientSession(client.url) as http:
            async with http.post("/v1/chat/completions", json=body) as resp:
                assert (await resp.content.readline()).startswith(b"data: ")
                [pid] = processes_named("llama-completion")
        await wait_until(lambda: not alive(pid), within=10)  # about 20 ms when not loaded
        status, chat = await client.post("/api/chat", {"messages": STORY, "max_tokens": 2})
        assert status == 200, chat


async def test_disconnect_cancels_the_llama_server_task(tmp_path: Path) -> None:
    """A client that hangs up mid-stream stops llama-server's generation: llama-server logs
    `cancel task` only for a task stopped before its end, never for one that finished."""
    async with serving(real_settings(tmp_path)) as client:
        _, ready = await client.get("/ready")
        slots_url = f"http://127.0.0.1:{ready['processes'][0]['port']}/slots"
        body = {"messages": STORY, "max_tokens": 2000, "stream": True}
        busy: list[bool] = []

        async def processing() -> bool:
            async with client.http.get(slots_url) as resp:
                return any(slot["is_processing"] for slot in await resp.json())

        async with aiohttp.ClientSession(client.url) as http:
            async with http.post("/v1/chat/completions", json=body) as resp:
                assert (await resp.content.readline()).startswith(b"data: ")
                busy.append(await processing())
        assert busy == [True]
        with anyio.fail_after(60):  # a hang guard: it takes about 60 ms
            async with client.http.get(f"/api/logs/{SMOLLM2}") as resp:
                async for line in resp.content:
                    if b"stop: cancel task" in line:
                        break
            while await processing():  # noqa: ASYNC110 (polling another process)
                await anyio.sleep(0.02)
        status, chat = await client.post("/api/chat", {"messages": STORY, "max_tokens": 2})
        assert status == 200, chat


async def test_back_to_back_streams_all_complete(tmp_path: Path) -> None:
    """llama-server drops a keep-alive connection right after a streamed response; a stream
    must never be sent on such a connection."""
    async with serving(real_settings(tmp_path)) as client:
        body = {"messages": STORY, "max_tokens": 3, "stream": True}
        for _ in range(4):
            async with client.http.post("/v1/chat/completions", json=body) as resp:
                assert resp.status == 200
                events = (await resp.read()).split(b"\n\n")
            assert b"data: [DONE]" in events, events[-3:]


async def test_cli_logs_show_the_runs_but_never_the_input(tmp_path: Path) -> None:
    """llama-embedding echoes each input on stderr, over as many lines as it has: the
    model's log in the Logs view keeps the run's lines and leaves that echo out."""
    settings = real_settings(tmp_path, backend="cli")
    async with serving(settings) as client, sdk(settings) as openai_client:
        inputs = ["first secret\nsecond secret line", "third secret"]
        await openai_client.embeddings.create(model=GEMMA, input=inputs)
        seen: list[str] = []
        with anyio.fail_after(30):
            async with client.http.get(f"/api/logs/{GEMMA}") as resp:
                while sum("number of tokens in prompt" in line for line in seen) < 2:
                    seen.append(json.loads(await resp.content.readline())["line"])
    assert all(line.startswith("llama-embedding#") for line in seen)
    assert not [line for line in seen if "secret" in line]


@pytest.mark.parametrize("backend", ["server", "cli"])
async def test_a_prompt_over_the_context_is_context_length_exceeded(
    tmp_path: Path, backend: str
) -> None:
    """OpenAI's code for it, which Codex compacts a conversation on, streamed or not; in
    Anthropic's words (core.errors.ContextExceeded)."""
    small = {SMOLLM2: ModelConfig(ctx_size=256)}
    settings = real_settings(tmp_path, backend=backend, models=small)
    long: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "one two three four " * 100}  # 400+ tokens
    ]
    async with serving(settings), sdk(settings) as client:
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as caught:
                await client.chat.completions.create(
                    model=SMOLLM2, messages=long, max_tokens=4, stream=stream
                )
            assert caught.value.code == "context_length_exceeded", caught.value.body
            assert "prompt is too long: " in caught.value.message, caught.value.message
