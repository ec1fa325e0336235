"""Faults around llama rather than in it, through the whole gateway over the fake binaries:
a port someone else holds, binaries that are gone or not executable, a read-only or full
state directory.
Each is a clear JSON error naming the cause, and the gateway keeps answering."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import msgspec
import pytest

from core.config import LlamaServer
from supervisor.loading import Loads
from tests.conftest import free_port
from tests.e2e.conftest import Client, fake_settings, serving

CHAT = {"messages": [{"role": "user", "content": "Hi"}]}


async def assert_still_answers(client: Client) -> None:
    assert (await client.get("/health"))[0] == 200
    assert (await client.get("/api/config"))[0] == 200


async def test_a_port_held_by_another_process_is_named(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        settings = fake_settings(tmp_path, llama_server=LlamaServer(port=port))
        async with serving(settings) as client:
            status, body = await client.post("/api/chat", CHAT)
            assert status == 503 and body["error"]["type"] == "backend_unavailable"
            assert "llama-server for stub" in body["error"]["message"]  # the port: for admins
            status, ready = await client.get("/ready")
            assert status == 503 and f"port {port}" in ready["processes"][0]["last_error"]
            await assert_still_answers(client)


@pytest.mark.parametrize("fault", ["missing", "not executable"])
async def test_a_broken_llama_server_binary_is_a_clear_503(tmp_path: Path, fault: str) -> None:
    binary = tmp_path / "llama-server"
    if fault == "not executable":
        binary.write_text("#!/bin/sh\n")
        binary.chmod(0o644)
    settings = fake_settings(tmp_path)
    settings = msgspec.structs.replace(
        settings, binaries=msgspec.structs.replace(settings.binaries, llama_server=str(binary))
    )
    async with serving(settings) as client:
        status, body = await client.post("/api/chat", CHAT)
        assert status == 503
        assert "llama-server" in body["error"]["message"]
        await assert_still_answers(client)
        # Cli mode does not need it.
        assert (await client.post("/api/config", {"llm_mode": "cli"}))[0] == 200
        assert (await client.post("/api/chat", CHAT))[0] == 200


@pytest.mark.parametrize("fault", ["missing", "not executable"])
async def test_a_broken_cli_binary_is_a_503_that_says_how_to_fix_it(
    tmp_path: Path, fault: str
) -> None:
    settings = fake_settings(tmp_path, backend="cli")
    completion = Path(settings.binaries.llama_completion or "")
    completion.unlink()
    if fault == "not executable":
        completion.write_text("#!/bin/sh\n")
        completion.chmod(0o644)
    async with serving(settings) as client:
        status, body = await client.post("/api/chat", CHAT)
        assert status == 503 and body["error"]["type"] == "missing_component"
        assert (
            f"{completion} (from the config) is not an executable file"
            in (body["error"]["message"])
        )
        status, embedded = await client.post("/api/generate-embeddings", {"input": "x"})
        assert status == 200 and embedded["backend"] == "cli"  # the other binary works
        await assert_still_answers(client)


@contextmanager
def immutable(path: Path) -> Iterator[None]:
    """`chattr +i`: nothing in `path` can be created or renamed, even by root (a read-only
    mount without mounting). Skips where the filesystem or the capability is missing."""
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"chattr +i is not possible here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@contextmanager
def full_disk(state: Path) -> Iterator[None]:
    """The next save's temporary file is /dev/full: its write fails with ENOSPC."""
    (state / f".config.json.{os.getpid()}.tmp").symlink_to("/dev/full")
    yield


@pytest.mark.parametrize(
    ("fault", "says"), [("read-only", "Operation not permitted"), ("full", "No space left")]
)
async def test_an_unwritable_state_dir_is_a_500_naming_why_and_keeps_the_old_config(
    tmp_path: Path, fault: str, says: str
) -> None:
    settings = fake_settings(tmp_path, backend="cli")
    state = tmp_path / "state"
    async with serving(settings) as client:
        assert (await client.post("/api/config", {"llm_params": {"temp": 0.5}}))[0] == 200
        saved = (state / "config.json").read_bytes()
        with immutable(state) if fault == "read-only" else full_disk(state):
            status, body = await client.post("/api/config", {"llm_params": {"temp": 0.9}})
            assert status == 500 and body["error"]["type"] == "state_error"
            assert says in body["error"]["message"]
            assert (await client.get("/api/config"))[1]["llm_params"]["temp"] == 0.5
        assert (state / "config.json").read_bytes() == saved
        assert sorted(p.name for p in state.iterdir()) == ["config.json"]  # no debris
        assert (await client.post("/api/config", {"llm_params": {"temp": 0.9}}))[0] == 200


async def test_a_crashed_supervisor_fails_health_instead_of_serving_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def crash(self: Loads) -> None:
        raise RuntimeError("a bug in the actor")

    monkeypatch.setattr(Loads, "tick", crash)  # ticks come every 25 ms here
    idle = LlamaServer(port=free_port(), idle_unload_s=0.1)
    async with serving(fake_settings(tmp_path, llama_server=idle)) as client:
        with anyio.fail_after(10):
            while True:
                status, body = await client.get("/health")
                if status != 200:
                    break
                await anyio.sleep(0.05)
        assert status == 503 and body["status"] == "failing"
        assert "the supervisor crashed: RuntimeError('a bug in the actor')" in body["reason"]
        status, answer = await client.post("/api/chat", CHAT)
        assert status == 503 and answer["error"]["type"] == "backend_unavailable"
