"""The first requests of three Ollama clients, replayed against the Ollama listener over the
fake llama binaries, in both modes: what each sends, in its order, and what it reads from
the answers (taken from their source).

- Open WebUI (backend/open_webui/routers/ollama.py): the connection check `GET /api/version`
  (the version parsed as numbers: `tuple(map(int, re.sub(r"^v|-.*", "", v).split(".")))`),
  the model list `GET /api/tags` (merged by `model`), `GET /api/ps` (`name`, `expires_at`
  through `datetime.fromisoformat`), `POST /api/show`, a chat streamed as NDJSON, and the
  unload button: `POST /api/generate {"model", "keep_alive": 0, "prompt": ""}` read with
  aiohttp's `json()` (so `application/json`, not a stream). Every request carries
  `Content-Type: application/json`, GETs too.
- Home Assistant (homeassistant/components/ollama: config_flow.py, coordinator.py,
  entity.py), through the `ollama` package: `list()` to validate the URL, `list()` again
  (a model missing from it would be pulled), the coordinator's `list()` and `ps()`, then
  `chat(model, messages, tools, stream=True, keep_alive=-1, options={"num_ctx": 8192},
  think=None, format=None)`, reading `message.content` and `done` of each chunk.
- n8n (credentials/OllamaApi.credentials.ts, nodes/llms/LMOllama/methods/loadOptions.ts):
  the credential test `GET /` (any 2xx), the model picker `GET /api/tags` (`models[].name`),
  then LangChain's ChatOllama: `POST /api/chat` streamed, with `options`.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import ollama
import pytest

from tests.e2e.conftest import Client, fake_settings, serving

JSON_HEADERS = {"Content-Type": "application/json"}
MODEL = "stub:latest"


def port(client: Client) -> Client:
    assert client.ollama is not None
    return client.ollama


async def ndjson_chat(http: aiohttp.ClientSession, body: dict[str, Any]) -> list[Any]:
    async with http.post("/api/chat", data=json.dumps(body), headers=JSON_HEADERS) as resp:
        assert resp.status == 200
        assert resp.headers["content-type"].startswith("application/x-ndjson")
        return [json.loads(line) async for line in resp.content if line.strip()]


def said(lines: list[Any]) -> str:
    assert [line["done"] for line in lines][-1] is True
    return "".join(line["message"]["content"] for line in lines)


@pytest.mark.parametrize("backend", ["server", "cli"])
async def test_open_webui_connects_lists_chats_and_unloads(tmp_path: Path, backend: str) -> None:
    async with serving(fake_settings(tmp_path, backend=backend)) as client:
        http = port(client).http
        async with http.get("/api/version", headers=JSON_HEADERS) as resp:
            assert resp.status == 200
            version = (await resp.json())["version"]
        assert tuple(map(int, re.sub(r"^v|-.*", "", version).split("."))) >= (0, 12)

        async with http.get("/api/tags", headers=JSON_HEADERS) as resp:
            merged = {m["model"]: m for m in (await resp.json())["models"]}
        assert MODEL in merged and merged[MODEL]["name"] == MODEL

        async with http.post(
            "/api/show", data=json.dumps({"model": MODEL}), headers=JSON_HEADERS
        ) as resp:
            shown = await resp.json()
        assert shown["details"]["format"] == "gguf" and "completion" in shown["capabilities"]

        chat = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Hello"}],
            "stream": True,
            "options": {"temperature": 0.8},
        }
        assert said(await ndjson_chat(http, chat)) == "fake answer"

        async with http.get("/api/ps", headers=JSON_HEADERS) as resp:
            loaded = (await resp.json())["models"]
        expires = {
            m["name"]: int(datetime.fromisoformat(m["expires_at"]).timestamp()) for m in loaded
        }
        assert list(expires) == ([MODEL] if backend == "server" else [])

        unload = {"model": MODEL, "keep_alive": 0, "prompt": ""}
        async with http.post("/api/generate", data=json.dumps(unload), headers=JSON_HEADERS) as r:
            assert r.status == 200
            answer = await r.json()  # aiohttp's: refuses anything but application/json
        assert answer["done"] is True and answer["done_reason"] == "unload"
        async with http.get("/api/ps", headers=JSON_HEADERS) as resp:
            assert (await resp.json())["models"] == []


@pytest.mark.parametrize("backend", ["server", "cli"])
async def test_home_assistant_validates_polls_and_converses(tmp_path: Path, backend: str) -> None:
    async with serving(fake_settings(tmp_path, backend=backend)) as client:
        ha = ollama.AsyncClient(host=port(client).url, headers={"Connection": "close"})
        await ha.list()  # config_flow: the URL is an Ollama server
        downloaded = {m["model"] for m in (await ha.list()).get("models", [])}
        assert MODEL in downloaded  # so HA does not ask for a pull
        installed, running = await ha.list(), await ha.ps()  # the coordinator, every 30 s
        assert installed.models and running.models is not None

        stream = await ha.chat(
            model=MODEL,
            messages=[
                ollama.Message(role="system", content="You are a voice assistant."),
                ollama.Message(role="user", content="Turn on the kitchen light"),
            ],
            tools=None,
            stream=True,
            keep_alive=-1,
            options={"num_ctx": 8192},
            think=None,
            format=None,
        )
        chunks = [chunk async for chunk in stream]
        assert "".join(c["message"].get("content") or "" for c in chunks) == "fake answer"
        assert chunks[-1]["done"] is True
        if backend == "server":  # keep_alive -1: loaded for ever
            (smol,) = (await ha.ps()).models
            assert smol.expires_at is not None and smol.expires_at.year > 2200


@pytest.mark.parametrize("backend", ["server", "cli"])
async def test_n8n_checks_the_credential_picks_a_model_and_chats(
    tmp_path: Path, backend: str
) -> None:
    async with serving(fake_settings(tmp_path, backend=backend)) as client:
        http = port(client).http
        async with http.get("/") as resp:
            assert 200 <= resp.status < 300  # the credential test
        async with http.get("/api/tags") as resp:
            names = sorted(m["name"] for m in (await resp.json())["models"])
        assert MODEL in names
        chat = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Summarise this"}],
            "options": {"temperature": 0.7, "top_p": 1, "num_predict": 64},
            "stream": True,
        }
        assert said(await ndjson_chat(http, chat)) == "fake answer"
