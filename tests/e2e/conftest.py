"""The real gateway under uvicorn on 127.0.0.1, and settings for it with real or fake llama."""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import msgspec
import pytest
import uvloop

from core.config import Binaries, Limits, LlamaServer, Ollama, Settings
from gateway.app import create_app
from gateway.cli import listen_sockets, server_for
from tests.conftest import free_port, wait_until
from tests.helpers import FAKES, gguf_bytes


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temp dir of the test's own for the gateway's private files (cli mode's images), so
    that tests.helpers.private_dirs() sees only this test's: other runs on the machine make
    and remove theirs in the shared /tmp meanwhile."""
    own = tmp_path / "tmp"
    own.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(own))
    monkeypatch.setenv("TMPDIR", str(own))  # and for a gateway run as a process
    return own


class Client:
    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url
        # The Ollama listener's client, when it is on.
        self.ollama: Client | None = None

    async def post(self, path: str, body: object, **kwargs: Any) -> tuple[int, Any]:
        async with self.http.post(path, json=body, **kwargs) as resp:
            return resp.status, await resp.json(content_type=None)

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.http.get(path) as resp:
            return resp.status, await resp.json(content_type=None)


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """uvloop, the loop `ai-server serve` runs on, for every test here."""
    return {"uvloop": uvloop.new_event_loop}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """pytest-timeout's thread method for the tests here: its SIGALRM is lost in uvloop's
    signal handling (a hung test would hang the run instead of failing at the timeout); the
    thread dumps every stack and ends the run."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            given = item.get_closest_marker("timeout")  # a module's or test's own, kept
            seconds = given.args[0] if given and given.args else None
            item.add_marker(pytest.mark.timeout(seconds, method="thread"), append=False)


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[Client]:
    """`create_app(settings)` served as `ai-server serve` serves it (`gateway.cli.server_for`:
    its protocol, limits and signal handling, and its sockets: the main port and the Ollama
    listener's, which `client.ollama` talks to; uvloop: `pytest_asyncio_loop_factories`);
    stopped (lifespan and all) on exit."""
    server = server_for(create_app(settings), settings)
    sockets = listen_sockets(settings)
    base = f"http://{settings.host}:{settings.port}"
    stopped = anyio.Event()

    async def serve() -> None:
        try:
            await server.serve(sockets=sockets)
        finally:
            stopped.set()

    ollama = f"http://{settings.ollama.listen}"
    async with (
        anyio.create_task_group() as tg,
        aiohttp.ClientSession(base) as http,
        aiohttp.ClientSession(ollama) as ollama_http,
    ):
        tg.start_soon(serve)
        try:
            await wait_until(lambda: server.started, within=30)
            client = Client(http, base)
            if settings.ollama.enabled:
                client.ollama = Client(ollama_http, ollama)
            yield client
        finally:
            # A graceful stop (lifespan and all) before anything propagates: a failed
            # assertion would otherwise cancel serve() mid-way, leaving the lifespan's
            # children running and the test hanging past pytest's timeout.
            server.should_exit = True
            with anyio.CancelScope(shield=True), anyio.move_on_after(60):
                await stopped.wait()


def real_settings(tmp_path: Path, **changes: Any) -> Settings:
    """The real binaries and default model, on free ports, with a private state dir."""
    settings = Settings(
        port=free_port(),
        state_dir=str(tmp_path / "state"),
        llama_server=LlamaServer(port=free_port()),
        ollama=Ollama(listen=f"127.0.0.1:{free_port()}"),  # never a real Ollama's 11434
    )
    return msgspec.structs.replace(settings, **changes)


def fake_settings(tmp_path: Path, **changes: Any) -> Settings:
    """Fake llama binaries (tests/fakes) and a stub model file: for argv, payload and fault
    tests that are about the gateway, not llama."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("llama-completion", "llama-embedding", "llama-mtmd-cli"):
        (bin_dir / name).symlink_to(FAKES / "fake_llama_cli.py")
    model = tmp_path / "stub.gguf"
    model.write_bytes(gguf_bytes())
    binaries = Binaries(
        llama_server=str(FAKES / "fake_llama_server.py"),
        llama_completion=str(bin_dir / "llama-completion"),
        llama_embedding=str(bin_dir / "llama-embedding"),
        llama_mtmd_cli=str(bin_dir / "llama-mtmd-cli"),
    )
    defaults: dict[str, Any] = {
        "cache_dir": str(tmp_path / "cache"),  # no built-in models: only the stub
        "binaries": binaries,
        # The old per-role keys: one model, named after its file ("stub"), in every role.
        "models": {
            "chat": str(model),
            "embedding": str(model),
            "vision": str(model),
            "mmproj": str(model),
        },
        "limits": Limits(request_timeout_s=10),
    }
    return real_settings(tmp_path, **(defaults | changes))


def recorded(path: Path) -> list[dict[str, Any]]:
    """What the fakes wrote to their `record` file, in order."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]
