"""The supervisor: one task that owns every llama-server instance, the model pool's memory
budget, and all lifecycle state.

Callers never touch a process. They put a message in the inbox and await its `Reply`:

- `lease(spec)`: a READY endpoint for `spec`, loaded on demand, counted as in flight until
  the lease ends. A load that does not fit the memory budget first evicts the least
  recently used idle models (`pool.plan_load`); if nothing can be evicted it waits, up to
  `memory_wait`, for memory to free. A model restarting after a crash within its restart
  budget (BACKOFF, UNHEALTHY) is waited for too, up to `memory_wait`: a restart is a pause,
  not an error. Raises `BackendUnavailable` once it has FAILED (budget spent, cannot
  start), `ModelExceedsBudget` for a model that can never fit; neither carries its log.
  `lease(spec, replacing=pid)`, after a request to `pid` lost its connection, waits (same
  bound) for the next READY process, or for a probe that finds `pid` well after all.
- `apply(plan)`: the models (spec -> `Policy`) that may run. Others drain (bounded) and
  stop; pinned models and role defaults (`autostart`) load when they fit; a FAILED one is
  re-armed. `apply({})` stops everything (cli mode).
- `unload(spec)`: drain, then stop. `keep_alive(spec, seconds)`: how long it stays loaded
  once idle (Ollama's `keep_alive`), instead of its policy's TTL. `restart(spec)`,
  `stop_all()`, `report_failure(spec)` (wedge suspicion), `snapshot()`.

The actor is thin: `supervisor.decide` decides every lifecycle step of an instance (a pure
function); the actor turns messages into its events, and performs the actions it returns,
with `supervisor.effects` (processes, helper tasks, pidfiles) and `supervisor.loading`
(the memory budget's queue).

One shortcut, for the hot path: leasing a process that is READY (and releasing it, unless
the actor must act on the release) is a synchronous step on its record, in the caller's
task, instead of a message. It has no await, so it cannot interleave with a handler halfway
through a change; it only counts `in_flight`, which is what the handler it replaces did. The
message round trip cost 90 us of the 730 us the gateway spent per request under load
(bench/throughput.py). Both paths count through `_count_in` / `_count_out`, and a lease
released twice raises `LeaseError`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.abc

from core.errors import BackendUnavailable
from supervisor import lifecycle as d
from supervisor import pidfile, tasks
from supervisor.command import ServerSpec
from supervisor.config import SupervisorConfig
from supervisor.instance import Instance, Lease, LeaseError, ProcessInfo, Release
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
    KeepAlive,
    ProbeResult,
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
from supervisor.records import Records
from supervisor.states import DRAINING, Goal, State, StateEvent

__all__ = ["LeaseError", "ProcessInfo", "StateEvent", "Supervisor", "SupervisorConfig"]

log = logging.getLogger("ai_server.supervisor")


class Supervisor:
    def __init__(
        self,
        config: SupervisorConfig,
        http: aiohttp.ClientSession,
        queued: Callable[[str], int] = lambda name: 0,
    ) -> None:
        self.config = config
        self.http = http  # the one shared client for every upstream call, health included
        self._send, self._inbox = anyio.create_memory_object_stream[Any](math.inf)
        self._r = Records(config, http, self._send, queued)

    @property
    def events(self) -> deque[StateEvent]:
        """Every state change, the last 1000."""
        return self._r.events

    # ----------------------------------------------------------------- caller API

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """The actor loop. Start with `await tg.start(supervisor.run)`; cancel to stop, which
        stops every child (shielded, all at once) before returning."""
        async with anyio.create_task_group() as tg:
            self._r.effects.tg = tg
            try:
                reclaimed = await pidfile.reclaim_orphans(
                    self._r.effects.state_dir, self.config.host, self.config.binary,
                    self.config.stop_grace,
                )  # fmt: skip
                for pid in reclaimed:
                    log.warning("supervisor.orphan_reclaimed pid=%d", pid)
                tg.start_soon(tasks.ticker, self._send, self._r.loads.tick_interval)
                task_status.started()
                async for message in self._inbox:
                    await self._handle(message)
            finally:
                with anyio.CancelScope(shield=True):
                    await self._r.effects.kill_all(list(self._r.records.values()))
                    for m in self._r.records.values():
                        self._r.fail_waiters(m, BackendUnavailable("the gateway is shutting down"))
                self._send.close()
                self._inbox.close()
                tg.cancel_scope.cancel()

    @asynccontextmanager
    async def lease(
        self, spec: ServerSpec, replacing: int | None = None
    ) -> AsyncIterator[Endpoint]:
        """A READY endpoint for `spec`, counted in flight while the block runs."""
        lease = self._lease_ready(spec) if replacing is None else None
        if lease is None:
            lease = await self._acquire(spec, replacing)
        try:
            yield lease.endpoint
        finally:
            if not self._release_now(lease):
                with (
                    anyio.CancelScope(shield=True),
                    contextlib.suppress(anyio.ClosedResourceError),
                ):
                    await self._send.send(Release(lease))

    async def ensure_ready(self, spec: ServerSpec) -> Endpoint:
        """Load `spec` (if it is not loaded) and return its endpoint."""
        async with self.lease(spec) as endpoint:
            return endpoint

    async def apply(self, plan: Mapping[ServerSpec, Policy]) -> None:
        await self._ask(lambda r: Apply(dict(plan), r))

    async def unload(self, spec: ServerSpec) -> None:
        """Drain `spec`'s requests in flight (bounded by drain_timeout), then stop it."""
        await self._ask(lambda r: Unload(spec, r))

    async def keep_alive(self, spec: ServerSpec, seconds: float | None) -> None:
        """How long `spec` stays loaded once idle, from now or its next use (Ollama's
        `keep_alive`): `seconds`, `math.inf` for ever, 0 to unload it as soon as it is idle
        (within a tick), None for its policy's TTL again. Nothing for a spec not in the
        plan."""
        await self._ask(lambda r: KeepAlive(spec, seconds, r))

    async def restart(self, spec: ServerSpec | None = None) -> None:
        await self._ask(lambda r: Restart(spec, r))

    async def stop_all(self) -> None:
        await self._ask(StopAll)

    def report_failure(self, spec: ServerSpec) -> None:
        """A real request to `spec` failed upstream: probe it with a tiny completion."""
        with contextlib.suppress(anyio.ClosedResourceError):
            self._send.send_nowait(SuspectWedge(spec))

    @property
    def swaps(self) -> int:
        """Loads that had to evict another model."""
        return self._r.loads.swaps

    def memory_used_mb(self) -> int:
        return self._r.loads.memory_used_mb()

    def snapshot(self) -> list[ProcessInfo]:
        return [m.info() for m in self._r.records.values()]

    def load_of(self, spec: ServerSpec) -> tuple[State, int, bool]:
        """State, requests in flight and draining, for routing: cheaper than `instance`."""
        m = self._r.records.get(spec)
        if m is None:
            return State.STOPPED, 0, False
        life = m.life  # read once: this runs several times per request (bench/refactor.py)
        return life.state, m.in_flight, life.goal in DRAINING

    def instances_of(self, name: str) -> list[ProcessInfo]:
        """The local instances of model `name`, by replica."""
        found = [m.info() for spec, m in self._r.records.items() if spec.name == name]
        return sorted(found, key=lambda info: info.replica)

    def log_of(self, name: str, replica: int = 0) -> LogTail | None:
        """The output of every process of model `name`'s local instance `replica`, across its
        restarts (read-only for callers: its processes' drain tasks write it)."""
        found = (m for s, m in self._r.records.items() if s.name == name and s.replica == replica)
        m = next(found, None)
        return m.log if m is not None else None

    def instance(self, spec: ServerSpec) -> ProcessInfo | None:
        """The instance running `spec`, if there is a record of it."""
        m = self._r.records.get(spec)
        return m.info() if m is not None else None

    async def _ask(self, make: Callable[[Reply[None]], object]) -> None:
        reply: Reply[None] = Reply()
        try:
            await self._send.send(make(reply))
        except anyio.ClosedResourceError:
            return  # the actor has ended, and stopped every child on its way out
        await reply.wait()

    async def _acquire(self, spec: ServerSpec, replacing: int | None) -> Lease:
        reply: Reply[Lease] = Reply()
        try:
            await self._send.send(Acquire(spec, reply, replacing))
        except anyio.ClosedResourceError:
            raise BackendUnavailable("the gateway is shutting down") from None
        granted = False
        bound = self.config.start_wait + self.config.memory_wait
        try:
            with anyio.fail_after(bound):
                lease = await reply.wait()
            granted = True
            return lease
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
                        await self._send.send(Release(await reply.wait()))

    # ----------------------------------------------------------------- leases

    def _lease_ready(self, spec: ServerSpec) -> Lease | None:
        """The shortcut: a READY process that is not draining is granted at once."""
        m = self._r.records.get(spec)
        if m is None or m.state is not State.READY or m.draining or m.child is None:
            return None
        return self._r.count_in(m)

    def _release_now(self, lease: Lease) -> bool:
        """The shortcut back, unless the actor must act: a draining process stops when its
        last lease ends, and a model that goes idle may make room for a pending load."""
        if lease.released:
            raise LeaseError(f"a lease of {lease.record.spec.name} was released twice")
        m = lease.record
        if self._r.records.get(m.spec) is m and (
            m.draining or (self._r.loads.pending and m.in_flight <= 1)
        ):
            return False
        self._r.count_out(lease)
        return True

    # ----------------------------------------------------------------- the actor

    async def _handle(self, message: object) -> None:
        match message:
            case Acquire(spec, asking, replacing):
                m = self._r.record(spec)
                m.last_used = time.monotonic()
                await self._r.step(m, d.Ask(replacing), asking)
            case Release(lease):
                released = self._r.count_out(lease)
                if self._r.records.get(released.spec) is released:
                    await self._r.step(released, d.Released())
            case Apply(plan, reply):
                await self._on_apply(plan)
                reply.set(None)
            case Unload(spec, reply):
                await self._on_unload(spec, reply)
            case KeepAlive(spec, seconds, reply):
                if (kept := self._r.records.get(spec)) is not None:
                    kept.keep_alive_s = seconds
                    kept.last_used = time.monotonic()  # the time to stay counts from now
                reply.set(None)
            case Restart(spec, reply):
                for m in list(self._r.records.values()):
                    if spec is None or m.spec == spec:
                        await self._r.step(m, d.Rearm())
                reply.set(None)
            case StopAll(reply):
                await self._on_stop_all(reply)
            case SuspectWedge(spec) | DrainExpired(spec):
                if (found := self._r.records.get(spec)) is not None:
                    await self._r.step(found, message)
            case Tick():
                self._r.expire_restart_waits()
                await self._r.loads.tick()
            case (
                BecameReady() | StartTimedOut() | ChildExited() | HealthResult() | ProbeResult()
                | BackoffElapsed() | WorkersChecked()
            ):  # fmt: skip
                # News about a process that has since been replaced is dropped.
                about = self._r.records.get(message.spec)
                if about is not None and message.gen is about.gen:
                    await self._observe(about, message)

    async def _observe(self, m: Instance, message: object) -> None:
        tail = ""
        if isinstance(message, ChildExited):
            tail = await self._r.effects.exited(m)
            if m.state is not State.STOPPING:
                # Its last lines say why (a missing shared library exits 127 with one line).
                log.warning(
                    "supervisor.child_exited port=%d model=%s code=%d last_output=%s",
                    m.port, m.spec.name, message.code, " | ".join(tail.splitlines()[-5:]) or "-",
                )  # fmt: skip
        elif isinstance(message, WorkersChecked) and message.missing:
            log.warning("supervisor.rpc_worker_missing model=%s %s", m.spec.name, message.missing)
        await self._r.step(m, message, tail=tail)

    async def _on_apply(self, plan: Mapping[ServerSpec, Policy]) -> None:
        for spec, m in list(self._r.records.items()):
            if spec not in plan:
                self._r.loads.forget(m)
                await self._r.step(m, d.Drain(Goal.RETIRE))
        for spec, policy in plan.items():
            await self._r.step(self._r.record(spec, policy), d.Reapply())
        # Pinned models first: they are never evicted, so they must get their room first.
        for spec, policy in sorted(plan.items(), key=lambda item: not item[1].pinned):
            m = self._r.records[spec]
            if policy.autostart and m.state is State.STOPPED:
                await self._r.loads.want(m)

    async def _on_unload(self, spec: ServerSpec, reply: Reply[None]) -> None:
        m = self._r.records.get(spec)
        if m is None or m.state is State.STOPPED:
            reply.set(None)
            return
        m.unload_replies.append(reply)
        log.info("supervisor.unload model=%s in_flight=%d", spec.name, m.in_flight)
        self._r.loads.forget(m)
        await self._r.step(m, d.Drain(Goal.UNLOAD))

    async def _on_stop_all(self, reply: Reply[None]) -> None:
        self._r.stop_all_replies.append(reply)
        self._r.stopping_all = True
        for m in self._r.loads.pending:
            self._r.fail_waiters(m, BackendUnavailable("llama-server was stopped", retry_after=1))
        self._r.loads.pending.clear()
        for m in list(self._r.records.values()):
            await self._r.step(m, d.Halt())
        self._r.check_all_stopped()
