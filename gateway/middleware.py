"""Pure ASGI middleware (never BaseHTTPMiddleware, which hides client disconnects)."""

from __future__ import annotations

import asyncio
import logging
import re
import time

import anyio
from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backends.ids import unique_id
from gateway.logs import request_id
from gateway.metrics import Metrics, dialect_of

access_log = logging.getLogger("ai_server.access")
_GOOD_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class RequestLog:
    """A request id (X-Request-ID if the client sent a sane one), echoed back with a rate
    budget's x-ratelimit headers; one access line per request; request counts and latency
    for /metrics."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes
        # Label children, bound once each, not looked up per request (BENCHMARKS.md, per-call
        # costs). As many as the registry's own children: the same labels key both.
        self._bound: dict[tuple[str, str, int, str, str], tuple[Counter, Histogram]] = {}

    def _children(
        self, route: str, method: str, status: int, backend: str, listener: str
    ) -> tuple[Counter, Histogram]:
        key = (route, method, status, backend, listener)
        if (children := self._bound.get(key)) is None:
            dialect = dialect_of(route, listener)
            children = self._bound[key] = (
                self.metrics.requests.labels(route, method, str(status), backend, dialect),
                self.metrics.latency.labels(route, backend),
            )
        return children

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = sent if _GOOD_ID.fullmatch(sent) else unique_id()
        token = request_id.set(rid)
        status = 500
        started = time.perf_counter()

        answered = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status, answered = message["status"], True
                headers = [*message.get("headers", []), (b"x-request-id", rid.encode())]
                client = scope.get("state", {}).get("client")
                if client is not None and client.budget is not None:  # x-ratelimit-*
                    headers += [(k.encode(), v.encode()) for k, v in client.budget.headers()]
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
            if not answered:
                status = 499  # ended without an answer: its client went away (nginx's 499)
        finally:
            duration = time.perf_counter() - started
            route = scope["path"] if scope["path"] in self.routes else "other"
            state = scope.get("state", {})
            backend = state.get("backend", "")
            client = state["client"].name if "client" in state else "-"
            listener = state.get("listener", "main")  # set by the Ollama port's router
            counted, timed = self._children(route, scope["method"], status, backend, listener)
            counted.inc()
            timed.observe(duration)
            if backend:  # a model's request (chat, embeddings, vision), in its dialect
                self.metrics.count_dialect(client, dialect_of(route, listener))
            if status in (429, 503):
                self.metrics.rejected.labels(str(status)).inc()
            access_log.info(
                "%s %s %d %.1fms %s %s", scope["method"], route, status, duration * 1000, backend,
                client, extra={"route": route, "status": status, "backend": backend,
                               "client": client, "duration_ms": round(duration * 1000, 1)},
            )  # fmt: skip
            request_id.reset(token)


class CancelOnDisconnect:
    """Cancels the handling of a request when its client disconnects, so the upstream
    request is aborted or the llama.cpp process stopped, streaming or not.

    Once the app has read the whole body, nothing but `http.disconnect` can arrive: a
    watcher takes over `receive` then, and the app's own later `receive` calls wait for it.
    The watcher is a bare asyncio task cancelling an anyio scope (cancel() may come from any
    task), started when the body ends: a task group per request was a seventh of the
    gateway's time per request under load. One asyncio.Event, not anyio's, which costs five
    times as much to make: the gateway runs on asyncio only (aiohttp). Figures: BENCHMARKS.md,
    per-call costs.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        disconnected = asyncio.Event()
        handling = anyio.CancelScope()
        watcher: asyncio.Task[None] | None = None

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected.set()
            handling.cancel()

        async def app_receive() -> Message:
            nonlocal watcher
            if watcher is not None:  # the body is read: only a disconnect is left
                await disconnected.wait()
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected.set()
            elif not message.get("more_body", False):
                watcher = asyncio.get_running_loop().create_task(watch())
            return message

        try:
            with handling:
                await self.app(scope, app_receive, send)
        finally:
            if watcher is not None:
                watcher.cancel()
