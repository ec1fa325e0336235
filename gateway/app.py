"""The ASGI application: `create_app(settings)` wires routes to collaborators, nothing global."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware

from backends.catalog import Catalog, build_catalog
from backends.specs import server_plan
from core.config import ConfigError, LlmParams, Settings
from gateway.auth import (
    RequireKeys,
    budget_of,
    check_exposure,
    load_keys,
    open_networks,
    trusted_networks,
)
from gateway.error_handlers import EXCEPTION_HANDLERS
from gateway.history import History, with_history
from gateway.lifespan import make_lifespan
from gateway.metrics import Metrics
from gateway.middleware import CancelOnDisconnect, RequestLog
from gateway.ollama_port import OllamaPort
from gateway.routes import (
    anthropic,
    api,
    clients,
    dashboard,
    models,
    ollama_chat,
    ollama_models,
    openai,
    openapi,
    probes,
    responses,
    ui,
    vision,
)
from gateway.runtime_config import ConfigStore
from supervisor.pool import memory_budget_mb


def check_budget(catalog: Catalog, params: LlmParams, budget_mb: int) -> None:
    """A pinned model or a role's default that can never fit the budget, even alone, is a
    startup error (any other such model is listed as failed)."""
    for spec, policy in server_plan(catalog, params).items():
        if policy.autostart and policy.estimate_mb > budget_mb:
            roles = ", ".join(catalog.roles_of(spec.name))
            why = "pinned" if policy.pinned else f"the {roles} default"
            raise ConfigError(
                f"model {spec.name} ({why}) needs ~{policy.estimate_mb} MB, more than the "
                f"whole memory budget of {budget_mb} MB ([pool] memory_budget_mb)"
            )


def ollama_port(settings: Settings) -> int | None:
    """The Ollama listener's port; None when it is off. A ConfigError if it would share the
    main port (a request's port says which of the two it is for)."""
    if not settings.ollama.enabled:
        return None
    port = settings.ollama.address()[1]
    if port == settings.port:
        raise ConfigError(f"[ollama] listen ({settings.ollama.listen}) needs a port of its own")
    return port


def create_app(settings: Settings) -> Starlette:
    """The gateway for `settings`; ConfigError if it must not start as configured."""
    keys = load_keys(settings)
    check_exposure(settings, keys)
    port = ollama_port(settings)
    store = ConfigStore.open(settings)
    catalog = build_catalog(settings)
    meminfo = "" if settings.pool.memory_budget_mb else Path("/proc/meminfo").read_text()
    budget_mb = memory_budget_mb(settings.pool.memory_budget_mb, meminfo)
    if store.current.backend == "server":
        check_budget(catalog, store.current.llm_params, budget_mb)
    metrics = Metrics(key_names=frozenset(key.name for key in keys.entries))
    routes = [
        *probes.routes, *api.routes, *vision.routes, *openai.routes, *models.routes,
        *openapi.routes, *clients.routes, *dashboard.routes, *ui.routes,
        *responses.routes, *anthropic.routes,
    ]  # fmt: skip
    # The Ollama listener's own (gateway.ollama_port), and the /v1 ones, as on the main port.
    ollama_routes = [*ollama_models.routes, *ollama_chat.routes]
    paths = frozenset(getattr(route, "path", "") for route in [*routes, *ollama_routes])
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(RequestLog, metrics=metrics, routes=paths),
            Middleware(
                RequireKeys,
                keys=keys,
                protect_probes=settings.auth.protect_probes,
                proxies=trusted_networks(settings),
                open_networks=open_networks(settings),
                ollama_port=port,
                allow_unauthenticated=settings.auth.allow_unauthenticated,
                open_budget=lambda: budget_of(
                    settings.auth.open_requests_per_minute, settings.auth.open_tokens_per_minute
                ),
            ),
            Middleware(CancelOnDisconnect),
            Middleware(OllamaPort, port=port, routes=ollama_routes),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=with_history(
            make_lifespan(settings, metrics, store, catalog, budget_mb), History(metrics.registry)
        ),
    )
    app.state.metrics = metrics  # also counted in by the protocol layer (gateway.protocol)
    return app
