"""Pure ASGI middleware (never BaseHTTPMiddleware, which hides client disconnects)."""

from __future__ import annotations

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class CancelOnDisconnect:
    """Cancels the handling of a request when its client disconnects, so the upstream
    request is aborted or the llama.cpp process stopped, streaming or not.

    Once the app has read the whole body, nothing but `http.disconnect` can arrive: a
    watcher takes over `receive` then, and the app's own later `receive` calls wait for it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_read = anyio.Event()
        disconnected = anyio.Event()

        async def app_receive() -> Message:
            if body_read.is_set():
                await disconnected.wait()
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected.set()
            elif not message.get("more_body", False):
                body_read.set()
            return message

        async def watch(scope_: anyio.CancelScope) -> None:
            await body_read.wait()
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected.set()
            scope_.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch, tg.cancel_scope)
            await self.app(scope, app_receive, send)
            tg.cancel_scope.cancel()
