"""The model pool, seen and steered: /v1/models, /api/models (after `ollama ps`), load,
unload and rescan."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import anyio
import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backends.catalog import ModelDef
from backends.specs import estimate_mb, local_specs, server_spec
from core.config import ConfigError
from core.errors import BadRequest, Conflict
from gateway.bodies import json_response
from gateway.lifespan import Services, services


def instance_views(svc: Services, model: ModelDef) -> list[dict[str, Any]]:
    """Every instance of `model` in server mode: local ones (replicas; RPC-backed ones with
    their workers) and remote ones, with state, slots, requests and why one is down."""
    if svc.store.current.backend != "server":
        return []
    slots = svc.router.local_slots
    views: list[dict[str, Any]] = [
        {
            "instance": f"local/{info.replica}",
            "kind": "local",
            "url": info.url,
            "state": info.state,
            "pid": info.pid,
            "slots": slots,
            "idle": max(slots - info.in_flight, 0) if info.state == "ready" else 0,
            "in_flight": info.in_flight,
            "served": info.served,
            "restarts": info.restarts,
            "reason": info.last_error,
            "rpc_workers": list(info.rpc_workers),
            "missing_workers": list(info.missing_workers),
        }
        for info in svc.supervisor.instances_of(model.name)
    ]
    for r in svc.router.fleet.of(model.name):
        views.append({"instance": r.url, "kind": "remote", **msgspec.to_builtins(r.info())})
    return views


def model_view(svc: Services, model: ModelDef) -> dict[str, Any]:
    """One model as /api/models shows it: its (first) local instance's state when it has
    one, and every instance."""
    catalog = svc.dispatcher.catalog
    view: dict[str, Any] = {
        "name": model.name,
        "aliases": list(model.aliases),
        "roles": catalog.roles_of(model.name),
    }
    spec = server_spec(model, svc.store.current.llm_params)
    info = svc.supervisor.instance(spec) if svc.store.current.backend == "server" else None
    missing = None if os.path.isfile(model.path) else f"{model.path} does not exist"
    instances = instance_views(svc, model)
    status: str = "failed" if missing else info.status if info else "unloaded"
    if not model.replicas:  # remote only
        missing = None
        up = any(i["state"] == "ready" for i in instances)
        status = "loaded" if up else "unavailable"
    last_used = info.last_used if info else None
    return view | {
        "status": status,
        "pid": info.pid if info else None,
        "port": info.port if info else None,
        "memory_mb": (
            sum(i.memory_mb for i in svc.supervisor.instances_of(model.name))
            if info
            else 0
            if missing or not model.replicas
            else estimate_mb(spec) * model.replicas
        ),
        "memory_source": info.memory_source if info else "estimate",
        "in_flight": info.in_flight if info else 0,
        "queued": svc.admission.queued(model.name),
        "last_used": datetime.fromtimestamp(last_used, UTC).isoformat() if last_used else None,
        "ttl_s": model.ttl_s,
        "pinned": model.pinned,
        "last_error": missing or (info.last_error if info else None),
        "instances": instances,
    }


async def api_models(request: Request) -> Response:
    svc = services(request)
    models = [model_view(svc, m) for m in svc.dispatcher.catalog.models.values()]
    return json_response(
        {
            "models": models,
            "memory_budget_mb": svc.budget_mb,
            "memory_used_mb": svc.supervisor.memory_used_mb(),
        }
    )


async def v1_models(request: Request) -> Response:
    svc = services(request)
    data = [
        {
            "id": view["name"],
            "object": "model",
            "created": 0,
            "owned_by": "ai-server",
            "aliases": view["aliases"],
            "status": view["status"],
            "roles": view["roles"],
        }
        for view in (model_view(svc, m) for m in svc.dispatcher.catalog.models.values())
    ]
    return json_response({"object": "list", "data": data})


def _resident(request: Request) -> tuple[Services, ModelDef]:
    svc = services(request)
    if svc.store.current.backend != "server":
        raise Conflict("cli mode keeps nothing resident: there is nothing to load or unload")
    model = svc.dispatcher.catalog.resolve(request.path_params["name"], "chat")
    if not model.replicas:
        raise Conflict(f"model {model.name} has only remote instances: nothing to load here")
    model.file()
    return svc, model


async def load(request: Request) -> Response:
    """200 once the model's local instances are loaded (bounded like a request's own load)."""
    svc, model = _resident(request)
    async with anyio.create_task_group() as tg:
        for spec in local_specs(model, svc.store.current.llm_params):
            tg.start_soon(svc.supervisor.ensure_ready, spec)
    return json_response(model_view(svc, model))


async def unload(request: Request) -> Response:
    """200 once the model's requests in flight have finished and its processes have exited."""
    svc, model = _resident(request)
    for spec in local_specs(model, svc.store.current.llm_params):
        await svc.supervisor.unload(spec)
    return json_response(model_view(svc, model))


async def rescan(request: Request) -> Response:
    svc = services(request)
    try:
        catalog = await svc.dispatcher.rescan(svc.store.current)
    except ConfigError as exc:
        raise BadRequest(f"the rescan found a problem; nothing changed: {exc}") from None
    return json_response({"models": sorted(catalog.models)})


routes = [
    Route("/v1/models", v1_models, methods=["GET"]),
    Route("/api/models", api_models, methods=["GET"]),
    Route("/api/models/rescan", rescan, methods=["POST"]),
    Route("/api/models/{name}/load", load, methods=["POST"]),
    Route("/api/models/{name}/unload", unload, methods=["POST"]),
]
