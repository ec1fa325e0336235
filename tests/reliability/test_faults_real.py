"""Faults injected into the real llama-server under the gateway: every request still gets a
well-formed answer in bounded time, and the supervisor brings the process back."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from backends.catalog import GEMMA
from core.config import Limits, LlamaServer, Roles
from tests.e2e.conftest import Client, real_settings, serving
from tests.helpers import llama_servers_on

pytestmark = pytest.mark.llama

# Chat and embeddings from one llama-server, the first one /ready lists: gemma-3-270m.
ONE_MODEL = Roles(chat=GEMMA)
LONG_CHAT = {"messages": [{"role": "user", "content": "Count to fifty."}], "max_tokens": 96}
BATCH = {"input": [f"text number {i} about llamas" for i in range(32)]}


class Answer(msgspec.Struct):
    route: str
    status: int
    retry_after: str | None
    body: Any


async def call(client: Client, route: str, body: object) -> Answer:
    async with client.http.post(route, json=body) as resp:
        return Answer(route, resp.status, resp.headers.get("Retry-After"), await resp.json())


async def ready_pid(client: Client, other_than: int | None = None) -> int:
    """The pid of the READY llama-server (waiting for one other than `other_than`)."""
    with anyio.fail_after(60):
        while True:
            status, ready = await client.get("/ready")
            pid: int = ready["processes"][0]["pid"]
            if status == 200 and pid != other_than:
                return pid
            await anyio.sleep(0.1)


async def stream(client: Client, body: dict[str, Any], started: anyio.Event) -> Answer:
    """A streamed chat: its `data:` payloads, parsed; `started` is set at its first event."""
    events: list[Any] = []
    async with client.http.post("/api/chat", json=body | {"stream": True}) as resp:
        if resp.content_type != "text/event-stream":
            return Answer("stream", resp.status, resp.headers.get("Retry-After"), await resp.json())
        async for line in resp.content:
            if line.startswith(b"data: "):
                payload = line.removeprefix(b"data: ").strip()
                events.append(payload.decode() if payload == b"[DONE]" else json.loads(payload))
                started.set()
    return Answer("stream", resp.status, None, events)


async def test_kill_9_under_load_fails_no_request(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Requests in flight when llama-server is SIGKILLed, and those that arrive while it
    restarts, all get their answer: a chat or embeddings that got nothing back is sent again
    to the new process, the others wait for it. Only a stream that had already sent events
    ends, with its error event (one sentence, no log line). Before issue 29: every one of
    them but the embeddings in flight was a 503."""
    # 12 requests for 4 slots on 2 shared cores: the queue's bound is not what is tested.
    settings = real_settings(tmp_path, roles=ONE_MODEL, limits=Limits(queue_timeout_s=600))
    async with serving(settings) as client:
        assert (await call(client, "/api/generate-embeddings", BATCH)).status == 200  # loaded
        first = await ready_pid(client)
        answers: list[Answer] = []
        started = anyio.Event()

        async def send(route: str, body: object) -> None:
            answers.append(await call(client, route, body))

        async def streamed(body: dict[str, Any], started: anyio.Event) -> None:
            answers.append(await stream(client, body, started))

        async with anyio.create_task_group() as tg:
            # In flight when the process dies (its 4 slots): a stream that has sent events,
            # then a chat and a batch of embeddings that have not.
            tg.start_soon(streamed, LONG_CHAT, started)
            with anyio.fail_after(60):
                await started.wait()
            tg.start_soon(send, "/api/chat", LONG_CHAT)
            tg.start_soon(send, "/api/generate-embeddings", BATCH)
            with anyio.fail_after(30):  # all three hold a lease of the process
                while True:
                    if (await client.get("/ready"))[1]["processes"][0]["in_flight"] == 3:
                        break
                    await anyio.sleep(0.02)
            os.kill(first, signal.SIGKILL)
            for _ in range(3):  # arriving while it restarts
                tg.start_soon(send, "/api/chat", LONG_CHAT | {"max_tokens": 8})
                tg.start_soon(send, "/v1/embeddings", {"input": "one more"})
                tg.start_soon(streamed, LONG_CHAT | {"max_tokens": 8}, anyio.Event())
                await anyio.sleep(0.08)

        assert len(answers) == 12
        failed = [a for a in answers if a.status != 200]
        assert failed == [], f"{len(failed)} of 12 failed"
        streams = [a.body for a in answers if a.route == "stream"]
        ended = [s for s in streams if s[-1] != "[DONE]"]
        assert len(ended) <= 1  # the one in flight
        for events in ended:
            error = events[-1]["error"]
            assert error["type"] == "backend_unavailable" and "\n" not in error["message"]
            assert "llama-server connection lost" in error["message"]
        assert all(
            len(a.body["embeddings"]) == 32
            for a in answers
            if a.route == "/api/generate-embeddings"
        )
        assert caplog.text.count("backend.retry") >= 1
        assert await ready_pid(client) != first
    assert not llama_servers_on(settings.llama_server.port)


