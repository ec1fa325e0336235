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
from supervisor.actor import ProcessInfo
from supervisor.states import State

CLI_BINARIES = ("llama-completion", "llama-embedding", "llama-mtmd-cli")


async def health(request: Request) -> Response:
    """Liveness: 200 while the event loop runs and the supervisor lives."""
    if fatal := getattr(request.app.state, "fatal", None):
        return json_response({"status": "failing", "reason": fatal}, 503)
    return json_response({"status": "ok"})


def _cli_problems(svc: Services) -> list[str]:
    """Why cli mode cannot serve every configured role: a model or binary is missing."""
    try:
        for role in (*ROLES, "mmproj"):
            model_path(svc.settings, role)
        for name in CLI_BINARIES:
            explicit = svc.settings.binaries.get(name)
            toolchain.resolve_binary(name, explicit, svc.settings.cache_path())
    except MissingComponent as exc:
        return [exc.message]
    return []


def _server_problems(roles: dict[str, list[str]], processes: list[ProcessInfo]) -> list[str]:
    """Why server mode cannot: a llama-server the config needs is not READY."""
    running = {p.model: p for p in processes if p.model in roles}
    problems = []
    for model in sorted(roles):
        process = running.get(model)
        if process is None or process.state is not State.READY:
            state = process.state if process else "not started"
            problems.append(f"llama-server for {model} is {state}")
    return problems


async def ready(request: Request) -> Response:
    """Readiness: 200 only when the current mode can serve every configured role."""
    svc = services(request)
    processes = svc.supervisor.snapshot()
    roles: dict[str, list[str]] = {}  # model -> the roles its llama-server serves
    try:
        for role, spec in server_specs(svc.settings, svc.store.current.llm_params).items():
            roles.setdefault(spec.model, []).append(role)
        unresolved = []
    except MissingComponent as exc:
        unresolved = [exc.message]
    if svc.store.current.backend == "cli":
        problems = _cli_problems(svc)
    else:
        problems = unresolved or _server_problems(roles, processes)
    body = {
        "ready": not problems,
        "backend": svc.store.current.backend,
        "problems": problems,
        "processes": [
            {"roles": roles.get(p.model, []), **msgspec.to_builtins(p)} for p in processes
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
