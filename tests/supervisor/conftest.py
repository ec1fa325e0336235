"""A running supervisor over the fake llama-server, with timings shrunk for tests."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from supervisor.actor import ProcessInfo, Supervisor, SupervisorConfig
from supervisor.command import ServerSpec
from supervisor.states import State
from tests.conftest import free_port, wait_until

FAKE = Path(__file__).parents[1] / "fakes" / "fake_llama_server.py"
SPEC = ServerSpec(model="/models/a.gguf", ctx_size=512, batch_size=64, ubatch_size=32)
OTHER = ServerSpec(model="/models/a.gguf", ctx_size=1024, batch_size=64, ubatch_size=32)


def fast_config(tmp_path: Path, **overrides: Any) -> SupervisorConfig:
    settings: dict[str, Any] = {
        "binary": str(FAKE),
        "state_dir": str(tmp_path / "state"),
        "base_port": free_port(),
        "load_timeout": 5.0,
        "start_wait": 10.0,
        "health_interval": 0.05,
        "health_timeout": 0.5,
        "health_failures": 2,
        "probe_timeout": 0.5,
        "backoff_initial": 0.02,
        "backoff_max": 0.1,
        "stop_grace": 2.0,
    }
    return SupervisorConfig(**(settings | overrides))


def behave(monkeypatch: pytest.MonkeyPatch, **behaviour: object) -> None:
    """What the fake llama-servers started from now on do (see fake_llama_server.py)."""
    monkeypatch.setenv("FAKE_LLAMA", json.dumps(behaviour))


@asynccontextmanager
async def running(config: SupervisorConfig) -> AsyncIterator[Supervisor]:
    async with aiohttp.ClientSession() as http, anyio.create_task_group() as tg:
        supervisor = Supervisor(config, http)
        await tg.start(supervisor.run)
        try:
            yield supervisor
        finally:
            tg.cancel_scope.cancel()


def at_port(supervisor: Supervisor, port: int) -> ProcessInfo:
    [found] = [p for p in supervisor.snapshot() if p.port == port]
    return found


def history(supervisor: Supervisor, port: int) -> list[State]:
    """The states one process went through, in order."""
    return [e.new for e in supervisor.events if e.port == port]


async def wait_state(supervisor: Supervisor, state: State, within: float = 10) -> ProcessInfo:
    await wait_until(lambda: any(p.state is state for p in supervisor.snapshot()), within)
    [found] = [p for p in supervisor.snapshot() if p.state is state]
    return found
