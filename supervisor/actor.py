"""The supervisor: one task that owns every llama-server instance, the model pool's memory
budget, and all lifecycle state.

Callers never touch a process. They put a message in the inbox and await its `Reply`:

- `lease(spec)`: a READY endpoint for `spec`, loaded on demand, counted as in flight until
  the lease ends. A load that does not fit the memory budget first evicts the least
  recently used idle models (`pool.plan_load`); if nothing can be evicted it waits, up to
  `memory_wait`, for memory to free. Raises `BackendUnavailable` in BACKOFF / FAILED,
  `ModelExceedsBudget` for a model that can never fit.
  `lease(spec, replacing=pid)`, after a request to `pid` lost its connection, waits (same
  bound) through the restart for the next READY process instead, or for a probe that finds
  `pid` well after all.
- `apply(plan)`: the models (spec -> `Policy`) that may run. Others drain (bounded) and
  stop; pinned models and role defaults (`autostart`) load when they fit; a FAILED one is
  re-armed. `apply({})` stops everything (cli mode).
- `unload(spec)`: drain, then stop. `restart(spec)`, `stop_all()`, `report_failure(spec)`
  (wedge suspicion), `snapshot()`.

One shortcut, for the hot path: leasing a process that is READY (and releasing it, unless
the actor must act on the release) is a synchronous step on its record instead of a
message. It has no await, so it cannot interleave with a handler halfway through a change;
it only counts in flight, which is what the handler it replaces did. The message round trip
cost 90 us of the 730 us the gateway spent per request under load (bench/throughput.py).

The process lifecycle is in `supervisor.lifecycle`, loading within the memory budget in
`supervisor.loading`, the helper tasks in `supervisor.tasks`, the pool's decisions (pure
functions) in `supervisor.pool`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import anyio
import anyio.abc

from core.errors import BackendUnavailable, ModelExceedsBudget
from supervisor import pidfile, tasks
from supervisor.command import ServerSpec
from supervisor.instance import Instance, ProcessInfo
from supervisor.lifecycle import StateEvent, SupervisorConfig
from supervisor.loading import Loading
from supervisor.logtail import LogTail
from supervisor.messages import (
    Acquire,
    Apply,
    BackoffElapsed,
    BecameReady,
    ChildExited,
    DrainExpired,
    Endpoint,
    HealthResult,
    ProbeResult,
    Release,
    Reply,
    Restart,
    StartTimedOut,
    StopAll,
    SuspectWedge,
    Tick,
    Unload,
    WorkersChecked,
)
from supervisor.pool import Policy
from supervisor.states import LIVE, State

__all__ = ["ProcessInfo", "StateEvent", "Supervisor", "SupervisorConfig"]

log = logging.getLogger("ai_server.supervisor")


class Supervisor(Loading):
    def __init__(
        self,
        config: SupervisorConfig,
        http: aiohttp.ClientSession,
        queued: Callable[[str], int] = lambda name: 0,
    ) -> None:
        super().__init__(config, http, queued)

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
                    self._state_dir, self.config.host, self.config.binary, self.config.stop_grace
                )
                for pid in reclaimed:
                    log.warning("supervisor.orphan_reclaimed pid=%d", pid)
                tg.start_soon(tasks.ticker, self._send, self._tick_interval)
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
        """Load `spec` (if it is not loaded) and return its endpoint."""
        async with self.lease(spec) as endpoint:
            return endpoint

    async def apply(self, plan: Mapping[ServerSpec, Policy]) -> None:
        await self._ask(lambda r: Apply(dict(plan), r))

    async def unload(self, spec: ServerSpec) -> None:
        """Drain `spec`'s requests in flight (bounded by drain_timeout), then stop it."""
        await self._ask(lambda r: Unload(spec, r))

    async def restart(self, spec: ServerSpec | None = None) -> None:
        await self._ask(lambda r: Restart(spec, r))

    async def stop_all(self) -> None:
        await self._ask(StopAll)

    def report_failure(self, spec: ServerSpec) -> None:
        """A real request to `spec` failed upstream: probe it with a tiny completion."""
        with contextlib.suppress(anyio.ClosedResourceError):
            self._send.send_nowait(SuspectWedge(spec))

    def snapshot(self) -> list[ProcessInfo]:
        return [m.info() for m in self._records.values()]

    def load_of(self, spec: ServerSpec) -> tuple[State, int, bool]:
        """State, requests in flight and draining, for routing: cheaper than `instance`."""
        m = self._records.get(spec)
        return (m.state, m.in_flight, m.draining) if m else (State.STOPPED, 0, False)

    def instances_of(self, name: str) -> list[ProcessInfo]:
        """The local instances of model `name`, by replica."""
        found = [m.info() for spec, m in self._records.items() if spec.name == name]
        return sorted(found, key=lambda info: info.replica)

    def log_of(self, name: str, replica: int = 0) -> LogTail | None:
        """The output of every process of model `name`'s local instance `replica`, across its
        restarts (read-only for callers: its processes' drain tasks write it)."""
        found = (m for s, m in self._records.items() if s.name == name and s.replica == replica)
        m = next(found, None)
        return m.log if m is not None else None

    def instance(self, spec: ServerSpec) -> ProcessInfo | None:
        """The instance running `spec`, if there is a record of it."""
        m = self._records.get(spec)
        return m.info() if m is not None else None

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
        bound = self.config.start_wait + self.config.memory_wait
        try:
            with anyio.fail_after(bound):
                endpoint = await reply.wait()
            granted = True
            return endpoint
        except TimeoutError:
            raise BackendUnavailable(
                f"llama-server for {spec.name or Path(spec.model).name} is not ready after "
                f"{bound:.0f} s",
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
            case Apply(plan, reply):
                await self._on_apply(plan)
                reply.set(None)
            case Unload(spec, reply):
                await self._on_unload(spec, reply)
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
                if (m := self._records.get(spec)) and m.draining:
                    await self._stop(m)
            case (
                BecameReady() | StartTimedOut() | ChildExited() | HealthResult() | ProbeResult()
                | BackoffElapsed() | WorkersChecked()
            ):  # fmt: skip
                m = self._records.get(message.spec)
                if m is not None and message.gen is m.gen:
                    await self._observe(m, message)

    async def _observe(self, m: Instance, message: object) -> None:
        match message:
            case BecameReady(rss_mb=rss_mb):
                self._on_ready(m, rss_mb)
                await self._memory_freed()  # a measured figure may be below the estimate
            case StartTimedOut(reason=reason):
                self._kill(m, reason)
            case ChildExited(code=code):
                await self._on_exit(m, code)
            case HealthResult(health=health, rss_mb=rss_mb):
                self._on_health(m, health, rss_mb)
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
            case WorkersChecked(missing=missing):
                await self._on_workers(m, missing)

    def _record(self, spec: ServerSpec, policy: Policy | None = None) -> Instance:
        if (m := self._records.get(spec)) is None:
            # Ports of records on their way out may be taken: the new one waits for them.
            taken = {r.port for r in self._records.values() if not r.retiring}
            port = next(p for p in range(self.config.base_port, 65536) if p not in taken)
            url = f"http://{self.config.host}:{port}"
            m = self._records[spec] = Instance(spec, url, port, policy or Policy())
        elif m.retiring:  # wanted again before it stopped
            m.retiring = m.draining = False
        if policy is not None:
            m.policy = policy
        return m

    # --------------------------------------------------------------- requests

    async def _on_acquire(self, m: Instance, reply: Reply[Endpoint], replacing: int | None) -> None:
        m.last_used = time.monotonic()
        if m.too_big:
            reply.fail(ModelExceedsBudget(m.too_big))
            return
        if replacing is not None and (
            m.state in (State.BACKOFF, State.UNHEALTHY)
            or (m.state is State.READY and m.child is not None and m.child.pid == replacing)
        ):
            m.successors.append(reply)
            self._on_suspect(m.spec)  # READY with the failed pid: is it really broken?
            return
        match m.state:
            case State.READY if not m.draining:
                self._grant(m, reply)
            case State.READY | State.STARTING | State.STOPPING:
                m.waiters.append(reply)  # draining or stopping: loaded again after the stop
            case State.STOPPED:
                m.waiters.append(reply)
                await self._want(m)
            case State.UNHEALTHY:
                reply.fail(BackendUnavailable("llama-server is restarting", retry_after=1))
            case State.BACKOFF:
                wait = max(m.retry_at - time.monotonic(), 0.1)
                reply.fail(self._unavailable(m, "is restarting after a failure", wait))
            case State.FAILED:
                reply.fail(self._unavailable(m, "has failed", 30))

    def _grant_all(self, m: Instance) -> None:
        replies, m.waiters, m.successors = m.waiters + m.successors, [], []
        for reply in replies:
            self._grant(m, reply)

    def _grant(self, m: Instance, reply: Reply[Endpoint]) -> None:
        if reply.abandoned:
            return
        reply.set(self._count_in(m))

    def _count_in(self, m: Instance) -> Endpoint:
        assert m.child is not None
        m.in_flight += 1
        m.served += 1
        m.last_used = time.monotonic()
        return Endpoint(spec=m.spec, url=m.url, port=m.port, pid=m.child.pid)

    def _lease_ready(self, spec: ServerSpec) -> Endpoint | None:
        """The shortcut: a READY process that is not draining is granted at once."""
        m = self._records.get(spec)
        if m is None or m.state is not State.READY or m.draining or m.child is None:
            return None
        return self._count_in(m)

    def _release_now(self, spec: ServerSpec) -> bool:
        """The shortcut back, unless the actor must act: a draining process stops when its
        last lease ends, and a model that goes idle may make room for a pending load."""
        m = self._records.get(spec)
        if m is None:
            return True
        if m.draining or (self._pending and m.in_flight <= 1):
            return False
        m.in_flight = max(m.in_flight - 1, 0)
        m.last_used = time.monotonic()
        return True

    async def _on_release(self, spec: ServerSpec) -> None:
        if (m := self._records.get(spec)) is None:
            return
        m.in_flight = max(m.in_flight - 1, 0)
        m.last_used = time.monotonic()
        if m.in_flight:
            return
        if m.draining:
            await self._stop(m)
        else:
            await self._memory_freed()

    async def _on_apply(self, plan: Mapping[ServerSpec, Policy]) -> None:
        for spec, m in list(self._records.items()):
            if spec not in plan:
                await self._retire(m)
        for spec, policy in plan.items():
            m = self._record(spec, policy)
            m.too_big = self._too_big(m)
            if m.too_big:
                self._fail_waiters(m, ModelExceedsBudget(m.too_big))
                if m.state in LIVE:
                    await self._stop(m)
            elif m.state is State.FAILED:  # a config change re-arms it
                m.restart_times.clear()
                m.attempt = 0
                await self._stop(m)
        # Pinned models first: they are never evicted, so they must get their room first.
        for spec, policy in sorted(plan.items(), key=lambda item: not item[1].pinned):
            m = self._records[spec]
            if policy.autostart and m.state is State.STOPPED and not m.too_big:
                await self._want(m)

    async def _retire(self, m: Instance) -> None:
        """Stop `m` once its in-flight requests finish (bounded by drain_timeout), and forget
        it: its spec is no longer wanted."""
        m.retiring = True
        await self._drain(m)

    async def _drain(self, m: Instance) -> None:
        m.draining = True
        if m in self._pending:
            self._pending.remove(m)
        if m.in_flight == 0:
            await self._stop(m)
        else:
            self._spawn_task(
                tasks.after, self._send, self.config.drain_timeout, DrainExpired(m.spec)
            )

    async def _on_unload(self, spec: ServerSpec, reply: Reply[None]) -> None:
        m = self._records.get(spec)
        if m is None or m.state is State.STOPPED:
            reply.set(None)
            return
        m.unload_replies.append(reply)
        log.info("supervisor.unload model=%s in_flight=%d", spec.name, m.in_flight)
        await self._drain(m)

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
            elif not m.too_big:
                await self._stop(m)  # BACKOFF / FAILED: to STOPPED, then loaded again
                await self._want(m)

    async def _on_stop_all(self, reply: Reply[None]) -> None:
        self._stop_all_replies.append(reply)
        self._stopping_all = True
        for m in self._pending:
            self._fail_waiters(m, BackendUnavailable("llama-server was stopped", retry_after=1))
        self._pending.clear()
        for m in list(self._records.values()):
            m.start_after_stop = False
            await self._stop(m)
        self._check_all_stopped()

    def _on_suspect(self, spec: ServerSpec) -> None:
        m = self._records.get(spec)
        if m is None or m.state is not State.READY or m.probing:
            return
        m.probing = True
        self._spawn_task(
            tasks.probe, self._send, self.http, m.spec, m.gen, m.url, self.config.probe_timeout
        )
