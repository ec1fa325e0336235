"""Loading models within the memory budget, as the actor runs it: which loads wait for
memory, what they evict (as `supervisor.pool.plan_load` decides), idle unloads (TTL), and
the bound on a request's wait for memory. The layer between `Lifecycle` (one process) and
`Supervisor` (requests); every method runs inside the actor's loop.

A load waits in `_pending`, first come first served, while a request wants it (its
`waiters`) or it should load at startup (`autostart`). Whenever memory may have been freed
(a process stopped, failed, became idle, or measured less than its estimate) every pending
load is tried again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import cast

import aiohttp

from core.errors import BackendUnavailable
from supervisor.command import ServerSpec
from supervisor.instance import Instance
from supervisor.lifecycle import Lifecycle, SupervisorConfig
from supervisor.pool import Held, idle_expired, plan_load
from supervisor.states import State

log = logging.getLogger("ai_server.supervisor")


class Loading(Lifecycle):
    def __init__(
        self,
        config: SupervisorConfig,
        http: aiohttp.ClientSession,
        queued: Callable[[str], int],
    ) -> None:
        super().__init__(config, http)
        # Requests of a model waiting for admission: a model with a queue is not idle, so
        # two models alternating under a budget for one serve their queues before a swap.
        self._queued = queued
        self._pending: list[Instance] = []  # loads waiting for memory, first come first
        self._draining_pending = False
        self.swaps = 0  # loads that had to evict another model

    def memory_used_mb(self) -> int:
        return sum(m.memory_mb for m in self._records.values() if m.holds_memory)

    def _too_big(self, m: Instance) -> str | None:
        need, budget = m.policy.estimate_mb, self.config.memory_budget_mb
        if need <= budget:
            return None
        return (
            f"model {m.spec.name} needs ~{need} MB (estimated), more than the whole memory "
            f"budget of {budget} MB ([pool] memory_budget_mb)"
        )

    def _tick_interval(self) -> float:
        """At most a second; a quarter of the shortest TTL, so an idle unload is on time."""
        ttls = (m.policy.ttl_s for m in self._records.values() if m.policy.ttl_s)
        return min([1.0, *(ttl / 4 for ttl in ttls)])

    async def _on_tick(self) -> None:
        now = time.monotonic()
        for m in list(self._records.values()):
            if m.state is State.READY and idle_expired(self._held(m), m.policy.ttl_s, now):
                log.info(
                    "supervisor.idle_unload model=%s idle_s=%.0f", m.spec.name, now - m.last_used
                )
                await self._stop(m)
        for m in list(self._pending):
            expired = [r for r in m.waiters if now - r.since >= self.config.memory_wait]
            if expired:
                m.waiters = [r for r in m.waiters if r not in expired]
                error = BackendUnavailable(self._no_room(m), retry_after=5)
                for reply in expired:
                    reply.fail(error)
            if not m.waiters and not m.policy.autostart:
                self._pending.remove(m)

    def _held(self, m: Instance) -> Held:
        return m.held(self._queued(m.spec.name))

    def _no_room(self, m: Instance) -> str:
        busy = [r.spec.name for r in self._records.values() if r.holds_memory and r is not m]
        return (
            f"no memory to load {m.spec.name} (~{m.policy.estimate_mb} MB) within "
            f"{self.config.memory_wait:.0f} s: the memory budget is "
            f"{self.config.memory_budget_mb} MB and {self.memory_used_mb()} MB are held by "
            f"models that are busy or loading ({', '.join(busy) or 'none'})"
        )

    async def _want(self, m: Instance) -> None:
        if m not in self._pending:
            self._pending.append(m)
        await self._memory_freed()

    async def _memory_freed(self) -> None:
        """Start what now fits of the loads waiting for memory, evicting idle models for
        loads that requests wait for (not for autostarts)."""
        if self._draining_pending or not self._pending:
            return
        self._draining_pending = True
        try:
            for m in list(self._pending):
                await self._try_load(m)
        finally:
            self._draining_pending = False

    async def _try_load(self, m: Instance) -> None:
        if m.state is not State.STOPPED or m.spec not in self._records:
            self._pending.remove(m)
            return
        if not m.waiters and not m.policy.autostart:
            self._pending.remove(m)
            return
        others = [self._held(r) for r in self._records.values() if r is not m and r.holds_memory]
        plan = plan_load(
            others, m.policy.estimate_mb, self.config.memory_budget_mb, may_evict=bool(m.waiters)
        )
        if plan.action == "start":
            self._pending.remove(m)
            await self._start(m)
        elif plan.action == "evict":
            self.swaps += 1
            for key in plan.victims:
                victim = self._records[cast(ServerSpec, key)]
                victim.evictions += 1
                log.info("supervisor.evict model=%s for=%s", victim.spec.name, m.spec.name)
                await self._stop(victim)
