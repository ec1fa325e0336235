"""The `serving` fixture serves the gateway as `ai-server serve` does, so every e2e test
runs on the production setup."""

from __future__ import annotations

import asyncio
from pathlib import Path

import anyio
import uvloop

from core.config import Limits
from tests.e2e.conftest import fake_settings, serving
from tests.helpers import parse, read_to_eof


async def test_serving_runs_on_uvloop_behind_the_guarded_protocol(tmp_path: Path) -> None:
    settings = fake_settings(tmp_path, backend="cli", limits=Limits(header_timeout_s=0.2))
    async with serving(settings):
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        # Stock uvicorn would wait for these headers for ever; gateway.protocol answers 408.
        async with await anyio.connect_tcp(settings.host, settings.port) as stream:
            await stream.send(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            status, _, body = parse(await read_to_eof(stream))
        assert (status, body["error"]["code"]) == (408, "header_timeout")
