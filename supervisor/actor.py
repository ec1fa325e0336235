"""The supervisor: one task that owns every llama-server process and all lifecycle state.

Callers never touch a process. They put a message in the inbox and await its `Reply`:

- `lease(spec)`: a READY endpoint for `spec`, started on demand (bounded wait), counted as
  in flight until the lease ends. Raises `BackendUnavailable` in BACKOFF / FAILED.
  `lease(spec, replacing=pid)`, after a request to `pid` lost its connection, waits (same
  bound) through the restart for the next READY process instead, or for a probe that finds
  `pid` well after all.
- `apply(specs)`: the set of specs that should run. Others drain (bounded) and stop; new
  ones start; a FAILED one is re-armed. `apply(frozenset())` stops everything (cli mode).
- `restart(spec)`, `stop_all()`, `report_failure(spec)` (wedge suspicion), `snapshot()`.

One shortcut, for the hot path: leasing a process that is READY (and releasing it, unless it
is retiring) is a synchronous step on its record instead of a message. It has no await, so
it cannot interleave with a handler halfway through a change; it only counts in flight,
which is what the handler it replaces did. The message round trip cost 90 us of the 730 us
the gateway spent per request under load (bench/throughput.py).

Helper tasks (exit watcher, readiness poll, health loop, backoff timer, wedge probe) never
change state either: they report observations into the same inbox, tagged with the
`Generation` they watch, and the actor drops news about a generation that is gone.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.abc
import msgspec

from gateway.errors import BackendUnavailable
from supervisor import pidfile
from supervisor.backoff import backoff_delay, within_budget
from supervisor.command import ServerSpec, build_server_argv
from supervisor.health import Health, probe_completion, probe_health
from supervisor.logtail import LogTail
from supervisor.messages import (
    Acquire,
    Apply,
    BackoffElapsed,
    BecameReady,
    ChildExited,
    DrainExpired,
    Endpoint,
    Generation,
    HealthResult,
    ProbeResult,
    Release,
    Reply,
    Restart,
    StartTimedOut,
    StopAll,
    SuspectWedge,
    Tick,
)
from supervisor.process import ChildProcess, bind_error, spawn
from supervisor.states import LIVE, State, check_transition

log = logging.getLogger("ai_server.supervisor")


class SupervisorConfig(msgspec.Struct, frozen=True, kw_only=True):
    binary: str
    state_dir: str
    host: str = "127.0.0.1"
    base_port: int = 8080
    # A load is given up only after this long without any output from the child, so a big
    # model on a slow disk that keeps logging progress is never killed mid-load.
    load_timeout: float = 60.0
    start_wait: float = 120.0  # how long a caller waits for a process to become READY
    health_interval: float = 5.0
    health_timeout: float = 3.0
    health_failures: int = 3
    probe_timeout: float = 20.0
    restart_limit: int = 5
    restart_window: float = 300.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    stop_grace: float = 5.0
    drain_timeout: float = 30.0
    idle_unload_s: float | None = None


class StateEvent(msgspec.Struct, frozen=True):
    port: int
    old: State
    new: State
    at: float


class ProcessInfo(msgspec.Struct, frozen=True):
    model: str
    port: int
    state: State
    pid: int | None
    restarts: int
    last_error: str | None


class _Managed:
    """The actor's record of one llama-server (one per spec). Only the actor mutates it."""

    def __init__(self, spec: ServerSpec, url: str, port: int) -> None:
        self.spec = spec
        self.url = url
        self.port = port
        self.state = State.STOPPED
        self.gen = Generation(0)
        self.gen.alive = False
        self.child: ChildProcess | None = None
        self.restart_times: deque[float] = deque(maxlen=64)
        self.restarts = 0
        self.attempt = 0
        self.health_failures = 0
        self.probing = False
        self.last_error: str | None = None
        self.failure_reason: str | None = None  # why we are killing it, for last_error
        self.retry_at = 0.0
        self.waiters: list[Reply[Endpoint]] = []
        self.successors: list[Reply[Endpoint]] = []  # leases that wait through a restart
        self.in_flight = 0
        self.last_used = 0.0
        self.retiring = False
        self.start_after_stop = False


