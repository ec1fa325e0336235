"""Instances of a model through the real gateway, over fake llama-servers: a local one and a
"remote" one on another loopback address (127.0.0.2) with an API key. The real multi-host
runs, in network namespaces with real llama.cpp, are in tests/e2e/test_replicas_netns.py;
these are the fast, deterministic checks of routing, keys, retries and cooldown."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from core.config import Limits, ModelConfig, RemoteConfig, RemoteLimits, Roles, Settings
from gateway.doctor import check_instances
from tests.conftest import free_port
from tests.e2e.conftest import Client, fake_settings, serving
from tests.helpers import FAKES, gguf_bytes
from tests.supervisor.conftest import behave

EMBED = {"model": "m", "input": "hello"}
KEY = "the-right-key"


@contextmanager
def remote_fake(
    tmp_path: Path, **behaviour: object
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A fake llama-server on 127.0.0.2 that wants KEY; its URL and process."""
    key_file = tmp_path / "remote-server.key"
    key_file.write_text(KEY)
    port = free_port()
    argv = [str(FAKES / "fake_llama_server.py"), "--host", "127.0.0.2", "--port", str(port)]
    env = os.environ | {"FAKE_LLAMA": json.dumps(behaviour)}
    child = subprocess.Popen([*argv, "--api-key-file", str(key_file)], env=env)
    try:
        yield f"http://127.0.0.2:{port}", child
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGCONT)
            child.kill()
        child.wait()


def settings_for(tmp_path: Path, url: str, key: str = KEY, replicas: int = 1) -> Settings:
    model = tmp_path / "m.gguf"
    model.write_bytes(gguf_bytes())
    remote = RemoteConfig(url=url, api_key=key)
    return fake_settings(
        tmp_path,
        models={"m": ModelConfig(path=str(model), replicas=replicas, remote=[remote])},
        roles=Roles(chat="m", embedding="m", vision="m"),
        remote=RemoteLimits(probe_interval_s=0.1, probe_timeout_s=0.5, connect_timeout_s=0.5),
        # Far above every wait below: a request that hung on a dead or frozen remote would
        # trip their bounds long before its own timeout.
        limits=Limits(request_timeout_s=120, max_concurrency=2, queue_timeout_s=120),
    )


async def instances(client: Client) -> dict[str, dict[str, Any]]:
    status, body = await client.get("/api/models")
    assert status == 200
    (model,) = [m for m in body["models"] if m["name"] == "m"]
    return {i["kind"] + ":" + i["instance"]: i for i in model["instances"]}


async def remote_state(client: Client, url: str) -> str:
    state: str = (await instances(client))[f"remote:{url}"]["state"]
    return state


async def wait_state(client: Client, url: str, state: str, within: float = 10) -> None:
    with anyio.fail_after(within):
        while await remote_state(client, url) != state:  # noqa: ASYNC110 - polled over HTTP
            await anyio.sleep(0.05)


async def embed_many(client: Client, n: int) -> list[int]:
    statuses: list[int] = []

    async def one() -> None:
        status, _ = await client.post("/v1/embeddings", EMBED)
        statuses.append(status)

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one)
    return statuses


async def test_requests_spread_over_the_local_and_the_remote_instance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    behave(monkeypatch, answer_delay=0.2)
    with remote_fake(tmp_path, answer_delay=0.2) as (url, _):
        async with serving(settings_for(tmp_path, url)) as client:
            await wait_state(client, url, "ready")
            assert await embed_many(client, 12) == [200] * 12
            seen = await instances(client)
            local, remote = seen["local:local/0"], seen[f"remote:{url}"]
            assert local["served"] > 0 and remote["served"] > 0, seen
            assert local["served"] + remote["served"] == 12
            # The key never shows; the metrics name each instance.
            status, config = await client.get("/api/config")
            assert status == 200
            assert KEY not in json.dumps(config) and "***" in json.dumps(config)
            async with client.http.get("/metrics") as resp:
                text = await resp.text()
            assert f'ai_server_instance_served_total{{instance="{url}",model="m"}}' in text
            assert f'ai_server_remote_state{{instance="{url}",model="m",state="ready"}} 1.0' in text


async def test_a_wrong_key_is_reported_as_such_and_never_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    behave(monkeypatch)
    with remote_fake(tmp_path) as (url, _):
        async with serving(settings_for(tmp_path, url, key="wrong")) as client:
            await wait_state(client, url, "unauthorized")
            seen = (await instances(client))[f"remote:{url}"]
            assert "API key was refused (HTTP 401)" in seen["reason"]
            assert await embed_many(client, 4) == [200] * 4  # the local instance serves
            assert (await instances(client))[f"remote:{url}"]["served"] == 0


async def test_a_remote_that_dies_mid_request_is_retried_on_the_local_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    behave(monkeypatch)
    with remote_fake(tmp_path, answer_delay=3) as (url, child):
        async with serving(settings_for(tmp_path, url, replicas=1)) as client:
            await wait_state(client, url, "ready")
            # Busy the local instance's two slots, so the next request goes to the remote.
            statuses: list[int] = []

            async def one() -> None:
                statuses.append((await client.post("/v1/embeddings", EMBED))[0])

            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(one)
                with anyio.fail_after(5):
                    while (await instances(client))[f"remote:{url}"]["in_flight"] == 0:  # noqa: ASYNC110
                        await anyio.sleep(0.02)
                child.kill()  # the remote host's llama-server dies under the request
            assert statuses == [200, 200, 200]
            seen = (await instances(client))[f"remote:{url}"]
            assert seen["state"] == "cooling" and seen["reason"], seen


