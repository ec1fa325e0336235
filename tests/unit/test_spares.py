"""Spares: after a stream, the next one finds a connection open (no connect on its way)."""

from __future__ import annotations

import aiohttp
import anyio
from aiohttp import web

from backends.spares import Spares
from tests.conftest import wait_until


async def _upstream() -> tuple[web.AppRunner, str, list[str]]:
    """llama-server's manner: a stream ends its connection; /health keeps it."""
    seen: list[str] = []

    async def health(request: web.Request) -> web.Response:
        seen.append("health")
        return web.json_response({"status": "ok"})

    async def stream(request: web.Request) -> web.StreamResponse:
        seen.append("stream")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        resp.force_close()
        await resp.prepare(request)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.add_routes([web.get("/health", health), web.post("/stream", stream)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}", seen


async def _stream(http: aiohttp.ClientSession, url: str) -> None:
    async with http.post(url + "/stream", headers={"Connection": "close"}) as resp:
        assert await resp.read() == b"data: [DONE]\n\n"


async def test_spares_refill_leaves_a_connection_for_the_next_stream() -> None:
    runner, url, seen = await _upstream()
    connects: list[object] = []

    async def connected(*_: object) -> None:
        connects.append(None)

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(connected)
    try:
        async with aiohttp.ClientSession(trace_configs=[trace]) as http:
            spares = Spares(http)
            async with anyio.create_task_group() as tg:
                await tg.start(spares.run)
                await _stream(http, url)
                assert len(connects) == 1
                spares.refill(url, {})
                spares.refill(url, {})  # one queued already: not twice
                await wait_until(lambda: seen.count("health") == 1, within=5)
                await wait_until(lambda: len(connects) == 2, within=5)
                await _stream(http, url)  # on the spare
                assert len(connects) == 2
                assert seen == ["stream", "health", "stream"]
                tg.cancel_scope.cancel()
    finally:
        await runner.cleanup()


async def test_spares_refill_survives_an_upstream_that_is_down() -> None:
    runner, url, seen = await _upstream()
    try:
        async with aiohttp.ClientSession() as http:
            spares = Spares(http)
            async with anyio.create_task_group() as tg:
                await tg.start(spares.run)
                spares.refill("http://127.0.0.1:9", {})  # the discard port: refused
                spares.refill(url, {})  # still served after that failure
                await wait_until(lambda: seen == ["health"], within=5)
                tg.cancel_scope.cancel()
    finally:
        await runner.cleanup()
