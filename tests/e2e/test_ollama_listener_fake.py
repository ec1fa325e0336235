"""The Ollama listener over the fake llama binaries: its port, its discovery routes in
Ollama's shapes, its errors, and what it does not share with the main port."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.config import ConfigError, Ollama, Settings
from gateway.cli import listen_sockets
from gateway.doctor import run_doctor
from tests.conftest import free_port
from tests.e2e.conftest import Client, fake_settings, serving
from tests.helpers import write_config

STUB = "stub:latest"


def ollama(client: Client) -> Client:
    assert client.ollama is not None
    return client.ollama


async def _loaded(client: Client) -> bool:
    _, body = await client.get("/api/models")
    return "loaded" in [m["status"] for m in body["models"]]


@asynccontextmanager
async def settled(settings: Settings) -> AsyncIterator[Client]:
    """`serving`, once the stub (every role's default) has loaded at startup: a gateway
    stopped while it spawns a llama-server can leave a pipe to the loop's end (and pytest
    fails the next test on the warning), which has nothing to do with these tests."""
    async with serving(settings) as client:
        with anyio.fail_after(30):
            while not await _loaded(client):  # noqa: ASYNC110 - polled over HTTP
                await anyio.sleep(0.02)
        yield client


async def test_ollama_listener_answers_like_ollama_from_the_root(tmp_path: Path) -> None:
    async with settled(fake_settings(tmp_path)) as client:
        port = ollama(client)
        async with port.http.get("/") as resp:
            assert resp.status == 200 and await resp.text() == "Ollama is running"
        async with port.http.head("/") as resp:
            assert resp.status == 200
        status, body = await port.get("/api/version")
        assert status == 200 and [int(n) for n in body["version"].split(".")] >= [0, 12]
        # The main port keeps its own routes, and has none of these.
        status, body = await client.get("/api/version")
        assert status == 404 and isinstance(body["error"], dict)


async def test_ollama_tags_lists_every_model_with_its_gguf_details(tmp_path: Path) -> None:
    async with settled(fake_settings(tmp_path)) as client:
        status, body = await ollama(client).get("/api/tags")
    assert status == 200
    (model,) = body["models"]
    assert model["name"] == model["model"] == STUB
    # The model and its projector (the stub is both, in fake_settings).
    assert model["size"] == 2 * (tmp_path / "stub.gguf").stat().st_size
    assert len(model["digest"]) == 64 and model["modified_at"]
    assert model["details"] == {
        "parent_model": "",
        "format": "gguf",
        "family": "gemma3",
        "families": ["gemma3"],
        "parameter_size": "7",  # the stub's seven one-float tensors
        "quantization_level": "",
    }


@pytest.mark.parametrize("name", ["stub", "stub:latest"])
async def test_ollama_show_reads_the_header_and_says_what_the_model_can(
    tmp_path: Path, name: str
) -> None:
    async with settled(fake_settings(tmp_path)) as client:
        status, body = await ollama(client).post("/api/show", {"model": name})
    assert status == 200
    assert body["model_info"]["general.architecture"] == "gemma3"
    assert body["model_info"]["gemma3.embedding_length"] == 640
    assert body["details"]["family"] == "gemma3"
    # The stub is its own projector (fake_settings' old per-role keys): vision too.
    assert body["capabilities"] == ["completion", "tools", "vision", "embedding"]
    assert "num_ctx" in body["parameters"] and "temperature" in body["parameters"]


async def test_ollama_errors_are_ollamas_shape(tmp_path: Path) -> None:
    async with settled(fake_settings(tmp_path)) as client:
        port = ollama(client)
        assert await port.post("/api/show", {"model": "nope"}) == (
            404,
            {"error": "model 'nope' not found"},
        )
        status, body = await port.post("/api/show", {})
        assert status == 400 and body == {"error": "model is required"}
        status, body = await port.get("/api/nothing-here")
        assert status == 404 and "/api/nothing-here" in body["error"]
        async with port.http.post("/api/tags") as resp:  # a GET route
            assert resp.status == 405 and "error" in await resp.json()
        for path, payload in [
            ("/api/create", {"model": "x"}),
            ("/api/copy", {"source": "stub", "destination": "y"}),
            ("/api/push", {"model": "stub"}),
        ]:
            status, body = await port.post(path, payload)
            assert status == 400 and "does not" in body["error"], path
        async with port.http.delete("/api/delete", json={"model": "stub"}) as resp:
            assert resp.status == 400 and "does not delete" in (await resp.json())["error"]
        status, body = await port.post("/api/copy", {"source": "nope", "destination": "y"})
        assert status == 404 and body == {"error": "model 'nope' not found"}


async def test_ollama_pull_of_a_model_we_have_is_a_finished_pull(tmp_path: Path) -> None:
    async with settled(fake_settings(tmp_path)) as client:
        port = ollama(client)
        async with port.http.post("/api/pull", json={"model": "stub"}) as resp:
            assert resp.headers["content-type"] == "application/x-ndjson"
            lines = [json.loads(line) for line in (await resp.text()).splitlines()]
        assert lines[0] == {"status": "pulling manifest"} and lines[-1] == {"status": "success"}
        assert await port.post("/api/pull", {"model": STUB, "stream": False}) == (
            200,
            {"status": "success"},
        )
        status, body = await port.post("/api/pull", {"model": "llama3.2"})
        assert status == 404 and "file does not exist" in body["error"]


async def test_ollama_listener_serves_v1_as_the_main_port(tmp_path: Path) -> None:
    async with settled(fake_settings(tmp_path)) as client:
        status, body = await ollama(client).get("/v1/models")
        assert status == 200 and "stub" in [m["id"] for m in body["data"]]
        status, body = await ollama(client).get("/v1/nothing")
        assert status == 404 and isinstance(body["error"], dict)  # OpenAI's shape there


async def test_ollama_ps_lists_loaded_models_with_their_expiry(tmp_path: Path) -> None:
    async with settled(fake_settings(tmp_path)) as client:
        status, body = await ollama(client).get("/api/ps")
    assert status == 200
    (model,) = body["models"]
    assert model["name"] == STUB and model["size"] > 0 and model["context_length"] == 12192
    assert model["expires_at"].startswith("2")  # no TTL: for ever (Ollama's year ~2318)


async def test_ollama_listener_off_binds_one_port(tmp_path: Path) -> None:
    settings = fake_settings(tmp_path, ollama=Ollama(enabled=False))
    sockets = listen_sockets(settings)
    try:
        assert [s.getsockname()[1] for s in sockets] == [settings.port]
    finally:
        for s in sockets:
            s.close()


def test_ollama_port_taken_stops_startup_naming_the_setting(tmp_path: Path) -> None:
    port = free_port()
    settings = fake_settings(tmp_path, ollama=Ollama(listen=f"127.0.0.1:{port}"))
    with socket.socket() as held:
        held.bind(("127.0.0.1", port))
        held.listen()
        with pytest.raises(ConfigError, match=r"\[ollama\] listen.*\[ollama\] enabled = false"):
            listen_sockets(settings)
    # The main port's socket was closed again: it can be bound at once.
    with socket.socket() as again:
        again.bind(("127.0.0.1", settings.port))


async def test_ollama_and_main_port_share_the_pool(tmp_path: Path) -> None:
    async with settled(fake_settings(tmp_path)) as client:
        await client.post("/api/models/stub/load", {})
        status, body = await ollama(client).get("/api/ps")
        assert status == 200 and [m["name"] for m in body["models"]] == [STUB]
        await client.post("/api/models/stub/unload", {})
        status, body = await ollama(client).get("/api/ps")
        assert body["models"] == []
        async with aiohttp.ClientSession() as http:
            url = f"http://{client.url.split('//')[1]}/"
            async with http.get(url) as resp:  # the main port's root is the dashboard
                assert resp.status == 200 and "Ollama is running" not in await resp.text()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("options", {"temperature": 0}),
        ("keep_alive", "5m"),
        ("images", ["aGk="]),
        ("think", True),
        ("format", "json"),
    ],
)
async def test_seed_chat_refuses_ollama_fields_pointing_at_the_ollama_port(
    tmp_path: Path, field: str, value: object
) -> None:
    body = {"messages": [{"role": "user", "content": "Hi"}], field: value}
    async with settled(fake_settings(tmp_path)) as client:
        status, answer = await client.post("/api/chat", body)
    assert status == 400
    assert answer["error"]["param"] == field
    assert "[ollama] listen" in answer["error"]["message"]


def test_ai_server_serve_stops_when_the_ollama_port_is_taken(tmp_path: Path) -> None:
    """As a real Ollama on 11434 would: exit 2 at once, naming the setting, before any
    llama-server starts."""
    config = write_config(tmp_path, free_port(), free_port())
    taken = free_port()
    text = config.read_text()
    config.write_text(re.sub(r'listen = "127.0.0.1:\d+"', f'listen = "127.0.0.1:{taken}"', text))
    with socket.socket() as held:
        held.bind(("127.0.0.1", taken))
        held.listen()
        done = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 2, done.stderr
    assert f"cannot listen on 127.0.0.1:{taken} ([ollama] listen)" in done.stderr
    assert "[ollama] enabled = false" in done.stderr
    assert "supervisor.spawned" not in done.stderr


def test_doctor_checks_the_ollama_port(tmp_path: Path) -> None:
    taken = free_port()
    settings = Settings(cache_dir=str(tmp_path), ollama=Ollama(listen=f"127.0.0.1:{taken}"))
    lines: list[str] = []
    with socket.socket() as held:
        held.bind(("127.0.0.1", taken))
        held.listen()
        run_doctor(settings, lines.append)
    assert f"  in use   ollama listener   127.0.0.1:{taken}" in lines


async def test_requests_on_the_ollama_port_are_counted_in_their_dialect(tmp_path: Path) -> None:
    """/api/chat on the Ollama port is Ollama's, on the main port the gateway's own; /v1 on
    the Ollama port is OpenAI's: the `dialect` label of ai_server_requests_total says so."""
    ask = {"model": STUB, "messages": [{"role": "user", "content": "Hi"}], "stream": False}
    async with settled(fake_settings(tmp_path)) as client:
        assert (await ollama(client).post("/api/chat", ask))[0] == 200
        assert (await ollama(client).post("/v1/chat/completions", ask))[0] == 200
        assert (await client.post("/api/chat", {"messages": ask["messages"]}))[0] == 200
        async with client.http.get("/metrics") as resp:
            text = await resp.text()
    counted = {
        (s.labels["route"], s.labels["dialect"])
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "ai_server_requests_total" and s.labels["status"] == "200"
    }
    assert {("/api/chat", "ollama"), ("/v1/chat/completions", "openai"),
            ("/api/chat", "api")} <= counted  # fmt: skip
