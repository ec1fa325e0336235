"""Who a key is (`GET /api/whoami`), and how each client is using its share of each lane
(`GET /api/clients`, admin key: names are not for every client to see)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.auth import Client
from gateway.bodies import json_response
from gateway.lifespan import services


async def whoami(request: Request) -> Response:
    """The caller's client name and whether it is an admin; reaching it means the key (if
    keys are required) was accepted."""
    client: Client = request.state.client
    return json_response(
        {"name": client.name, "admin": client.admin, "keys_required": client.keyed}
    )


async def clients(request: Request) -> Response:
    lanes: list[dict[str, Any]] = []
    for backend, model, lane in services(request).admission.lanes():
        queued = lane.queued()
        names = sorted({*lane.held, *queued, *lane.refused})
        lanes.append({
            "backend": backend,
            "model": model,
            "in_flight": lane.in_flight,
            "queued": lane.waiting,
            "clients": {
                name: {
                    "in_flight": lane.held.get(name, 0),
                    "queued": queued.get(name, 0),
                    "refused": lane.refused[name],
                }
                for name in names
            },
        })  # fmt: skip
    requests: dict[str, dict[str, int]] = {}
    for (client, dialect), n in sorted(request.app.state.metrics.dialects.items()):
        requests.setdefault(client, {})[dialect] = n
    return json_response({"lanes": lanes, "requests": requests})


routes = [
    Route("/api/whoami", whoami, methods=["GET"]),
    Route("/api/clients", clients, methods=["GET"]),
]
