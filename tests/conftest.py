from __future__ import annotations

import socket
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from backends import toolchain
from core.config import cache_dir

_GIVEN: set[int] = set()  # ports free_port returned: never twice in one run


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1, and not given out before by this
    run: the kernel may hand the same ephemeral port to two binds in a row (it did: one
    settings' main and Ollama ports, a ConfigError in CI)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def stop(process: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM `process` if it still runs, SIGKILL it after `grace` seconds, and reap it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()


def write_script(path: Path, body: str) -> Path:
    """An executable Python script: the fake binaries that inject faults."""
    path.write_text(f"#!/usr/bin/env python3\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture(scope="session")
def cache() -> Path:
    return cache_dir()


@pytest.fixture(scope="session")
def default_model(cache: Path) -> Path:
    return toolchain.resolve_model("chat", None, cache)


@pytest.fixture(scope="session")
def smollm2(cache: Path) -> Path:
    """SmolLM2-135M-Instruct's GGUF, the instruction-tuned built-in model."""
    path = toolchain.smollm2_model_path(cache)
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `make model`")
    return path


@pytest.fixture(scope="session")
def llama_bin(cache: Path) -> Path:
    """The directory of the real, built llama.cpp binaries."""
    return toolchain.resolve_binary("llama-server", None, cache).parent


async def wait_until(predicate: Callable[[], bool], within: float, interval: float = 0.02) -> None:
    """Poll `predicate` until it holds; fail the test after `within` seconds."""
    with anyio.fail_after(within):
        while True:
            if predicate():
                return
            await anyio.sleep(interval)
