"""The model pool through the real gateway, over fake llama-servers that hold as much memory
as told: names and aliases, eviction within the budget, waits, never-fits, TTL, load and
unload, and cli mode's selection by name."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import msgspec
import openai
import pytest

from backends.catalog import ModelDef
from backends.specs import estimate_mb, server_spec
from core.config import Auth, ConfigError, LlmParams, ModelConfig, Pool, Roles, Settings
from gateway.app import create_app
from tests.e2e.conftest import Client, fake_settings, recorded, serving
from tests.helpers import alive, gguf_bytes
from tests.supervisor.conftest import behave

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
# KV cache dimensions that make the estimate ~100 MiB at the default context.
SHAPE: dict[str, Any] = {"block_count": 8, "head_count_kv": 2, "key_length": 128,
                         "value_length": 128, "head_count": 2}  # fmt: skip


def stub(tmp_path: Path, name: str, **shape: Any) -> str:
    path = tmp_path / f"{name}.gguf"
    path.write_bytes(gguf_bytes(**(SHAPE | shape)))
    return str(path)


def estimate(path: str) -> int:
    return estimate_mb(server_spec(ModelDef(name="x", path=path), LlmParams()))


def pool_settings(tmp_path: Path, budget_mb: int, **models: ModelConfig) -> Settings:
    return fake_settings(
        tmp_path,
        cache_dir=str(tmp_path / "cache"),  # no built-in models: only these
        models=models,
        roles=Roles(chat="a", embedding="a", vision="a"),
        pool=Pool(memory_budget_mb=budget_mb),
    )


async def models_of(client: Client) -> dict[str, dict[str, Any]]:
    status, body = await client.get("/api/models")
    assert status == 200
    return {m["name"]: m for m in body["models"]}


async def chat(client: Client, model: str) -> tuple[int, Any]:
    return await client.post("/v1/chat/completions", CHAT | {"model": model})


async def test_pool_evicts_the_idle_model_to_load_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = stub(tmp_path, "a"), stub(tmp_path, "b")
    need = estimate(a)
    behave(monkeypatch, hold_mb=need)  # measured RSS > the estimate: only one fits
    settings = pool_settings(
        tmp_path, need * 3 // 2, a=ModelConfig(path=a), b=ModelConfig(path=b, aliases=["gpt-4o"])
    )
    async with serving(settings) as client:
        status, answer = await chat(client, "a")
        assert status == 200 and answer["model"] == "a"
        first = await models_of(client)
        assert first["a"]["status"] == "loaded" and first["b"]["status"] == "unloaded"
        assert first["a"]["memory_source"] == "measured" and first["a"]["memory_mb"] > need
        assert first["b"]["memory_source"] == "estimate" and first["b"]["memory_mb"] == need
        a_pid = first["a"]["pid"]

        status, answer = await chat(client, "gpt-4o")  # b by its alias
        assert status == 200 and answer["model"] == "b"
        after = await models_of(client)
        assert after["a"]["status"] == "unloaded" and after["b"]["status"] == "loaded"
        assert not alive(a_pid)
        status, body = await client.get("/api/models")
        assert body["memory_used_mb"] <= body["memory_budget_mb"] == need * 3 // 2
        metrics = await (await client.http.get("/metrics")).text()
        assert "ai_server_model_swaps_total 1.0" in metrics
        assert 'ai_server_model_evictions_total{model="a"' in metrics


async def test_pool_never_evicts_a_model_with_a_request_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = stub(tmp_path, "a"), stub(tmp_path, "b")
    need = estimate(a)
    behave(monkeypatch, hold_mb=need, answer_delay=3.0)
    settings = pool_settings(tmp_path, need * 3 // 2, a=ModelConfig(path=a), b=ModelConfig(path=b))
    async with serving(settings) as client:
        await client.post("/api/models/a/load", {})
        ended: dict[str, float] = {}

        async def ask(model: str) -> None:
            status, answer = await chat(client, model)
            assert status == 200 and answer["model"] == model
            ended[model] = time.monotonic()

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask, "a")
            with anyio.fail_after(10):
                while (await models_of(client))["a"]["in_flight"] == 0:  # noqa: ASYNC110
                    await anyio.sleep(0.02)
            tg.start_soon(ask, "b")
            await anyio.sleep(0.5)
            waiting = await models_of(client)
            assert "a" not in ended, "the request to a should still be in flight"
            assert waiting["a"]["status"] == "loaded" and waiting["a"]["in_flight"] == 1
            assert waiting["b"]["status"] == "unloaded"  # waiting for memory, not loading
        assert ended["a"] < ended["b"]


async def test_pool_model_that_can_never_fit_fails_without_retry_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    behave(monkeypatch)
    a, huge = stub(tmp_path, "a"), stub(tmp_path, "huge", block_count=64)
    settings = pool_settings(
        tmp_path, estimate(a) + 10, a=ModelConfig(path=a), huge=ModelConfig(path=huge)
    )
    async with serving(settings) as client:
        async with client.http.post("/api/chat", json=CHAT | {"model": "huge"}) as resp:
            body = await resp.json()
            assert resp.status == 503 and "Retry-After" not in resp.headers
        assert body["error"]["code"] == "model_exceeds_budget"
        assert "memory budget" in body["error"]["message"]
        listed = await models_of(client)
        assert listed["huge"]["status"] == "failed" and "budget" in listed["huge"]["last_error"]
        # The state says so too: "failed" beside a STOPPED state was a flag beside it.
        assert [i["state"] for i in listed["huge"]["instances"]] == ["failed"]
        assert (await client.get("/ready"))[0] == 200  # no role points at it
    # The same model pinned (or as a role's default) is a startup error.
    models = {"a": ModelConfig(path=a), "huge": ModelConfig(path=huge, pinned=True)}
    pinned = msgspec.structs.replace(settings, models=models)
    with pytest.raises(ConfigError, match=r"huge \(pinned\) needs"):
        create_app(pinned)


async def test_pool_ttl_unloads_an_idle_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    behave(monkeypatch)
    a, b = stub(tmp_path, "a"), stub(tmp_path, "b")
    settings = pool_settings(tmp_path, 0, a=ModelConfig(path=a), b=ModelConfig(path=b, ttl_s=0.3))
    async with serving(settings) as client:
        assert (await chat(client, "b"))[0] == 200
        pid = (await models_of(client))["b"]["pid"]
        with anyio.fail_after(10):
            while (await models_of(client))["b"]["status"] != "unloaded":  # noqa: ASYNC110
                await anyio.sleep(0.05)
        assert not alive(pid)
        assert (await models_of(client))["a"]["status"] == "loaded"  # no ttl: stays


async def test_pool_load_and_unload_need_admin_and_are_409_in_cli_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    behave(monkeypatch, answer_delay=0.5)
    a, b = stub(tmp_path, "a"), stub(tmp_path, "b")
    settings = pool_settings(tmp_path, 0, a=ModelConfig(path=a), b=ModelConfig(path=b))
    settings = msgspec.structs.replace(settings, auth=Auth(api_keys=["user"], admin_keys=["root"]))
    user, root = {"Authorization": "Bearer user"}, {"Authorization": "Bearer root"}
    async with serving(settings) as client:
        assert (await client.post("/api/models/b/load", {}, headers=user))[0] == 403
        status, loaded = await client.post("/api/models/b/load", {}, headers=root)
        assert status == 200 and loaded["status"] == "loaded" and alive(loaded["pid"])
        # Unloading a busy model drains it first: the request in flight still succeeds.
        async with anyio.create_task_group() as tg:
            results: list[int] = []

            async def busy() -> None:
                results.append((await client.post("/api/chat", CHAT | {"model": "b"},
                                                  headers=user))[0])  # fmt: skip

            tg.start_soon(busy)
            await anyio.sleep(0.2)
            status, unloaded = await client.post("/api/models/b/unload", {}, headers=root)
        assert status == 200 and unloaded["status"] == "unloaded" and results == [200]
        assert not alive(loaded["pid"])
        status, missing = await client.post("/api/models/nope/load", {}, headers=root)
        assert status == 404 and missing["error"]["code"] == "model_not_found"
        await client.post("/api/config", {"backend": "cli"}, headers=root)
        assert (await client.post("/api/models/a/load", {}, headers=root))[0] == 409


async def test_pool_unknown_model_is_a_404_for_the_openai_client(tmp_path: Path) -> None:
    settings = pool_settings(tmp_path, 0, a=ModelConfig(path=stub(tmp_path, "a")))
    async with serving(settings) as client:
        api = openai.AsyncOpenAI(base_url=client.url + "/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.NotFoundError) as caught:
            await api.chat.completions.create(
                model="no-such-model", messages=[{"role": "user", "content": "hi"}]
            )
        error = caught.value.body
        assert isinstance(error, dict) and error["code"] == "model_not_found"
        assert error["param"] == "model" and "a" in error["message"]
        with pytest.raises(openai.NotFoundError):
            await api.embeddings.create(model="no-such-model", input="hi")
        await api.close()
        status, body = await client.post("/api/chat", CHAT | {"model": "no-such-model"})
        assert status == 404 and body["error"]["type"] == "invalid_request"
        models = {m["id"]: m for m in (await client.get("/v1/models"))[1]["data"]}
        assert models["a"]["roles"] == ["chat", "embedding", "vision"]


async def test_cli_mode_selects_the_gguf_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = tmp_path / "record.jsonl"
    a, b = stub(tmp_path, "a"), stub(tmp_path, "b")
    settings = pool_settings(tmp_path, 0, a=ModelConfig(path=a),
                             b=ModelConfig(path=b, aliases=["bee"]))  # fmt: skip
    settings = msgspec.structs.replace(settings, backend="cli")
    behave(monkeypatch, record=str(record))
    async with serving(settings) as client:
        status, answer = await client.post("/api/chat", CHAT | {"model": "bee"})
        assert status == 200 and answer["model"] == "b"
        status, embedded = await client.post("/v1/embeddings", {"input": "x", "model": "a"})
        assert status == 200 and embedded["model"] == "a"
    models = [run["argv"][run["argv"].index("--model") + 1] for run in recorded(record)]
    assert models == [b, a]


async def test_rescan_adds_models_dir_files_and_vision_needs_a_projector(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    behave(monkeypatch)
    folder = tmp_path / "models"
    folder.mkdir()
    settings = pool_settings(tmp_path, 0, a=ModelConfig(path=stub(tmp_path, "a")))
    settings = msgspec.structs.replace(settings, pool=Pool(models_dir=str(folder)))
    async with serving(settings) as client:
        assert "late" not in await models_of(client)
        stub(folder, "late")
        stub(folder, "mmproj-late")
        status, body = await client.post("/api/models/rescan", {})
        assert status == 200 and "late" in body["models"] and "mmproj-late" not in body["models"]
        assert (await chat(client, "late"))[0] == 200
        # "a" has no projector: an image for it is a 400 that says so.
        status, refused = await client.post("/api/tag", {"image": "aGk=", "model": "a"})
        assert status == 400 and "no projector" in refused["error"]["message"]
