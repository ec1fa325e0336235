"""The data behind the dashboard (/ui): parameter ranges, the metrics history and each
model's live llama.cpp log. The page itself holds no data; it reads these with the
user's key."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from core.config import LlmParams
from core.errors import BadRequest, NotFound
from gateway.bodies import json_response
from gateway.history import History
from gateway.lifespan import services
from supervisor.logtail import LogTail

# Changing one of these replaces each loaded model's llama-server (after its requests).
RESTARTING = ("ctx_size", "batch_size", "ubatch_size")
DESCRIPTIONS = {
    "ctx_size": "context window in tokens (prompt and answer)",
    "temp": "sampling temperature: 0 always takes the likeliest token",
    "top_p": "nucleus sampling: keep the likeliest tokens up to this total probability",
    "top_k": "keep only the k likeliest tokens (0: all)",
    "presence_penalty": "penalise tokens already present in the text",
    "mirostat": "Mirostat sampling: 0 off, 1 or 2 its versions",
    "batch_size": "logical batch size for prompt processing",
    "ubatch_size": "physical batch size (at most batch_size)",
}
FOLLOW_WAIT_S = 1.0  # how often a follower looks for a (re)started process


def config_schema() -> dict[str, Any]:
    """The runtime config's fields with their ranges and defaults, from the same msgspec
    types that validate `POST /api/config`."""
    _, components = msgspec.json.schema_components([LlmParams])
    fields = components["LlmParams"]["properties"]
    return {
        "backend": {"enum": ["server", "cli"]},
        "llm_params": {
            name: schema | {"restarts": name in RESTARTING, "description": DESCRIPTIONS[name]}
            for name, schema in fields.items()
        },
    }


async def get_config_schema(request: Request) -> Response:
    return json_response(config_schema())


async def metrics_history(request: Request) -> Response:
    history: History = request.state.history
    return json_response(history.view())


def frame(line: str) -> bytes:
    """One log line as one NDJSON record."""
    return msgspec.json.encode({"line": line}) + b"\n"


async def follow(
    lookup: Callable[[], LogTail | None], stopping: Callable[[], bool] = lambda: False
) -> AsyncIterator[bytes]:
    """The log's lines held now, then each new one as it comes; waits for a log that does
    not exist yet (a model never loaded), and moves to a new one when the model's record is
    replaced (a changed startup parameter). Ends when cancelled (the client went), or within
    FOLLOW_WAIT_S once `stopping()` (the gateway is shutting down: an open log view must not
    hold the shutdown for its whole grace period)."""
    log = lookup()
    while log is None:
        await anyio.sleep(FOLLOW_WAIT_S)
        if stopping():
            return
        log = lookup()
    position = _start(log)
    while True:
        # Read and move on in one step: more may be fed while a line is being sent.
        lines, position = log.since(position), log.count
        for line in lines:
            yield frame(line)
        with anyio.move_on_after(FOLLOW_WAIT_S):
            await log.wait_past(position)
        if stopping():
            return
        if (current := lookup()) is not None and current is not log:
            log, position = current, _start(current)  # the model's record was replaced


def _start(log: LogTail) -> int:
    """The position before the oldest line still held."""
    return max(log.count - len(log.lines()), 0)


async def logs(request: Request) -> Response:
    """The llama.cpp output of one model as NDJSON, `{"line": ...}` per line, streamed until
    the client disconnects: its local instance's llama-server (`?replica=N`, default 0), or
    in cli mode its last runs' output, whichever the mode is as it goes. Admin only."""
    svc = services(request)
    model = svc.dispatcher.catalog.resolve(request.path_params["name"], "chat")
    replica = request.query_params.get("replica", "0")
    if not replica.isdigit():
        raise BadRequest("`replica` must be a number", param="replica")
    if int(replica) >= model.replicas:
        raise NotFound(f"model {model.name} has {model.replicas} local instance(s) here")
    # Read the (empty) body first: the disconnect watcher then cancels the stream.
    await request.body()
    # `app.state.stopping`: set by whoever serves the app when it starts shutting down.
    lines = follow(
        lambda: svc.dispatcher.log_of(svc.store.current, model.name, int(replica)),
        lambda: bool(getattr(request.app.state, "stopping", False)),
    )
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(lines, media_type="application/x-ndjson", headers=headers)


routes = [
    Route("/api/config/schema", get_config_schema, methods=["GET"]),
    Route("/api/metrics/history", metrics_history, methods=["GET"]),
    Route("/api/logs/{name}", logs, methods=["GET"]),
]