async def test_a_4xx_that_is_not_llama_servers_is_retried_on_the_local_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 29: at a vanished host's address something else answered 400 with an empty body,
    # and clients got 400 "llama-server rejected the request: ". Its probes pass here, so
    # only requests can find it out.
    behave(monkeypatch)
    with remote_fake(tmp_path, bare_status=400) as (url, _):
        async with serving(settings_for(tmp_path, url)) as client:
            await wait_state(client, url, "ready")
            assert await embed_many(client, 8) == [200] * 8
            seen = (await instances(client))[f"remote:{url}"]
            assert seen["served"] == 0 and seen["failures"] >= 1, seen
            assert f"{url} answered HTTP 400 with an empty body" in seen["reason"], seen


async def test_a_frozen_remote_is_cooled_down_by_its_probe_and_comes_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    behave(monkeypatch)
    with remote_fake(tmp_path, answer_delay=1) as (url, child):
        async with serving(settings_for(tmp_path, url)) as client:
            await wait_state(client, url, "ready")
            os.kill(child.pid, signal.SIGSTOP)  # the host freezes
            await wait_state(client, url, "cooling", within=10)  # by its probe, no request
            seen = (await instances(client))[f"remote:{url}"]
            assert "no answer to a probe within 0.5 s" in seen["reason"]
            with anyio.fail_after(20):  # none hangs: all on the local one
                assert await embed_many(client, 4) == [200] * 4
            os.kill(child.pid, signal.SIGCONT)
            await wait_state(client, url, "ready", within=15)  # after its 5 s cooldown


async def test_a_model_whose_only_instance_is_down_answers_503_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    behave(monkeypatch)
    port = free_port()
    url = f"http://127.0.0.2:{port}"  # nothing listens there
    settings = settings_for(tmp_path, url)
    remote_only = ModelConfig(replicas=0, remote=[RemoteConfig(url=url, api_key=KEY)])
    settings = msgspec.structs.replace(settings, models={"m": remote_only})
    async with serving(settings) as client:
        await wait_state(client, url, "cooling")
        with anyio.fail_after(20):  # at once: not after a queue or request timeout
            status, body = await client.post("/v1/embeddings", EMBED)
        assert status == 503
        assert url in body["error"]["message"] and "cooling" in body["error"]["message"]
        status, ready = await client.get("/ready")
        assert status == 503 and url in ready["problems"][0]


async def test_local_replicas_are_processes_of_their_own_and_share_the_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    behave(monkeypatch, answer_delay=0.2)
    model = tmp_path / "m.gguf"
    model.write_bytes(gguf_bytes())
    settings = fake_settings(
        tmp_path,
        models={"m": ModelConfig(path=str(model), replicas=2)},
        roles=Roles(chat="m", embedding="m", vision="m"),
        limits=Limits(request_timeout_s=120, max_concurrency=2, queue_timeout_s=120),
    )
    async with serving(settings) as client:
        assert await embed_many(client, 8) == [200] * 8
        seen = await instances(client)
        first, second = seen["local:local/0"], seen["local:local/1"]
        assert first["pid"] != second["pid"] and first["url"] != second["url"]
        assert first["served"] > 0 and second["served"] > 0, seen
        status, _ = await client.post("/api/models/m/unload", {})
        assert status == 200
        assert {i["state"] for i in (await instances(client)).values()} == {"stopped"}
        status, _ = await client.post("/api/models/m/load", {})
        assert status == 200
        assert {i["state"] for i in (await instances(client)).values()} == {"ready"}


def test_doctor_checks_each_remote_and_its_key_and_each_rpc_worker(tmp_path: Path) -> None:
    listening = socket.create_server(("127.0.0.1", 0))
    worker_up = f"127.0.0.1:{listening.getsockname()[1]}"
    worker_down = f"127.0.0.1:{free_port()}"
    with remote_fake(tmp_path) as (url, _), listening:
        wait_listening(url)
        models: dict[str, str | ModelConfig] = {
            "good": ModelConfig(replicas=0, remote=[RemoteConfig(url=url, api_key=KEY)]),
            "bad": ModelConfig(replicas=0, remote=[RemoteConfig(url=url, api_key="wrong")]),
            "rpc": ModelConfig(path=str(tmp_path / "m.gguf"), rpc_workers=[worker_up, worker_down]),
        }
        (tmp_path / "m.gguf").write_bytes(gguf_bytes())
        lines: list[str] = []
        ok = check_instances(
            Settings(cache_dir=str(tmp_path / "cache"), models=models), lines.append
        )
    out = "\n".join(lines)
    assert not ok
    assert f"ok       good: remote {url}" in out
    assert f"FAILING  bad: remote {url}: the API key was refused (HTTP 401)" in out
    assert f"ok       rpc: rpc worker {worker_up}" in out
    assert f"FAILING  rpc: rpc worker {worker_down}: unreachable" in out
    assert "wrong" not in out and KEY not in out


def wait_listening(url: str) -> None:
    host, port = url.removeprefix("http://").split(":")
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
