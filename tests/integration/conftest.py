"""Fixtures that run the real llama.cpp binaries on the default model."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import anyio

from core.config import LlmParams
from supervisor.command import ServerSpec, build_server_argv
from supervisor.logtail import LogTail
from supervisor.process import ChildProcess, spawn
from tests.conftest import free_port


class RunningServer:
    def __init__(self, child: ChildProcess, url: str, http: aiohttp.ClientSession) -> None:
        self.child = child
        self.url = url
        self.http = http

    async def post(self, path: str, body: object) -> dict[str, object]:
        async with self.http.post(self.url + path, json=body) as resp:
            assert resp.status == 200, await resp.text()
            data: dict[str, object] = await resp.json()
            return data


async def wait_healthy(http: aiohttp.ClientSession, url: str, child: ChildProcess) -> None:
    """Poll GET /health until 200 (503 while loading), failing after 60 s or if it exits."""
    with anyio.fail_after(60):
        while child.returncode is None:
            try:
                async with http.get(url + "/health") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await anyio.sleep(0.1)
    raise AssertionError(f"llama-server exited {child.returncode}:\n{child.tail.text()}")


@asynccontextmanager
async def running_llama_server(
    llama_bin: Path,
    model: Path,
    *,
    embeddings: bool = True,
    chat_template: str | None = "gemma",
    mmproj: Path | None = None,
    params: LlmParams | None = None,
    extra: Sequence[str] = (),
    tail: LogTail | None = None,
) -> AsyncIterator[RunningServer]:
    """The real llama-server on `model` on a free port, with server mode's flags for
    `chat_template` (supervisor.command) and `extra` ones, its log in `tail`, stopped
    (group and all) on exit.

    A context manager rather than a fixture: its task group must open and close in the
    test's own task."""
    spec = ServerSpec(
        model=str(model),
        ctx_size=params.ctx_size if params else 2048,
        batch_size=params.batch_size if params else 512,
        ubatch_size=params.ubatch_size if params else 512,
        embeddings=embeddings,
        chat_template=chat_template,
        mmproj=str(mmproj) if mmproj else None,
    )
    port = free_port()
    argv = build_server_argv(str(llama_bin / "llama-server"), spec, host="127.0.0.1", port=port)
    async with aiohttp.ClientSession() as http, anyio.create_task_group() as tg:
        child = await spawn([*argv, *extra], tg, tail)
        try:
            url = f"http://127.0.0.1:{port}"
            await wait_healthy(http, url, child)
            yield RunningServer(child, url, http)
        finally:
            await child.stop()
