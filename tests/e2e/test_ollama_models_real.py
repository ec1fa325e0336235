"""The Ollama listener's discovery routes and keep_alive, through the official `ollama`
package, on the real default models, in both modes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import ollama
import pytest

from backends.catalog import GEMMA, SMOLLM2
from core.config import LlmParams
from tests.e2e.conftest import Client, real_settings, serving

pytestmark = pytest.mark.llama


def ollama_client(client: Client) -> ollama.AsyncClient:
    assert client.ollama is not None
    return ollama.AsyncClient(host=client.ollama.url, headers={"Connection": "close"})


def running(listed: ollama.ProcessResponse) -> list[str]:
    return [m.model or "" for m in listed.models]


@pytest.mark.parametrize("backend", ["server", "cli"])
async def test_ollama_client_lists_shows_and_pulls(tmp_path: Path, backend: str) -> None:
    async with serving(real_settings(tmp_path, backend=backend)) as client:
        c = ollama_client(client)
        listed = {m.model: m for m in (await c.list()).models}
        assert {f"{SMOLLM2}:latest", f"{GEMMA}:latest"} <= set(listed)
        smol = listed[f"{SMOLLM2}:latest"]
        assert smol.details is not None and smol.details.family == "llama"
        assert smol.details.quantization_level == "Q4_1"  # the wheel's file (LLAMA_NOTES.md)
        assert smol.details.parameter_size and smol.details.parameter_size.endswith("M")
        assert smol.size and smol.size > 50_000_000 and smol.modified_at

        shown = await c.show(SMOLLM2)
        assert shown.modelinfo is not None
        assert shown.modelinfo["general.architecture"] == "llama"
        assert shown.modelinfo["llama.embedding_length"] == 576
        assert shown.template and "<|im_start|>" in shown.template  # its own ChatML
        assert shown.capabilities is not None and "completion" in shown.capabilities
        gemma = await c.show(f"{GEMMA}:latest")
        assert gemma.capabilities is not None and "vision" in gemma.capabilities
        assert gemma.modelinfo and gemma.modelinfo["gemma3.embedding_length"] == 640

        progress = [p.status async for p in await c.pull(SMOLLM2, stream=True)]
        assert progress[-1] == "success"
        assert (await c.pull(f"{GEMMA}:latest")).status == "success"
        with pytest.raises(ollama.ResponseError) as missing:
            await c.pull("llama3.2")
        assert missing.value.status_code == 404 and "does not exist" in missing.value.error
        with pytest.raises(ollama.ResponseError) as unknown:
            await c.show("llama3.2")
        assert unknown.value.status_code == 404
        assert unknown.value.error == "model 'llama3.2' not found"

        async with client.ollama.http.get("/api/version") as resp:  # type: ignore[union-attr]
            assert (await resp.json())["version"] == "0.12.6"  # [ollama] version's default
        if backend == "cli":
            assert (await c.ps()).models == []  # nothing resident in cli mode


async def test_ollama_keep_alive_loads_and_unloads_through_the_pool(tmp_path: Path) -> None:
    """Open WebUI's load and unload: an empty generate, then one with keep_alive 0; /api/ps
    shows the model in between, with an expiry as keep_alive said."""
    settings = real_settings(tmp_path, llm_params=LlmParams(ctx_size=2048))
    async with serving(settings) as client:
        c = ollama_client(client)
        await c.generate(model=SMOLLM2, prompt="", keep_alive="10m")
        ps = await c.ps()
        assert f"{SMOLLM2}:latest" in running(ps)
        (smol,) = [m for m in ps.models if m.model == f"{SMOLLM2}:latest"]
        assert smol.size and smol.size > 0 and smol.expires_at is not None
        left = smol.expires_at - datetime.now(UTC)
        assert timedelta(minutes=8) < left <= timedelta(minutes=10, seconds=5)

        await c.generate(model=SMOLLM2, prompt="", keep_alive=-1)
        (smol,) = [m for m in (await c.ps()).models if m.model == f"{SMOLLM2}:latest"]
        assert smol.expires_at is not None and smol.expires_at.year > 2200  # for ever

        await c.generate(model=f"{SMOLLM2}:latest", prompt="", keep_alive=0)
        assert f"{SMOLLM2}:latest" not in running(await c.ps())
        _, body = await client.get("/api/models")
        assert {m["name"]: m["status"] for m in body["models"]}[SMOLLM2] == "unloaded"
