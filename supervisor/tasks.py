"""The actor's helper tasks. They never change state: each watches one process generation
and reports what it saw into the actor's inbox; the actor drops news about a generation that
is gone."""

from __future__ import annotations

import time
from collections.abc import Callable

import aiohttp
import anyio
from anyio.abc import ObjectSendStream

from supervisor.command import ServerSpec
from supervisor.health import Health, probe_completion, probe_server, probe_tcp
from supervisor.messages import (
    BecameReady,
    ChildExited,
    Generation,
    HealthResult,
    ProbeResult,
    StartTimedOut,
    Tick,
    WorkersChecked,
)
from supervisor.process import ChildProcess, resident_mb

Send = ObjectSendStream[object]


async def after(send: Send, delay: float, message: object) -> None:
    await anyio.sleep(delay)
    await send.send(message)


async def ticker(send: Send, interval: Callable[[], float]) -> None:
    """Idle unloads and waits for memory are checked on each tick."""
    while True:
        await anyio.sleep(interval())
        await send.send(Tick())


async def watch_exit(send: Send, spec: ServerSpec, gen: Generation, child: ChildProcess) -> None:
    code = await child.wait()
    await send.send(ChildExited(spec, gen, code))


async def await_ready(
    send: Send,
    http: aiohttp.ClientSession,
    spec: ServerSpec,
    gen: Generation,
    child: ChildProcess,
    url: str,
    *,
    load_timeout: float,
    health_timeout: float,
) -> None:
    """Poll it (`probe_server`: /health, or a connection to an rpc-server) until it answers;
    give up when the child has been silent for load_timeout."""
    while gen.alive and child.returncode is None:
        health = await probe_server(http, url, spec.kind, within=health_timeout)
        if health is Health.OK:
            await send.send(BecameReady(spec, gen, await _rss(child.pid)))
            return
        if time.monotonic() - max(child.tail.last_output, 0) > load_timeout:
            reason = f"not ready after {load_timeout:.0f} s without progress in its log"
            await send.send(StartTimedOut(spec, gen, reason))
            return
        await anyio.sleep(0.05)


async def health_loop(
    send: Send,
    http: aiohttp.ClientSession,
    spec: ServerSpec,
    gen: Generation,
    child: ChildProcess,
    url: str,
    *,
    interval: float,
    within: float,
) -> None:
    """A health check every `interval` (`supervisor.health.probe_server`), with the
    process's resident memory."""
    while gen.alive:
        await anyio.sleep(interval)
        if not gen.alive:
            return
        health = await probe_server(http, url, spec.kind, within=within)
        await send.send(HealthResult(spec, gen, health, await _rss(child.pid)))


async def probe(
    send: Send, http: aiohttp.ClientSession, spec: ServerSpec, gen: Generation, url: str,
    within: float,
) -> None:  # fmt: skip
    ok = await probe_completion(http, url, within=within)
    await send.send(ProbeResult(spec, gen, ok))


async def await_workers(
    send: Send, spec: ServerSpec, gen: Generation, *, within: float, interval: float
) -> None:
    """After an RPC-backed llama-server exited: report which of its workers do not answer,
    each time that changes, until all of them do."""
    reported: tuple[str, ...] | None = None
    while gen.alive:
        answers = [await probe_tcp(worker, within) for worker in spec.rpc]
        missing = tuple(w for w, ok in zip(spec.rpc, answers, strict=True) if not ok)
        if missing != reported:
            await send.send(WorkersChecked(spec, gen, missing))
            reported = missing
        if not missing:
            return
        await anyio.sleep(interval)


async def _rss(pid: int) -> int | None:
    return await anyio.to_thread.run_sync(resident_mb, pid)
