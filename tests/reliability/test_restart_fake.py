"""A llama-server that dies under load, through the whole gateway over the fake binaries: the
requests in flight and those that arrive while it restarts wait for its successor (a
non-streamed request, or a stream that has sent nothing yet, is sent again to it); only a
model that has failed for good answers 503 at once. And no client's error carries a line of
llama.cpp's output: that stays in /api/models, /api/logs and the gateway's log."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from core.config import Limits, LlamaServer, ModelConfig, Roles
from tests.conftest import free_port
from tests.e2e.conftest import Client, fake_settings, serving
from tests.helpers import gguf_bytes
from tests.supervisor.conftest import behave

CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}
STREAM = {"messages": [{"role": "user", "content": "Hi"}], "stream": True}
# What the fake llama-server writes to its log, as the real one would: a path of the host.
SAID = "0.00.001.017 I srv llama_server: initializing /srv/secret/models/stub.gguf"
# A line of llama.cpp's log (time, level) or of the fakes' errors.
LOG_LINE = re.compile(r"\d+\.\d+\.\d+\.\d+ [A-Z] |^error: |\nerror: |fake failure|failed to load")


class Got(msgspec.Struct):
    route: str
    status: int
    body: Any  # JSON, or a stream's `data:` payloads


async def send(client: Client, route: str, body: dict[str, Any]) -> Got:
    async with client.http.post(route, json=body) as resp:
        raw = await resp.read()
    if resp.content_type != "text/event-stream":
        return Got(route, resp.status, json.loads(raw))
    events = [p.removeprefix(b"data: ") for p in raw.split(b"\n\n") if p.startswith(b"data: ")]
    return Got(
        route, resp.status, [e.decode() if e == b"[DONE]" else json.loads(e) for e in events]
    )


async def process(client: Client) -> dict[str, Any]:
    _, ready = await client.get("/ready")
    found: dict[str, Any] = ready["processes"][0]
    return found


async def until_process(client: Client, ok: Any, within: float = 30) -> dict[str, Any]:
    with anyio.fail_after(within):
        while True:
            found = await process(client)
            if ok(found):
                return found
            await anyio.sleep(0.02)


def messages(got: list[Got]) -> list[str]:
    """Every error message a client was sent: JSON errors and streams' error events."""
    found = []
    for g in got:
        bodies = g.body if isinstance(g.body, list) else [g.body]
        found += [b["error"]["message"] for b in bodies if isinstance(b, dict) and "error" in b]
    return found


async def test_a_llama_server_killed_under_load_fails_no_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    behave(monkeypatch, answer_delay=1.0, load_delay=0.3, say=SAID)
    # One client sends all 16: its line may hold them (the 4 slots are busy throughout).
    limits = Limits(request_timeout_s=10, per_client_queue=16)
    async with serving(fake_settings(tmp_path, limits=limits)) as client:
        assert (await send(client, "/api/chat", CHAT)).status == 200
        first = (await process(client))["pid"]
        got: list[Got] = []

        async def one(route: str, body: dict[str, Any]) -> None:
            got.append(await send(client, route, body))

        async with anyio.create_task_group() as tg:
            for _ in range(2):  # in flight when it dies: nothing sent back yet
                tg.start_soon(one, "/api/chat", CHAT)
                tg.start_soon(one, "/v1/chat/completions", STREAM)
            await until_process(client, lambda p: p["in_flight"] == 4)
            os.kill(first, signal.SIGKILL)
            for _ in range(3):  # before the gateway has seen it die
                tg.start_soon(one, "/api/chat", CHAT)
                tg.start_soon(one, "/v1/chat/completions", STREAM)
            await until_process(client, lambda p: p["state"] in ("backoff", "starting"))
            for _ in range(3):  # while it restarts
                tg.start_soon(one, "/api/chat", CHAT)
                tg.start_soon(one, "/v1/chat/completions", STREAM)

        assert len(got) == 16
        bad = [g for g in got if g.status != 200 or messages([g])]
        assert bad == [], f"{len(bad)} of 16 requests failed"
        streams = [g for g in got if g.route == "/v1/chat/completions"]
        assert all(s.body[-1] == "[DONE]" for s in streams)
        assert (await process(client))["pid"] != first
        assert (await process(client))["restarts"] == 1
        async with client.http.get("/metrics") as resp:  # a counter for Prometheus
            exposition = await resp.text()
        restarts = r'^ai_server_llama_server_restarts_total\{[^}]*model="stub"[^}]*\} 1\.0$'
        assert re.search(restarts, exposition, re.M), exposition
        # The four in flight were sent again, to the new process.
        assert caplog.text.count("backend.retry") >= 4


