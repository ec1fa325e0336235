"""Ollama's `suffix` (fill in the middle) through the official `ollama` client, on a model
whose vocabulary has FIM tokens (tests.fim_model's copy of SmolLM2: no built-in model has
them): server mode sends it to llama-server's /infill, cli mode gives llama-completion the
prompt /infill builds (backends.infill). The same prompt, token for token: greedy, both modes
answer the same text from the same count of prompt tokens, with llama-server's cuts (its
preamble cut to its last 2 tokens without embeddings at the default sizes; a long prefix
and suffix cut at a small batch). And Continue's autocomplete, replayed from its source
(core/llm/llms/Ollama.ts): `POST /api/show {"name"}` (its `parameters` parsed line by line,
`template` searched for `.Suffix`), then `POST /api/generate` NDJSON, raw with its own FIM
template or with `suffix`, read line by line (`error` thrown, `response` yielded)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import aiohttp
import ollama
import pytest

from backends.catalog import SMOLLM2
from core.config import ModelConfig
from tests.e2e.conftest import real_settings, serving
from tests.e2e.test_ollama_chat_real import ollama_client
from tests.fim_model import write_fim_model

pytestmark = pytest.mark.llama

GREEDY = {"temperature": 0, "top_k": 1, "presence_penalty": 0, "seed": 42, "num_predict": 12}
PREFIX = 'def add(a, b):\n    """Add two numbers, e.g. print(f"{add(1, 2)}\\n")."""\n    return'
SUFFIX = "\n\n\nprint(add(2, 3))\n"
# Longer than a batch of 64 keeps (48 tokens of prefix, 14 of suffix).
LONG_PREFIX = "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(12)) + PREFIX
LONG_SUFFIX = SUFFIX + "".join(f"print(f{i}(1))\n" for i in range(12))


@pytest.fixture(scope="module")
def fim_model(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fim_model(smollm2, tmp_path_factory.mktemp("fim")).path


async def fill(tmp_path: Path, backend: str, model: Path) -> list[ollama.GenerateResponse]:
    models = {
        "fim": ModelConfig(path=str(model)),
        "fim-small": ModelConfig(path=str(model), ctx_size=256, batch_size=64, ubatch_size=64),
        "fim-plain": ModelConfig(path=str(model), embeddings=False),
    }
    settings = real_settings(tmp_path / backend, backend=backend, models=models)
    async with serving(settings) as client:
        c = ollama_client(client)
        assert "insert" in ((await c.show("fim")).capabilities or [])
        assert "insert" not in ((await c.show(SMOLLM2)).capabilities or [])
        with pytest.raises(ollama.ResponseError) as caught:
            await c.generate(model=SMOLLM2, prompt=PREFIX, suffix=SUFFIX)
        assert caught.value.status_code == 400
        assert caught.value.error == f'"{SMOLLM2}" does not support insert'

        whole = await c.generate(model="fim", prompt=PREFIX, suffix=SUFFIX, options=GREEDY)
        streamed = [p async for p in await c.generate(model="fim", prompt=PREFIX, suffix=SUFFIX,
                                                      options=GREEDY, stream=True)]  # fmt: skip
        assert "".join(p.response or "" for p in streamed) == whole.response
        cut = await c.generate(
            model="fim-small", prompt=LONG_PREFIX, suffix=LONG_SUFFIX, options=GREEDY
        )
        plain = await c.generate(model="fim-plain", prompt=PREFIX, suffix=SUFFIX, options=GREEDY)
        assert client.ollama is not None
        await continue_autocompletes(client.ollama.http)
        return [whole, streamed[-1], cut, plain]


# Continue's parameter line (Ollama.ts): name, then a quoted or bare value.
PARAMETER = re.compile(r"^(\S+)\s+((?:\".*\")|\S+)$")


async def continue_autocompletes(http: aiohttp.ClientSession) -> None:
    async with http.post("/api/show", json={"name": "fim"}) as resp:
        shown = await resp.json()
    matches = [PARAMETER.match(line) for line in shown["parameters"].split("\n")]
    params = {m[1]: m[2] for m in matches if m is not None}
    assert ".Suffix" not in shown["template"]  # so Continue writes its own FIM prompt, raw
    options = {"temperature": 0.01, "num_predict": 12, "stop": ["\n\n", "<fim_prefix>"],
               "num_ctx": int(params["num_ctx"])}  # fmt: skip
    raw = f"<fim_prefix>{PREFIX}<fim_suffix>{SUFFIX}<fim_middle>"
    for body in (
        {"model": "fim", "prompt": raw, "raw": True, "options": options, "keep_alive": 1800,
         "stream": True},
        {"model": "fim", "prompt": PREFIX, "suffix": SUFFIX, "options": options,
         "keep_alive": 1800, "stream": True},
    ):  # fmt: skip
        async with http.post("/api/generate", json=body) as resp:
            assert resp.content_type == "application/x-ndjson"
            text = (await resp.read()).decode()
        lines = [json.loads(chunk) for chunk in text.split("\n") if chunk.strip()]
        assert all("error" not in line for line in lines), lines
        assert all(isinstance(line["response"], str) for line in lines), lines
        assert lines[-1]["done"] is True and lines[-1]["eval_count"] >= 1, lines


async def test_suffix_is_filled_in_the_same_in_both_modes(fim_model: Path, tmp_path: Path) -> None:
    server = await fill(tmp_path, "server", fim_model)
    cli = await fill(tmp_path, "cli", fim_model)
    whole, last, cut, plain = server
    assert whole.response and whole.done_reason in ("stop", "length"), whole
    assert whole.prompt_eval_count == last.prompt_eval_count
    # SmolLM2's slots are 8192 tokens (its training context); llama-server serving
    # embeddings runs with its batch at the ubatch, 1024: the whole preamble,
    # "<reponame>myproject\n" (4 tokens); without embeddings, its batch of 8192 leaves
    # 8192 - 8192 + 2 = 2 of them ("project\n").
    assert plain.prompt_eval_count == (whole.prompt_eval_count or 0) - 2
    # A batch of 64: the whole preamble (4), the 3 FIM tokens, 48 of prefix, 14 of suffix.
    assert cut.prompt_eval_count == 4 + 3 + 48 + 14
    for ours, theirs in zip(cli, server, strict=True):
        assert (ours.response, ours.prompt_eval_count) == (
            theirs.response,
            theirs.prompt_eval_count,
        )
