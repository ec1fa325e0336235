"""The Ollama listener: the requests that came in on `[ollama] listen`'s port.

Both ports are sockets of the one uvicorn server, so they share one application, its
lifespan (pool, keys, admission, limits, metrics) and its middleware. Which routes a request
reaches is decided here, by the port it came in on (`scope["server"]`): on the Ollama port,
Ollama's routes, with Ollama's error shape (`gateway.dialects.ollama_common`), and the /v1
routes as on the main port (VS Code's Ollama provider and Codex's `--oss` send /v1 requests
to the Ollama port); nothing else of the main port.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.routing import BaseRoute, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.dialects import ollama_common

V1 = "/v1/"


def on_port(scope: Scope, port: int | None) -> bool:
    """Whether `scope` came in on `port` (None: there is no such listener)."""
    server = scope.get("server")
    return port is not None and server is not None and server[1] == port


def speaks_ollama(scope: Scope, port: int | None) -> bool:
    """A request for an Ollama route: on the Ollama port, and not under /v1."""
    return on_port(scope, port) and not scope["path"].startswith(V1)


class OllamaPort:
    """Pure ASGI middleware, innermost: a request on the Ollama port goes to the Ollama
    routes (in their own exception handlers), unless it is a /v1 one; any other goes on to
    the main port's routes (`app`)."""

    def __init__(self, app: ASGIApp, port: int | None, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.port = port
        self.ollama = ExceptionMiddleware(
            Router(routes=list(routes)), handlers=ollama_common.HANDLERS
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not on_port(scope, self.port):
            await self.app(scope, receive, send)
            return
        # For the access log's and the metrics' dialect (gateway.middleware.RequestLog).
        scope.setdefault("state", {})["listener"] = "ollama"
        if not scope["path"].startswith(V1):
            await self.ollama(scope, receive, send)
        else:
            await self.app(scope, receive, send)
