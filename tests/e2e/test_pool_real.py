"""The model pool with the two real built-in models, each in its own real llama-server:
selection by name and alias in both modes, the memory budget with a stream in flight, a
model that never fits, TTL, and the default chat model answering a factual question."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import msgspec
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from backends.catalog import GEMMA, SMOLLM2
from core.config import LlamaServer, LlmParams, ModelConfig, Pool, Roles
from tests.e2e.conftest import Client, real_settings, serving
from tests.helpers import alive, llama_pids

pytestmark = pytest.mark.llama

ASK: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the capital of France?"}
]
QUESTION: dict[str, Any] = {"messages": ASK}


async def models_of(client: Client) -> dict[str, dict[str, Any]]:
    status, body = await client.get("/api/models")
    assert status == 200
    return {m["name"]: m for m in body["models"]}


async def test_default_chat_model_answers_a_factual_question(tmp_path: Path) -> None:
    # The bare question's greedy answer starts "L'Étoile, la Marseillaise..." with this 135M
    # model (at the default temperature, 8 of 12 answers named Paris); asked for one
    # sentence, its greedy answer is "The capital of France is Paris."
    ask = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    async with serving(real_settings(tmp_path)) as client:
        status, answer = await client.post(
            "/api/chat", {"messages": ask, "temp": 0, "max_tokens": 32}
        )
        assert status == 200, answer
        assert answer["model"] == SMOLLM2 and "Paris" in answer["message"]["content"]


async def test_both_models_serve_by_name_and_alias_in_both_modes(tmp_path: Path) -> None:
    chat = QUESTION | {"max_tokens": 4, "temperature": 0}
    async with serving(real_settings(tmp_path)) as client:
        api = openai.AsyncOpenAI(base_url=client.url + "/v1", api_key="none", max_retries=0)
        prompt_tokens: dict[tuple[str, str], int] = {}
        for backend in ("server", "cli"):
            await client.post("/api/config", {"backend": backend})
            for name in (SMOLLM2, GEMMA, "gemma-3-270m-q4_k_m"):
                status, answer = await client.post("/v1/chat/completions", chat | {"model": name})
                assert status == 200, answer
                canonical = GEMMA if name != SMOLLM2 else SMOLLM2
                assert answer["model"] == canonical  # the name, never the file path
                prompt_tokens[backend, canonical] = answer["usage"]["prompt_tokens"]
            await related_scores_closer(client)
            if backend == "server":
                listed = await models_of(client)
                pids = {listed[n]["pid"] for n in (SMOLLM2, GEMMA)}
                assert len(pids) == 2 and all(pid and alive(pid) for pid in pids)
                # Streamed chunks carry the name too (llama-server's --alias).
                stream = await api.chat.completions.create(
                    model=GEMMA, messages=ASK, max_tokens=3, stream=True
                )
                assert {chunk.model async for chunk in stream} == {GEMMA}
            with pytest.raises(openai.NotFoundError):
                await api.chat.completions.create(model="gpt-4o", messages=ASK)
        await api.close()
    # Each model's own template renders the same prompt in both modes.
    for name in (SMOLLM2, GEMMA):
        assert prompt_tokens["server", name] == prompt_tokens["cli", name] > 5


async def related_scores_closer(client: Client) -> None:
    """The README's retrieval check, for both models: a related sentence scores closer to the
    query than an unrelated one."""
    texts = ["The cat sleeps on the sofa.", "A kitten is napping on the couch.",
             "Interest rates rose by half a percent."]  # fmt: skip
    for name, dimensions in ((GEMMA, 640), (SMOLLM2, 576)):
        status, body = await client.post("/v1/embeddings", {"model": name, "input": texts})
        assert status == 200, body
        query, related, unrelated = (row["embedding"] for row in body["data"])
        assert len(query) == dimensions
        assert dot(query, related) > dot(query, unrelated)


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))  # L2-normalised: the cosine


async def stream_to_the_end(client: Client, body: dict[str, Any]) -> list[str]:
    events = []
    async with client.http.post("/v1/chat/completions", json=body | {"stream": True}) as resp:
        assert resp.status == 200
        async for line in resp.content:
            if line.startswith(b"data: "):
                events.append(line[6:].decode().strip())
    return events


async def budget_for_one(client: Client) -> int:
    """A budget that fits either model alone but not one loaded beside the other's estimate:
    read from both loaded (measured) and both estimates, on this machine."""
    estimates = {n: m["memory_mb"] for n, m in (await models_of(client)).items()}
    for name in (SMOLLM2, GEMMA):
        assert (await client.post(f"/api/models/{name}/load", {}))[0] == 200
    measured = {n: m["memory_mb"] for n, m in (await models_of(client)).items()}
    low = max(estimates.values())
    high = min(measured[SMOLLM2] + estimates[GEMMA], measured[GEMMA] + estimates[SMOLLM2])
    assert low < high, (estimates, measured)  # such a budget exists
    budget: int = (low + high) // 2
    print(f"estimates {estimates} measured {measured}: budget {budget} MB")
    return budget


async def test_pool_budget_for_one_model_swaps_without_touching_a_stream(
    tmp_path: Path,
) -> None:
    # Chat only: an embeddings server's logits buffer (vocabulary x ubatch) would dwarf the
    # rest of gemma's estimate, and no budget could fit one model and not the other.
    chat_only = {SMOLLM2: ModelConfig(embeddings=False), GEMMA: ModelConfig(embeddings=False)}
    settings = real_settings(tmp_path, models=chat_only)
    async with serving(settings) as client:
        budget = await budget_for_one(client)
    port = settings.llama_server.port + 10  # a fresh range: the first gateway's may linger
    settings = msgspec.structs.replace(
        settings, pool=Pool(memory_budget_mb=budget), llama_server=LlamaServer(port=port)
    )
    async with serving(settings) as client:
        status, _ = await client.post("/api/chat", QUESTION | {"max_tokens": 2})
        assert status == 200
        first = await models_of(client)
        smollm2 = first[SMOLLM2]
        assert smollm2["status"] == "loaded" and smollm2["memory_source"] == "measured"
        assert first[GEMMA]["status"] == "unloaded"  # a role default, but it does not fit

        # Asking for the other evicts the idle one: its process is gone.
        status, answer = await client.post(
            "/api/chat", QUESTION | {"model": GEMMA, "max_tokens": 2}
        )
        assert status == 200 and answer["model"] == GEMMA
        swapped = await models_of(client)
        assert swapped[SMOLLM2]["status"] == "unloaded" and not alive(smollm2["pid"])
        gemma = swapped[GEMMA]
        assert gemma["status"] == "loaded"

        # A stream to gemma is in flight: a request for smollm2 waits, the stream finishes.
        long = QUESTION | {"model": GEMMA, "max_tokens": 160, "temperature": 1.0}
        results: dict[str, Any] = {}

        async def stream() -> None:
            results["stream"] = await stream_to_the_end(client, long)

        async def other() -> None:
            results["other"] = await client.post("/api/chat", QUESTION | {"max_tokens": 2})

        async with anyio.create_task_group() as tg:
            tg.start_soon(stream)
            with anyio.fail_after(30):
                while (await models_of(client))[GEMMA]["in_flight"] == 0:  # noqa: ASYNC110
                    await anyio.sleep(0.02)
            tg.start_soon(other)
            await anyio.sleep(0.5)
            during = await models_of(client)
            if "stream" not in results:  # (a fast machine may have finished it already)
                assert during[GEMMA]["status"] == "loaded" and during[GEMMA]["in_flight"] == 1
                assert during[SMOLLM2]["status"] == "unloaded"
        assert results["stream"][-1] == "[DONE]"
        assert json.loads(results["stream"][-2])["choices"][0]["finish_reason"]
        status, answer = results["other"]
        assert status == 200 and answer["model"] == SMOLLM2
        after = await models_of(client)
        assert after[SMOLLM2]["status"] == "loaded" and not alive(gemma["pid"])
        metrics = await (await client.http.get("/metrics")).text()
        assert "ai_server_model_swaps_total 2.0" in metrics
    assert not llama_pids(("llama-server",)).keys() & {gemma["pid"], smollm2["pid"]}


async def test_pool_real_model_over_the_budget_and_ttl(tmp_path: Path) -> None:
    """smollm2 with a 64k context can never fit 1 GB (its KV cache alone is ~1.5 GB);
    gemma (chat only: ~0.5 GB at ctx 2048) with ttl_s unloads when idle."""
    models = {
        SMOLLM2: ModelConfig(ctx_size=65536),
        GEMMA: ModelConfig(ttl_s=1, embeddings=False),
    }
    settings = real_settings(
        tmp_path,
        models=models,
        roles=Roles(chat=GEMMA),
        pool=Pool(memory_budget_mb=1024),
        llm_params=LlmParams(ctx_size=2048),
    )
    async with serving(settings) as client:
        async with client.http.post("/api/chat", json=QUESTION | {"model": SMOLLM2}) as resp:
            body = await resp.json()
            assert resp.status == 503 and "Retry-After" not in resp.headers
        assert body["error"]["code"] == "model_exceeds_budget"
        listed = await models_of(client)
        assert listed[SMOLLM2]["status"] == "failed" and "1024 MB" in listed[SMOLLM2]["last_error"]
        status, _ = await client.post("/api/chat", QUESTION | {"max_tokens": 2})
        assert status == 200
        pid = (await models_of(client))[GEMMA]["pid"]
        with anyio.fail_after(15):
            while (await models_of(client))[GEMMA]["status"] != "unloaded":  # noqa: ASYNC110
                await anyio.sleep(0.1)
        assert not alive(pid)
