"""The floor for this stack: the least a Starlette + aiohttp gateway can do per request
(read the body, forward it on one pooled aiohttp session, return the answer), under the same
uvicorn, on the same uvloop and httptools. `python -m bench.floor PORT UPSTREAM_URL`."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

JSON = {"Content-Type": "application/json"}


def build(upstream: str) -> Starlette:
    session: list[aiohttp.ClientSession] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with aiohttp.ClientSession() as http:
            session.append(http)
            yield

    async def forward(request: Request) -> Response:
        body = await request.body()
        async with session[0].post(upstream + request.url.path, data=body, headers=JSON) as resp:
            data = await resp.read()
        return Response(data, resp.status, media_type="application/json")

    async def health(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    routes = [Route(path, forward, methods=["POST"])
              for path in ("/v1/chat/completions", "/v1/embeddings")]  # fmt: skip
    routes.append(Route("/health", health))
    return Starlette(routes=routes, lifespan=lifespan)


def main() -> None:
    port, upstream = int(sys.argv[1]), sys.argv[2]
    # The gateway's own stack (gateway/cli.py): uvloop and httptools.
    uvicorn.run(
        build(upstream), host="127.0.0.1", port=port, log_level="warning",
        loop="uvloop", http="httptools",
    )  # fmt: skip


if __name__ == "__main__":
    main()
