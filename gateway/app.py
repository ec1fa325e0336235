"""The ASGI application: `create_app(settings)` wires routes to collaborators, nothing global."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware

from gateway.config import Settings
from gateway.error_handlers import EXCEPTION_HANDLERS
from gateway.lifespan import make_lifespan
from gateway.middleware import CancelOnDisconnect
from gateway.routes import api, openai, probes


def create_app(settings: Settings) -> Starlette:
    return Starlette(
        routes=[*probes.routes, *api.routes, *openai.routes],
        middleware=[Middleware(CancelOnDisconnect)],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=make_lifespan(settings),
    )
