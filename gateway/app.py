"""The ASGI application: `create_app(settings)` wires routes to collaborators, nothing global."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.config import Settings


async def health(request: Request) -> JSONResponse:
    """Liveness: answers while the event loop runs; never touches llama."""
    return JSONResponse({"status": "ok"})


def create_app(settings: Settings) -> Starlette:
    app = Starlette(routes=[Route("/health", health, methods=["GET"])])
    app.state.settings = settings
    return app
