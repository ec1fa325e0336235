"""The /api routes with the real llama.cpp binaries and the default model, in both modes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from backends.catalog import GEMMA, SMOLLM2
from tests.conftest import wait_until
from tests.e2e.conftest import Client, real_settings, serving
from tests.helpers import llama_servers_on

pytestmark = pytest.mark.llama

CONVERSATION = {
    "messages": [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
    ],
    "max_tokens": 8,
}
TEXTS = ["hello world", "a cat sat on the mat", "llamas live in the Andes"]


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


async def chat_and_embed(client: Client, backend: str) -> tuple[int, list[list[float]]]:
    status, chat = await client.post("/api/chat", CONVERSATION)
    assert status == 200, chat
    assert chat["backend"] == backend and chat["model"] == SMOLLM2
    assert chat["message"]["role"] == "assistant" and isinstance(chat["message"]["content"], str)
    assert 1 <= chat["usage"]["completion_tokens"] <= 8
    status, embedded = await client.post("/api/generate-embeddings", {"input": TEXTS})
    assert status == 200, embedded
    assert embedded["model"] == GEMMA  # the embedding model stays gemma: 640 dimensions
    assert embedded["backend"] == backend and embedded["dimensions"] == 640
    assert [len(v) for v in embedded["embeddings"]] == [640, 640, 640]
    return chat["usage"]["prompt_tokens"], embedded["embeddings"]


async def test_both_modes_serve_the_same_prompt_and_embeddings(tmp_path: Path) -> None:
    settings = real_settings(tmp_path)
    port = settings.llama_server.port
    async with serving(settings) as client:
        server_prompt, server_vectors = await chat_and_embed(client, "server")
        assert len(llama_servers_on(port)) == 1

        status, config = await client.post("/api/config", {"backend": "cli"})
        assert status == 200 and config["backend"] == "cli"
        await wait_until(lambda: not llama_servers_on(port), within=10)
        cli_prompt, cli_vectors = await chat_and_embed(client, "cli")
        assert not llama_servers_on(port)  # cli mode keeps nothing resident

        # The same conversation is the same prompt, token for token, in both modes.
        assert cli_prompt == server_prompt
        for a, b in zip(server_vectors, cli_vectors, strict=True):
            assert cosine(a, b) > 0.999
        # Different texts are different vectors.
        assert cosine(server_vectors[0], server_vectors[2]) < 0.99

        status, _ = await client.post("/api/config", {"llm_mode": "server"})
        assert status == 200
        assert (await chat_and_embed(client, "server"))[0] == server_prompt
        assert len(llama_servers_on(port)) == 1
    assert not llama_servers_on(port)


async def test_cli_mode_treats_shell_syntax_in_prompts_as_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    prompt = "--help $(touch pwned) `touch pwned2` \"quoted\" 'single'\n-n 1 ; echo done"
    async with serving(real_settings(tmp_path, backend="cli")) as client:
        status, chat = await client.post(
            "/api/chat", {"messages": [{"role": "user", "content": prompt}], "max_tokens": 4}
        )
    assert status == 200, chat
    assert chat["usage"]["prompt_tokens"] > 20  # all of it reached the model as text
    assert not list(tmp_path.glob("pwned*"))
