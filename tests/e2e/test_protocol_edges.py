"""gateway.protocol's edges, under an in-process uvicorn with a small ASGI app: pipelining
(the server, not the client, makes a pipelined request wait), an answer sent before the body
came, what the app sees when a body misses its deadline, an h2c upgrade request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import uvicorn
from starlette.types import Message, Receive, Scope, Send

from core.config import Limits
from gateway.metrics import Metrics
from gateway.protocol import bound
from tests.conftest import free_port, wait_until
from tests.helpers import parse, read_response, read_to_eof

LIMITS = Limits(header_timeout_s=1, body_timeout_s=1, keepalive_timeout_s=5)


class App:
    """/stream: 4 chunks 0.5 s apart; /early: 401 without reading the body; anything else
    reads the whole body and answers 200. Every message received is kept, in order."""

    def __init__(self) -> None:
        self.received: list[Message] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/early":
            await self.answer(send, 401, b"no")
            return
        if scope["path"] == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for i in range(4):
                await send({"type": "http.response.body", "body": b"%d" % i, "more_body": True})
                await anyio.sleep(0.5)
            await send({"type": "http.response.body", "body": b""})
            return
        while True:
            message = await receive()
            self.received.append(message)
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                break
        await self.answer(send, 200, b"ok")

    @staticmethod
    async def answer(send: Send, status: int, body: bytes) -> None:
        headers = [(b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@asynccontextmanager
async def serving(app: App, metrics: Metrics) -> AsyncIterator[int]:
    port = free_port()
    config = uvicorn.Config(
        app, port=port, http=bound(LIMITS, metrics), ws="none", lifespan="off",
        log_level="warning",
    )  # fmt: skip
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        await wait_until(lambda: server.started, within=10)
        try:
            yield port
        finally:
            server.should_exit = True


def missed(metrics: Metrics, deadline: str) -> float:
    labels = {"deadline": deadline}
    return metrics.registry.get_sample_value("ai_server_deadlines_missed_total", labels) or 0.0


async def test_a_pipelined_requests_header_deadline_waits_for_the_response_before_it() -> None:
    metrics = Metrics()
    async with serving(App(), metrics) as port, await anyio.connect_tcp("127.0.0.1", port) as s:
        # The stream lasts 2 s; the second request's headers, begun at once, never end.
        await s.send(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\nGET /other HTTP/1.1\r\nHo")
        received = await read_to_eof(s)
    first, _, second = received.partition(b"0\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200 ") and first.endswith(b"1\r\n3\r\n")  # all of it
    status, _, body = parse(second)
    assert status == 408 and body["error"]["code"] == "header_timeout"
    assert (missed(metrics, "header"), missed(metrics, "body")) == (1, 0)


async def test_after_an_early_answer_a_body_past_its_deadline_closes_without_a_408() -> None:
    metrics = Metrics()
    async with serving(App(), metrics) as port, await anyio.connect_tcp("127.0.0.1", port) as s:
        await s.send(b"POST /early HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n{")
        assert (await read_response(s))[0] == 401
        assert await read_to_eof(s) == b""  # closed, nothing more said
    assert missed(metrics, "body") == 1


async def test_a_body_past_its_deadline_is_a_disconnect_to_the_app() -> None:
    app, metrics = App(), Metrics()
    async with serving(app, metrics) as port, await anyio.connect_tcp("127.0.0.1", port) as s:
        await s.send(b"POST /read HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n")
        await s.send(b"{")  # a read of its own, or not: the deadline runs from the headers
        status, _, body = parse(await read_to_eof(s))
        assert status == 408 and body["error"]["code"] == "body_timeout"
        await wait_until(lambda: app.received[-1:] == [{"type": "http.disconnect"}], within=5)
    assert [m["type"] for m in app.received][-1] == "http.disconnect"
    assert b"".join(m.get("body", b"") for m in app.received) in (b"", b"{")


async def test_an_h2c_upgrade_request_is_served_as_http_1_1_under_the_deadlines() -> None:
    metrics = Metrics()
    upgrade = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n"  # noqa: E501 - curl --http2's
    async with serving(App(), metrics) as port, await anyio.connect_tcp("127.0.0.1", port) as s:
        for _ in range(2):
            await s.send(b"GET /read HTTP/1.1\r\nHost: t\r\n" + upgrade + b"\r\n")
            assert (await read_response(s))[:3:2] == (200, b"ok")
    assert (missed(metrics, "header"), missed(metrics, "body")) == (0, 0)
