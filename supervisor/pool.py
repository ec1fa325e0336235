"""The model pool's decisions, as pure functions over a snapshot: what a load needs to evict,
what status a model shows, what idles out. The actor applies what they decide.

Memory is counted per instance that holds it or is about to: loading, loaded, unhealthy,
stopping (until it has exited) and in backoff (it will come back). A loaded instance counts
its measured resident memory once known, its estimate before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import msgspec

from supervisor.states import State

Status = Literal["unloaded", "loading", "loaded", "unloading", "backoff", "failed"]

STATUS: dict[State, Status] = {
    State.STOPPED: "unloaded",
    State.STARTING: "loading",
    State.READY: "loaded",
    State.UNHEALTHY: "loaded",
    State.STOPPING: "unloading",
    State.BACKOFF: "backoff",
    State.FAILED: "failed",
}

# States whose instance holds (or is about to hold again) its memory.
HOLDING = frozenset({State.STARTING, State.READY, State.UNHEALTHY, State.STOPPING, State.BACKOFF})


class Policy(msgspec.Struct, frozen=True, kw_only=True):
    """What the pool knows of a model besides how to start it."""

    estimate_mb: int = 0
    pinned: bool = False
    ttl_s: float | None = None  # unload after this long idle; None: never
    autostart: bool = False  # load at once (pinned models and role defaults) when it fits


class Held(msgspec.Struct, frozen=True, kw_only=True):
    """One instance as eviction sees it."""

    key: object
    memory_mb: int
    state: State
    in_flight: int = 0
    queued: int = 0
    pinned: bool = False
    draining: bool = False
    last_used: float = 0.0

    @property
    def evictable(self) -> bool:
        """Idle: loaded, nothing in flight or queued, not pinned, not already on its way out.
        Never one that is loading or serving: the bug every model pool gets reported for."""
        return (
            self.state is State.READY
            and self.in_flight == 0
            and self.queued == 0
            and not self.pinned
            and not self.draining
        )


class LoadPlan(msgspec.Struct, frozen=True):
    action: Literal["start", "evict", "wait"]
    victims: tuple[object, ...] = ()


def plan_load(held: Sequence[Held], need_mb: int, budget_mb: int, *, may_evict: bool) -> LoadPlan:
    """How to make room for `need_mb`: start now; evict these idle instances first, least
    recently used first, then start once they have exited; or wait (what is stopping will
    make room, or nothing can be evicted now)."""
    used = sum(h.memory_mb for h in held)
    if used + need_mb <= budget_mb:
        return LoadPlan("start")
    freeing = sum(h.memory_mb for h in held if h.state is State.STOPPING)
    free = budget_mb - used + freeing
    if free >= need_mb or not may_evict:
        return LoadPlan("wait")
    victims: list[object] = []
    for h in sorted((h for h in held if h.evictable), key=lambda h: h.last_used):
        if free >= need_mb:
            break
        victims.append(h.key)
        free += h.memory_mb
    return LoadPlan("evict", tuple(victims)) if free >= need_mb else LoadPlan("wait")


def idle_expired(h: Held, ttl_s: float | None, now: float) -> bool:
    return ttl_s is not None and h.evictable and now - h.last_used >= ttl_s


def memory_budget_mb(configured_mb: int, meminfo: str) -> int:
    """The configured budget, or 75% of MemTotal (from /proc/meminfo's text) when it is 0."""
    if configured_mb:
        return configured_mb
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 3 // 4 // 1024
    raise ValueError("no MemTotal in /proc/meminfo")