async def test_a_stopped_llama_server_is_a_504_and_is_replaced(tmp_path: Path) -> None:
    settings = real_settings(
        tmp_path,
        roles=ONE_MODEL,
        limits=Limits(request_timeout_s=3),
        llama_server=LlamaServer(port=real_settings(tmp_path).llama_server.port, probe_timeout_s=2),
    )
    async with serving(settings) as client:
        first = await ready_pid_after_chat(client)
        os.kill(first, signal.SIGSTOP)
        hung = await call(client, "/api/chat", LONG_CHAT)
        assert hung.status == 504, hung
        assert hung.body["error"]["type"] == "timeout"  # the request timeout, not forever
        # The failed request made the supervisor probe it; the probe timed out: replaced.
        await ready_pid(client, other_than=first)
        assert (await call(client, "/api/chat", LONG_CHAT | {"max_tokens": 4})).status == 200
        _, ready = await client.get("/ready")
        assert "probe failed" in ready["processes"][0]["last_error"]
    assert not llama_servers_on(settings.llama_server.port)


async def ready_pid_after_chat(client: Client) -> int:
    assert (await call(client, "/api/chat", LONG_CHAT | {"max_tokens": 2})).status == 200
    return await ready_pid(client)


async def test_a_corrupt_model_fails_visibly_and_cli_mode_still_works(
    tmp_path: Path, default_model: Path
) -> None:
    corrupt = tmp_path / "corrupt.gguf"
    with default_model.open("rb") as f:
        corrupt.write_bytes(f.read(4 * 2**20))  # a valid header, then the file ends
    port = real_settings(tmp_path).llama_server.port
    settings = real_settings(
        tmp_path,
        models={"chat": str(corrupt)},
        llama_server=LlamaServer(port=port, restart_limit=2, backoff_initial_s=0.1),
    )
    async with serving(settings) as client:
        first = await call(client, "/api/chat", LONG_CHAT)
        assert first.status == 503 and first.retry_after

        async def corrupt_process() -> tuple[int, dict[str, Any]]:
            status, body = await client.get("/ready")
            [found] = [p for p in body["processes"] if p["model"] == str(corrupt)]
            return status, found

        with anyio.fail_after(60):  # backoff, budget, then FAILED
            while True:
                status, process = await corrupt_process()
                if process["state"] == "failed":
                    break
                await anyio.sleep(0.1)
        assert status == 503 and process["restarts"] == 2 and process["pid"] is None
        assert "exited with status" in process["last_error"]
        refused = await call(client, "/api/chat", LONG_CHAT)
        assert refused.status == 503 and refused.retry_after
        assert "llama-server for corrupt has failed" in refused.body["error"]["message"]
        assert (await client.get("/health"))[0] == 200
        # The embedding model's process is another one, and serves on.
        assert (await call(client, "/api/generate-embeddings", BATCH)).status == 200
        # Cli mode needs no llama-server; its failure on the corrupt model is a clean 502.
        assert (await client.post("/api/config", {"llm_mode": "cli"}))[0] == 200
        status, embedded = await client.post("/api/generate-embeddings", {"input": "hello"})
        assert status == 200 and embedded["backend"] == "cli"
        failed = await call(client, "/api/chat", LONG_CHAT)
        assert failed.status == 502 and failed.body["error"]["message"]
        assert not llama_servers_on(port)
    assert not llama_servers_on(port)