class Supervisor:
    def __init__(
        self,
        config: SupervisorConfig,
        http: aiohttp.ClientSession,
    ) -> None:
        self.config = config
        self.http = http  # the one shared client for every upstream call, health included
        self._state_dir = Path(config.state_dir).expanduser()
        self._records: dict[ServerSpec, _Managed] = {}
        self._send, self._inbox = anyio.create_memory_object_stream[Any](math.inf)
        self._tg: anyio.abc.TaskGroup | None = None
        self.events: deque[StateEvent] = deque(maxlen=1000)
        self._stop_all_replies: list[Reply[None]] = []

    # ----------------------------------------------------------------- caller API

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """The actor loop. Start with `await tg.start(supervisor.run)`; cancel to stop, which
        stops every child (shielded) before returning."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                reclaimed = await pidfile.reclaim_orphans(
                    self._state_dir, self.config.binary, self.config.stop_grace
                )
                for pid in reclaimed:
                    log.warning("supervisor.orphan_reclaimed pid=%d", pid)
                if self.config.idle_unload_s:
                    tg.start_soon(self._ticker, self.config.idle_unload_s)
                task_status.started()
                async for message in self._inbox:
                    await self._handle(message)
            finally:
                with anyio.CancelScope(shield=True):
                    await self._kill_all()
                self._send.close()
                self._inbox.close()
                tg.cancel_scope.cancel()

    @asynccontextmanager
    async def lease(
        self, spec: ServerSpec, replacing: int | None = None
    ) -> AsyncIterator[Endpoint]:
        """A READY endpoint for `spec`, counted in flight while the block runs."""
        endpoint = self._lease_ready(spec) if replacing is None else None
        if endpoint is None:
            endpoint = await self._acquire(spec, replacing)
        try:
            yield endpoint
        finally:
            if not self._release_now(spec):
                with (
                    anyio.CancelScope(shield=True),
                    contextlib.suppress(anyio.ClosedResourceError),
                ):
                    await self._send.send(Release(spec))

    async def ensure_ready(self, spec: ServerSpec) -> Endpoint:
        async with self.lease(spec) as endpoint:
            return endpoint

    async def apply(self, specs: frozenset[ServerSpec]) -> None:
        await self._ask(lambda r: Apply(specs, r))

    async def restart(self, spec: ServerSpec | None = None) -> None:
        await self._ask(lambda r: Restart(spec, r))

    async def stop_all(self) -> None:
        await self._ask(StopAll)

    def report_failure(self, spec: ServerSpec) -> None:
        """A real request to `spec` failed upstream: probe it with a tiny completion."""
        with contextlib.suppress(anyio.ClosedResourceError):
            self._send.send_nowait(SuspectWedge(spec))

    def snapshot(self) -> list[ProcessInfo]:
        return [
            ProcessInfo(
                model=m.spec.model,
                port=m.port,
                state=m.state,
                pid=m.child.pid if m.child else None,
                restarts=m.restarts,
                last_error=m.last_error,
            )
            for m in self._records.values()
        ]

    async def _ask(self, make: Callable[[Reply[None]], object]) -> None:
        reply: Reply[None] = Reply()
        try:
            await self._send.send(make(reply))
        except anyio.ClosedResourceError:
            return  # the actor has ended, and stopped every child on its way out
        await reply.wait()

    async def _acquire(self, spec: ServerSpec, replacing: int | None) -> Endpoint:
        reply: Reply[Endpoint] = Reply()
        try:
            await self._send.send(Acquire(spec, reply, replacing))
        except anyio.ClosedResourceError:
            raise BackendUnavailable("the gateway is shutting down") from None
        granted = False
        try:
            with anyio.fail_after(self.config.start_wait):
                endpoint = await reply.wait()
            granted = True
            return endpoint
        except TimeoutError:
            raise BackendUnavailable(
                f"llama-server for {Path(spec.model).name} is not ready after "
                f"{self.config.start_wait:.0f} s",
                retry_after=5,
            ) from None
        finally:
            if not granted:
                reply.abandoned = True
                if reply.succeeded:  # counted in just as we gave up: give the lease back
                    with anyio.CancelScope(shield=True):
                        await self._send.send(Release(spec))

    # ----------------------------------------------------------------- the actor

    async def _handle(self, message: object) -> None:
        match message:
            case Acquire(spec, reply, replacing):
                await self._on_acquire(self._record(spec), reply, replacing)
            case Release(spec):
                await self._on_release(spec)
            case Apply(specs, reply):
                await self._on_apply(specs)
                reply.set(None)
            case Restart(spec, reply):
                await self._on_restart(spec)
                reply.set(None)
            case StopAll(reply):
                await self._on_stop_all(reply)
            case SuspectWedge(spec):
                self._on_suspect(spec)
            case Tick():
                await self._on_tick()
            case DrainExpired(spec):
                if (m := self._records.get(spec)) and m.retiring:
                    await self._stop(m)
            case (
                BecameReady() | StartTimedOut() | ChildExited() | HealthResult() | ProbeResult()
                | BackoffElapsed()
            ):  # fmt: skip
                m = self._records.get(message.spec)
                if m is not None and message.gen is m.gen:
                    await self._observe(m, message)

    async def _observe(self, m: _Managed, message: object) -> None:
        match message:
            case BecameReady():
                self._on_ready(m)
            case StartTimedOut(reason=reason):
                self._kill(m, reason)
            case ChildExited(code=code):
                await self._on_exit(m, code)
            case HealthResult(health=health):
                self._on_health(m, health)
            case ProbeResult(ok=ok):
                m.probing = False
                if m.state is not State.READY:
                    return
                if ok:  # the failure that sent successors here was not the process's
                    self._grant_all(m)
                else:
                    self._unhealthy(m, "a one-token completion probe failed (wedged)")
            case BackoffElapsed():
                if m.state is State.BACKOFF:
                    await self._start(m)

    def _record(self, spec: ServerSpec) -> _Managed:
        if (m := self._records.get(spec)) is None:
            # Ports of records on their way out may be taken: the new one waits for them.
            taken = {r.port for r in self._records.values() if not r.retiring}
            port = next(p for p in range(self.config.base_port, 65536) if p not in taken)
            m = self._records[spec] = _Managed(spec, f"http://{self.config.host}:{port}", port)
        m.retiring = False
        return m

    def _transition(self, m: _Managed, new: State) -> None:
        check_transition(m.state, new)
        log.info(
            "supervisor.state_changed port=%d model=%s %s -> %s", m.port, m.spec.model, m.state, new
        )
        self.events.append(StateEvent(m.port, m.state, new, time.monotonic()))
        m.state = new

    def _spawn_task(self, fn: Callable[..., Any], *args: object) -> None:
        assert self._tg is not None
        self._tg.start_soon(fn, *args)

    # --------------------------------------------------------------- requests

    async def _on_acquire(self, m: _Managed, reply: Reply[Endpoint], replacing: int | None) -> None:
        m.last_used = time.monotonic()
        if replacing is not None and (
            m.state in (State.BACKOFF, State.UNHEALTHY)
            or (m.state is State.READY and m.child is not None and m.child.pid == replacing)
        ):
            m.successors.append(reply)
            self._on_suspect(m.spec)  # READY with the failed pid: is it really broken?
            return
        match m.state:
            case State.READY:
                self._grant(m, reply)
            case State.STARTING:
                m.waiters.append(reply)
            case State.STOPPED:
                m.waiters.append(reply)
                await self._start(m)
            case State.STOPPING:
                m.waiters.append(reply)
                m.start_after_stop = True
            case State.UNHEALTHY:
                reply.fail(BackendUnavailable("llama-server is restarting", retry_after=1))
            case State.BACKOFF:
                wait = max(m.retry_at - time.monotonic(), 0.1)
                reply.fail(self._unavailable(m, "is restarting after a failure", wait))
            case State.FAILED:
                reply.fail(self._unavailable(m, "has failed", 30))

    def _unavailable(self, m: _Managed, what: str, retry_after: float) -> BackendUnavailable:
        detail = f": {m.last_error}" if m.last_error else ""
        return BackendUnavailable(
            f"llama-server for {Path(m.spec.model).name} {what}{detail}", retry_after=retry_after
        )

    def _grant_all(self, m: _Managed) -> None:
        replies, m.waiters, m.successors = m.waiters + m.successors, [], []
        for reply in replies:
            self._grant(m, reply)

    def _grant(self, m: _Managed, reply: Reply[Endpoint]) -> None:
        if reply.abandoned:
            return
        reply.set(self._count_in(m))

    def _count_in(self, m: _Managed) -> Endpoint:
        assert m.child is not None
        m.in_flight += 1
        m.last_used = time.monotonic()
        return Endpoint(spec=m.spec, url=m.url, port=m.port, pid=m.child.pid)

    def _lease_ready(self, spec: ServerSpec) -> Endpoint | None:
        """The shortcut: a READY, not retiring process is granted at once."""
        m = self._records.get(spec)
        if m is None or m.state is not State.READY or m.retiring or m.child is None:
            return None
        return self._count_in(m)

    def _release_now(self, spec: ServerSpec) -> bool:
        """The shortcut back, unless the actor must act: a retiring process stops when its
        last lease ends (`_on_release`)."""
        m = self._records.get(spec)
        if m is None or m.retiring:
            return m is None
        m.in_flight = max(m.in_flight - 1, 0)
        m.last_used = time.monotonic()
        return True

    async def _on_release(self, spec: ServerSpec) -> None:
        if (m := self._records.get(spec)) is None:
            return
        m.in_flight = max(m.in_flight - 1, 0)
        m.last_used = time.monotonic()
        if m.retiring and m.in_flight == 0:
            await self._stop(m)

    async def _on_apply(self, specs: frozenset[ServerSpec]) -> None:
        for spec, m in list(self._records.items()):
            if spec not in specs:
                await self._retire(m)
        for spec in specs:
            m = self._record(spec)
            if m.state is State.FAILED:
                m.restart_times.clear()
                m.attempt = 0
            if m.state in (State.STOPPED, State.FAILED):
                await self._start(m)

    async def _retire(self, m: _Managed) -> None:
        """Stop `m` once its in-flight requests finish (bounded by drain_timeout)."""
        m.retiring = True
        if m.in_flight == 0:
            await self._stop(m)
        else:
            self._spawn_task(self._after, self.config.drain_timeout, DrainExpired(m.spec))

    async def _on_restart(self, spec: ServerSpec | None) -> None:
        """An explicit restart; it also re-arms a FAILED process's budget."""
        for m in list(self._records.values()):
            if spec is not None and m.spec != spec:
                continue
            m.restart_times.clear()
            m.attempt = 0
            if m.state in LIVE:
                m.start_after_stop = True
                await self._stop(m)
            else:
                await self._start(m)

    async def _on_stop_all(self, reply: Reply[None]) -> None:
        self._stop_all_replies.append(reply)
        for m in list(self._records.values()):
            m.start_after_stop = False
            await self._stop(m)
        self._check_all_stopped()

    def _check_all_stopped(self) -> None:
        if all(m.state is State.STOPPED for m in self._records.values()):
            replies, self._stop_all_replies = self._stop_all_replies, []
            for reply in replies:
                reply.set(None)

    def _on_suspect(self, spec: ServerSpec) -> None:
        m = self._records.get(spec)
        if m is None or m.state is not State.READY or m.probing:
            return
        m.probing = True
        self._spawn_task(self._probe, m.spec, m.gen, m.url)

    async def _on_tick(self) -> None:
        idle = self.config.idle_unload_s
        now = time.monotonic()
        for m in self._records.values():
            if idle and m.state is State.READY and m.in_flight == 0 and now - m.last_used >= idle:
                log.info("supervisor.idle_unload port=%d idle_s=%.0f", m.port, now - m.last_used)
                await self._stop(m)

    # --------------------------------------------------------------- lifecycle

    async def _start(self, m: _Managed) -> None:
        if any(r is not m and r.port == m.port and r.state in LIVE for r in self._records.values()):
            m.start_after_stop = True  # the retiring holder of our port stops first
            return
        self._transition(m, State.STARTING)
        m.gen = Generation(m.gen.number + 1)
        m.health_failures = 0
        m.failure_reason = None
        if (held := _port_problem(self.config.host, m.port)) is not None:
            self._fail(m, held)
            return
        argv = build_server_argv(self.config.binary, m.spec, host=self.config.host, port=m.port)
        assert self._tg is not None
        try:
            m.child = await spawn(argv, self._tg, LogTail(max_lines=100))
        except OSError as exc:
            self._fail(m, f"cannot start {self.config.binary}: {exc.strerror or exc}")
            return
        pidfile.write_pidfile(self._state_dir, m.port, m.child.pid)
        log.info("supervisor.spawned port=%d pid=%d", m.port, m.child.pid)
        self._spawn_task(self._watch_exit, m.spec, m.gen, m.child)
        self._spawn_task(self._await_ready, m.spec, m.gen, m.child, m.url)

    def _on_ready(self, m: _Managed) -> None:
        if m.state is not State.STARTING:
            return
        self._transition(m, State.READY)
        m.attempt = 0
        self._grant_all(m)
        self._spawn_task(self._health_loop, m.spec, m.gen, m.url)

    def _on_health(self, m: _Managed, health: Health) -> None:
        if m.state is not State.READY:
            return
        if health is Health.OK:
            m.health_failures = 0
            return
        m.health_failures += 1
        if m.health_failures >= self.config.health_failures:
            self._unhealthy(m, f"/health {health} {m.health_failures} times in a row")

    def _unhealthy(self, m: _Managed, reason: str) -> None:
        self._transition(m, State.UNHEALTHY)
        self._kill(m, reason)

    def _kill(self, m: _Managed, reason: str) -> None:
        """Stop a process that failed; its exit then schedules the restart."""
        m.failure_reason = reason
        if m.child is not None:
            self._spawn_task(m.child.stop, self.config.stop_grace)

    async def _stop(self, m: _Managed) -> None:
        """Stop on purpose: no restart unless `start_after_stop` asks for one."""
        if m.state in (State.STARTING, State.READY, State.UNHEALTHY):
            self._transition(m, State.STOPPING)
            assert m.child is not None
            self._spawn_task(m.child.stop, self.config.stop_grace)
        elif m.state in (State.BACKOFF, State.FAILED):
            m.gen.alive = False
            self._transition(m, State.STOPPED)
            await self._after_stopped(m)

    async def _on_exit(self, m: _Managed, code: int) -> None:
        m.gen.alive = False
        pidfile.remove_pidfile(self._state_dir, m.port)
        tail = m.child.tail.text(last=15) if m.child else ""
        m.child = None
        if m.state is State.STOPPING:
            self._transition(m, State.STOPPED)
            await self._after_stopped(m)
            return
        why = f"{m.failure_reason}; " if m.failure_reason else ""
        m.last_error = f"{why}exited with status {code}\n{tail}".strip()
        log.warning("supervisor.child_exited port=%d code=%d", m.port, code)
        now = time.monotonic()
        if within_budget(
            m.restart_times, now, limit=self.config.restart_limit, window=self.config.restart_window
        ):
            m.attempt += 1
            m.restarts += 1
            m.restart_times.append(now)
            delay = backoff_delay(
                m.attempt, initial=self.config.backoff_initial, maximum=self.config.backoff_max
            )
            m.retry_at = now + delay
            self._transition(m, State.BACKOFF)
            log.info("supervisor.restart_scheduled port=%d delay_s=%.2f", m.port, delay)
            error = self._unavailable(m, "is restarting after a failure", delay)
            self._fail_waiters(m, error, keep_successors=True)
            self._spawn_task(self._after, delay, BackoffElapsed(m.spec, m.gen))
        else:
            self._transition(m, State.FAILED)
            self._fail_waiters(m, self._unavailable(m, "has failed", 30))

    def _fail(self, m: _Managed, reason: str) -> None:
        """A start that cannot succeed by retrying (port held, binary missing)."""
        m.last_error = reason
        self._transition(m, State.FAILED)
        self._fail_waiters(m, self._unavailable(m, "cannot start", 30))

    def _fail_waiters(
        self, m: _Managed, error: BackendUnavailable, *, keep_successors: bool = False
    ) -> None:
        replies, m.waiters = m.waiters, []
        if not keep_successors:
            replies, m.successors = replies + m.successors, []
        for reply in replies:
            reply.fail(error)

    async def _after_stopped(self, m: _Managed) -> None:
        if m.retiring:
            del self._records[m.spec]
            self._fail_waiters(
                m, BackendUnavailable("llama-server was reconfigured", retry_after=1)
            )
        elif m.start_after_stop:
            m.start_after_stop = False
            await self._start(m)
        else:
            self._fail_waiters(m, BackendUnavailable("llama-server was stopped", retry_after=1))
        # A successor may have been waiting for this port.
        for other in list(self._records.values()):
            if other.state is State.STOPPED and other.start_after_stop and other is not m:
                other.start_after_stop = False
                await self._start(other)
        self._check_all_stopped()

    async def _kill_all(self) -> None:
        """On the way out: stop every child directly (the loop is no longer running)."""
        for m in self._records.values():
            m.gen.alive = False
            if m.child is not None:
                await m.child.stop(self.config.stop_grace)
                pidfile.remove_pidfile(self._state_dir, m.port)
            self._fail_waiters(m, BackendUnavailable("the gateway is shutting down"))

    # --------------------------------------------------------------- helper tasks

    async def _after(self, delay: float, message: object) -> None:
        await anyio.sleep(delay)
        await self._send.send(message)

    async def _ticker(self, idle: float) -> None:
        while True:
            await anyio.sleep(min(max(idle / 4, 0.05), 5.0))
            await self._send.send(Tick())

    async def _watch_exit(self, spec: ServerSpec, gen: Generation, child: ChildProcess) -> None:
        code = await child.wait()
        await self._send.send(ChildExited(spec, gen, code))

    async def _await_ready(
        self, spec: ServerSpec, gen: Generation, child: ChildProcess, url: str
    ) -> None:
        """Poll /health until 200; give up when the child has been silent for load_timeout."""
        timeout = self.config.load_timeout
        while gen.alive and child.returncode is None:
            health = await probe_health(self.http, url, within=self.config.health_timeout)
            if health is Health.OK:
                await self._send.send(BecameReady(spec, gen))
                return
            if time.monotonic() - max(child.tail.last_output, 0) > timeout:
                reason = f"not ready after {timeout:.0f} s without progress in its log"
                await self._send.send(StartTimedOut(spec, gen, reason))
                return
            await anyio.sleep(0.05)

    async def _health_loop(self, spec: ServerSpec, gen: Generation, url: str) -> None:
        while gen.alive:
            await anyio.sleep(self.config.health_interval)
            if not gen.alive:
                return
            health = await probe_health(self.http, url, within=self.config.health_timeout)
            await self._send.send(HealthResult(spec, gen, health))

    async def _probe(self, spec: ServerSpec, gen: Generation, url: str) -> None:
        ok = await probe_completion(self.http, url, within=self.config.probe_timeout)
        await self._send.send(ProbeResult(spec, gen, ok))


def _port_problem(host: str, port: int) -> str | None:
    """None if we can listen on host:port, else a sentence naming the port."""
    if (exc := bind_error(host, port)) is None:
        return None
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is held by another process (not a llama-server of ours)"
    return f"cannot listen on {host}:{port}: {exc.strerror}"
