"""Liveness and readiness: cheap, never queued behind inference, never touching llama."""

from __future__ import annotations

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backends import toolchain
from backends.specs import server_spec
from core.errors import AiServerError, MissingComponent
from gateway.bodies import json_response
from gateway.lifespan import Services, services
from gateway.routes.models import instance_views

CLI_BINARIES = ("llama-completion", "llama-embedding", "llama-mtmd-cli")


async def health(request: Request) -> Response:
    """Liveness: 200 while the event loop runs and the supervisor lives."""
    if fatal := getattr(request.app.state, "fatal", None):
        return json_response({"status": "failing", "reason": fatal}, 503)
    return json_response({"status": "ok"})


def _cli_problems(svc: Services) -> list[str]:
    """Why cli mode cannot serve every role: a model or binary is missing."""
    catalog = svc.dispatcher.catalog
    try:
        for name in sorted(set(catalog.roles.values())):
            catalog.models[name].file()
        catalog.models[catalog.roles["vision"]].projector()
        for name in CLI_BINARIES:
            explicit = svc.settings.binaries.get(name)
            toolchain.resolve_binary(name, explicit, svc.settings.cache_path())
    except AiServerError as exc:
        return [exc.message]
    return []


def _server_problems(svc: Services) -> list[str]:
    """Why server mode cannot: a role's model is missing, has failed or is backing off
    after a crash (an unloaded one is fine: it loads on its first request); for a model with
    several instances, none of them can serve."""
    catalog = svc.dispatcher.catalog
    problems = []
    for name in sorted(set(catalog.roles.values())):
        model = catalog.models[name]
        try:
            if model.replicas:
                model.file()
        except MissingComponent as exc:
            problems.append(exc.message)
            continue
        params = svc.store.current.llm_params
        if svc.router.routes(model):  # ready while one of its instances can serve
            if svc.router.pick(model, params, frozenset()) is None:
                problems.append(svc.router.why_down(model, params))
            continue
        info = svc.supervisor.instance(server_spec(model, params))
        if info is not None and info.status in ("failed", "backoff"):
            problems.append(f"model {name} is {info.status}: {info.last_error}")
    return problems


async def ready(request: Request) -> Response:
    """Readiness: 200 while the current mode can serve every role's model."""
    svc = services(request)
    cli = svc.store.current.backend == "cli"
    problems = _cli_problems(svc) if cli else _server_problems(svc)
    catalog = svc.dispatcher.catalog
    body = {
        "ready": not problems,
        "backend": svc.store.current.backend,
        "problems": problems,
        "processes": [
            {"roles": catalog.roles_of(p.name), **msgspec.to_builtins(p)}
            for p in svc.supervisor.snapshot()
        ],
        # Every lane's load; which clients wait is for admins only (/api/clients).
        "queues": [
            {
                "backend": backend,
                "model": model,
                "in_flight": lane.in_flight,
                "queued": lane.waiting,
                "clients_queued": len(lane.queued()),
            }
            for backend, model, lane in svc.admission.lanes()
        ],
        # Models with several instances (replicas, remote, RPC-backed): each one's state.
        "instances": {
            name: instance_views(svc, model)
            for name, model in catalog.models.items()
            if svc.router.routes(model) or model.rpc_workers
        },
    }
    return json_response(body, 200 if not problems else 503)


async def metrics(request: Request) -> Response:
    registry = services(request).metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


routes = [
    Route("/health", health, methods=["GET"]),
    Route("/ready", ready, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
