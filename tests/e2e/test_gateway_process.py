"""`ai-server serve` as a real process: startup errors, SIGTERM and SIGKILL."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import anyio
import pytest

from tests.conftest import free_port
from tests.e2e.conftest import FAKES
from tests.unit.test_process import alive


def write_config(tmp_path: Path, port: int, llama_port: int) -> Path:
    model = tmp_path / "stub.gguf"
    model.write_bytes(b"GGUF")
    path = tmp_path / "config.toml"
    path.write_text(
        f'port = {port}\nstate_dir = "{tmp_path / "state"}"\n'
        f'[models]\nchat = "{model}"\nembedding = "{model}"\n'
        f"[llama_server]\nport = {llama_port}\n"
        f'[binaries]\nllama_server = "{FAKES / "fake_llama_server.py"}"\n'
    )
    return path


@contextmanager
def gateway(config: Path) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield process
    finally:
        process.kill()
        process.wait()
        assert process.stderr is not None
        process.stderr.close()


async def ready_pid(http: aiohttp.ClientSession, url: str) -> int | None:
    try:
        async with http.get(url + "/ready") as resp:
            body = await resp.json()
    except aiohttp.ClientConnectionError:
        return None
    pid: int | None = body["processes"][0]["pid"] if resp.status == 200 else None
    return pid


async def wait_ready(http: aiohttp.ClientSession, url: str) -> int:
    """Poll /ready until it answers 200; the llama-server pid it lists."""
    with anyio.fail_after(30):
        while True:
            if (pid := await ready_pid(http, url)) is not None:
                return pid
            await anyio.sleep(0.1)


async def test_a_killed_gateways_llama_server_is_reclaimed_by_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_LLAMA", json.dumps({}))
    port = free_port()
    config = write_config(tmp_path, port, free_port())
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        with gateway(config) as first:
            orphan = await wait_ready(http, url)
            first.send_signal(signal.SIGKILL)
            first.wait()
        assert alive(orphan)  # what a SIGKILL leaves behind: our llama-server, on our port
        with gateway(config) as second:
            successor = await wait_ready(http, url)
            assert successor != orphan
            assert not alive(orphan)
            second.send_signal(signal.SIGTERM)
            # uvicorn shuts down gracefully, then re-raises the signal as its exit status.
            assert second.wait(timeout=20) == -signal.SIGTERM
            assert second.stderr is not None
            assert b"Application shutdown complete" in second.stderr.read()
        assert not alive(successor)  # a clean stop stops its children


def test_serve_refuses_an_unknown_config_key_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[llm_params]\ntemprature = 0.5\n")
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "temprature" in done.stderr and "llm_params" in done.stderr
