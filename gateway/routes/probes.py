"""Liveness and readiness: cheap, never queued behind inference, never touching llama."""

from __future__ import annotations

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backends import toolchain
from backends.specs import ROLES, model_path, server_specs
from gateway.bodies import json_response
from gateway.errors import MissingComponent
from gateway.lifespan import Services, services
from supervisor.states import State

CLI_BINARIES = ("llama-completion", "llama-embedding", "llama-mtmd-cli")


async def health(request: Request) -> Response:
    """Liveness: 200 while the event loop runs."""
    return json_response({"status": "ok"})


def _problems(svc: Services) -> list[str]:
    """Why the current mode cannot serve every configured role right now."""
    config = svc.store.current
    problems: list[str] = []
    try:
        if config.backend == "cli":
            for role in (*ROLES, "mmproj"):
                model_path(svc.settings, role)
            for name in CLI_BINARIES:
                explicit = svc.settings.binaries.get(name)
                toolchain.resolve_binary(name, explicit, svc.settings.cache_path())
            return problems
        wanted = {spec.model for spec in server_specs(svc.settings, config.llm_params).values()}
    except MissingComponent as exc:
        return [exc.message]
    running = {p.model: p for p in svc.supervisor.snapshot() if p.model in wanted}
    for model in sorted(wanted):
        process = running.get(model)
        if process is None or process.state is not State.READY:
            state = process.state if process else "not started"
            problems.append(f"llama-server for {model} is {state}")
    return problems


def _roles(svc: Services, model: str) -> list[str]:
    try:
        specs = server_specs(svc.settings, svc.store.current.llm_params)
    except MissingComponent:
        return []
    return [role for role, spec in specs.items() if spec.model == model]


async def ready(request: Request) -> Response:
    """Readiness: 200 only when the current mode can serve every configured role."""
    svc = services(request)
    problems = _problems(svc)
    body = {
        "ready": not problems,
        "backend": svc.store.current.backend,
        "problems": problems,
        "processes": [
            {"roles": _roles(svc, process.model), **msgspec.to_builtins(process)}
            for process in svc.supervisor.snapshot()
        ],
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
