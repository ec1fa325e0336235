"""Loading models within the memory budget: which loads wait for memory, what they evict (as
`supervisor.pool.plan_load` decides), idle unloads (TTL), and the bound on a request's wait
for memory. A part of the actor (it runs only inside the actor's loop), composed into it:
it starts and stops instances through the two callbacks it is given.

A load waits in `pending`, first come first served, while a request wants it (its
`waiters`) or it should load at startup (`autostart`). Whenever memory may have been freed
(a process stopped, failed, became idle, or measured less than its estimate) every pending
load is tried again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import cast

from core.errors import BackendUnavailable
from supervisor.command import ServerSpec
from supervisor.config import SupervisorConfig
from supervisor.instance import Instance
from supervisor.pool import Held, Policy, idle_expired, plan_load
from supervisor.states import State

log = logging.getLogger("ai_server.supervisor")

Act = Callable[[Instance], Awaitable[None]]


def too_big(name: str, policy: Policy, budget_mb: int) -> str | None:
    """Why a model can never fit the memory budget; None if it can."""
    if policy.estimate_mb <= budget_mb:
        return None
    return (
        f"model {name} needs ~{policy.estimate_mb} MB (estimated), more than the whole memory "
        f"budget of {budget_mb} MB ([pool] memory_budget_mb)"
    )


class Loads:
    def __init__(
        self,
        config: SupervisorConfig,
        records: dict[ServerSpec, Instance],
        queued: Callable[[str], int],
        *,
        start: Act,
        stop: Act,
    ) -> None:
        self._config = config
        self._records = records  # the actor's, read here
        # Requests of a model waiting for admission: a model with a queue is not idle, so
        # two models alternating under a budget for one serve their queues before a swap.
        self._queued = queued
        self._start = start
        self._stop = stop
        self.pending: list[Instance] = []  # loads waiting for memory, first come first
        self._trying = False
        self.swaps = 0  # loads that had to evict another model

    def memory_used_mb(self) -> int:
        return sum(m.memory_mb for m in self._records.values() if m.holds_memory)

    def too_big(self, m: Instance) -> str | None:
        return too_big(m.spec.name, m.policy, self._config.memory_budget_mb)

    def tick_interval(self) -> float:
        """At most a second; a quarter of the shortest TTL, so an idle unload is on time."""
        ttls = (m.ttl_s for m in self._records.values() if m.ttl_s)
        return min([1.0, *(max(ttl / 4, 0.05) for ttl in ttls)])

    def held(self, m: Instance) -> Held:
        return m.held(self._queued(m.spec.name))

    async def tick(self) -> None:
        now = time.monotonic()
        for m in list(self._records.values()):
            if m.state is State.READY and idle_expired(self.held(m), m.ttl_s, now):
                log.info(
                    "supervisor.idle_unload model=%s idle_s=%.0f", m.spec.name, now - m.last_used
                )
                await self._stop(m)
        for m in list(self.pending):
            expired = [r for r in m.waiters if now - r.since >= self._config.memory_wait]
            if expired:
                m.waiters = [r for r in m.waiters if r not in expired]
                error = BackendUnavailable(self._no_room(m), retry_after=5)
                for reply in expired:
                    reply.fail(error)
            if not m.waiters and not m.policy.autostart:
                self.pending.remove(m)

    def _no_room(self, m: Instance) -> str:
        busy = [r.spec.name for r in self._records.values() if r.holds_memory and r is not m]
        return (
            f"no memory to load {m.spec.name} (~{m.policy.estimate_mb} MB) within "
            f"{self._config.memory_wait:.0f} s: the memory budget is "
            f"{self._config.memory_budget_mb} MB and {self.memory_used_mb()} MB are held by "
            f"models that are busy or loading ({', '.join(busy) or 'none'})"
        )

    async def want(self, m: Instance) -> None:
        if m not in self.pending:
            self.pending.append(m)
        await self.freed()

    def forget(self, m: Instance) -> None:
        if m in self.pending:
            self.pending.remove(m)

    async def freed(self) -> None:
        """Start what now fits of the loads waiting for memory, evicting idle models for
        loads that requests wait for (not for autostarts)."""
        if self._trying or not self.pending:
            return  # a start or stop below freed memory again: the loop here sees it
        self._trying = True
        try:
            for m in list(self.pending):
                await self._try(m)
        finally:
            self._trying = False

    async def _try(self, m: Instance) -> None:
        if m not in self.pending:
            return
        if m.state is not State.STOPPED or m.spec not in self._records:
            self.pending.remove(m)
            return
        if not m.waiters and not m.policy.autostart:
            self.pending.remove(m)
            return
        others = [self.held(r) for r in self._records.values() if r is not m and r.holds_memory]
        plan = plan_load(
            others, m.policy.estimate_mb, self._config.memory_budget_mb, may_evict=bool(m.waiters)
        )
        if plan.action == "start":
            self.pending.remove(m)
            await self._start(m)
        elif plan.action == "evict":
            self.swaps += 1
            for key in plan.victims:
                victim = self._records[cast(ServerSpec, key)]
                victim.evictions += 1
                log.info("supervisor.evict model=%s for=%s", victim.spec.name, m.spec.name)
                await self._stop(victim)
