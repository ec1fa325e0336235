"""The ASGI application: `create_app(settings)` wires routes to collaborators, nothing global."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware

from gateway.auth import RequireKeys, check_exposure, load_keys
from gateway.config import Settings
from gateway.error_handlers import EXCEPTION_HANDLERS
from gateway.lifespan import make_lifespan
from gateway.metrics import Metrics
from gateway.middleware import CancelOnDisconnect, RequestLog
from gateway.routes import api, openai, openapi, probes, vision


def create_app(settings: Settings) -> Starlette:
    """The gateway for `settings`; ConfigError if it must not start as configured."""
    keys = load_keys(settings)
    check_exposure(settings, keys)
    metrics = Metrics()
    routes = [*probes.routes, *api.routes, *vision.routes, *openai.routes, *openapi.routes]
    paths = frozenset(route.path for route in routes)
    return Starlette(
        routes=routes,
        middleware=[
            Middleware(RequestLog, metrics=metrics, routes=paths),
            Middleware(RequireKeys, keys=keys, protect_probes=settings.auth.protect_probes),
            Middleware(CancelOnDisconnect),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=make_lifespan(settings, metrics),
    )