async def test_a_model_failed_for_good_answers_503_at_once_without_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash loop spends the restart budget: the request that waited through it, and the
    next ones, get a 503 that says so in one sentence; the log stays with the admins."""
    behave(monkeypatch, exit_at_start=1, say=SAID)
    budget = LlamaServer(port=free_port(), restart_limit=2, backoff_initial_s=0.05)
    async with serving(fake_settings(tmp_path, llama_server=budget)) as client:
        got = [await send(client, "/api/chat", CHAT) for _ in range(2)]
        assert [g.status for g in got] == [503, 503]
        assert (await process(client))["state"] == "failed"
        for message in messages(got):
            assert "llama-server for stub has failed" in message
            assert not LOG_LINE.search(message) and "\n" not in message, message
        status, models = await client.get("/api/models")
        assert status == 200 and "failed to load model" in json.dumps(models)


@pytest.mark.parametrize("mode", ["server", "cli"])
async def test_no_client_error_carries_a_llama_log_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    """Every way llama fails here, in both modes, as the client sees it."""
    if mode == "server":
        behave(monkeypatch, exit_at_start=1, say=SAID)
        llama = LlamaServer(port=free_port(), restart_limit=0)
    else:
        behave(monkeypatch, exit=3)
        llama = LlamaServer(port=free_port())
    settings = fake_settings(tmp_path, backend=mode, llama_server=llama)
    async with serving(settings) as client:
        got = [
            await send(client, "/api/chat", CHAT),
            await send(client, "/api/chat", CHAT | {"stream": True}),
            await send(client, "/v1/chat/completions", STREAM),
            await send(client, "/v1/embeddings", {"input": "hello"}),
            await send(client, "/api/generate-embeddings", {"input": "hello"}),
        ]
        assert all(g.status in (502, 503) for g in got), got
        said = messages(got)
        assert len(said) == len(got)
        for message in said:
            assert not LOG_LINE.search(message) and "\n" not in message, message
        # What the admins need is where they look: the model's log, the gateway's log.
        status, models = await client.get("/api/models")
        assert status == 200
        if mode == "server":
            assert "failed to load model" in json.dumps(models)
        else:
            assert "fake failure" in caplog.text


async def test_a_routed_model_whose_instances_all_restart_fails_no_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two local replicas, both killed: the requests that come while they restart wait for
    them, as a single instance's do, instead of a 503 'no instance can take requests'."""
    behave(monkeypatch, load_delay=0.3)
    model = tmp_path / "m.gguf"
    model.write_bytes(gguf_bytes())
    settings = fake_settings(
        tmp_path,
        models={"m": ModelConfig(path=str(model), replicas=2)},
        roles=Roles(chat="m", embedding="m", vision="m"),
        limits=Limits(request_timeout_s=10, per_client_queue=16),
    )
    async with serving(settings) as client:
        assert (await send(client, "/api/chat", CHAT)).status == 200
        _, ready = await client.get("/ready")
        pids = [p["pid"] for p in ready["processes"]]
        assert len(pids) == 2 and all(pids)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)

        await until_process(client, lambda p: p["state"] in ("backoff", "starting"))
        got: list[Got] = []

        async def one() -> None:
            got.append(await send(client, "/api/chat", CHAT))

        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(one)
        assert [g.status for g in got] == [200] * 6, messages(got)
