"""What llama-server says about itself, classified: health is not a boolean."""

from __future__ import annotations

from enum import StrEnum

import aiohttp
import anyio


class Health(StrEnum):
    OK = "ok"
    LOADING = "loading"  # 503 "Loading model": alive, not ready yet
    UNREACHABLE = "unreachable"  # nothing answers on the port
    ERROR = "error"  # answers, but not with a healthy status


async def probe_health(http: aiohttp.ClientSession, url: str, within: float) -> Health:
    """One `GET /health`."""
    try:
        async with http.get(url + "/health", timeout=aiohttp.ClientTimeout(total=within)) as r:
            if r.status == 200:
                return Health.OK
            return Health.LOADING if r.status == 503 else Health.ERROR
    except (aiohttp.ClientConnectionError, TimeoutError):
        return Health.UNREACHABLE


async def probe_completion(http: aiohttp.ClientSession, url: str, within: float) -> bool:
    """A one-token real completion: catches a server whose /health is fine but which cannot
    infer (wedged). Kept out of the prompt cache."""
    body = {"prompt": "a", "n_predict": 1, "cache_prompt": False}
    try:
        async with http.post(
            url + "/completion", json=body, timeout=aiohttp.ClientTimeout(total=within)
        ) as r:
            return r.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def probe_tcp(address: str, within: float) -> bool:
    """Whether something accepts a connection at HOST:PORT: all an rpc-server offers (it has
    no health endpoint, and speaks only its binary protocol)."""
    host, _, port = address.rpartition(":")
    try:
        with anyio.fail_after(within):
            stream = await anyio.connect_tcp(host.strip("[]"), int(port))
    except (OSError, TimeoutError):
        return False
    await stream.aclose()
    return True


async def probe_server(http: aiohttp.ClientSession, url: str, kind: str, within: float) -> Health:
    """`GET /health` of a llama-server; a connection to an rpc-server."""
    if kind == "rpc-server":
        ok = await probe_tcp(url.removeprefix("http://"), within)
        return Health.OK if ok else Health.UNREACHABLE
    return await probe_health(http, url, within)
