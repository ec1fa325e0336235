"""The pool's decisions as tables: what a load evicts, what idles out, the budget."""

from __future__ import annotations

import pytest

from supervisor.pool import Held, LoadPlan, idle_expired, memory_budget_mb, plan_load
from supervisor.states import State

S = State


def held(key: str, mb: int, state: State = S.READY, **kw: object) -> Held:
    return Held(key=key, memory_mb=mb, state=state, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("instances", "need", "may_evict", "expected"),
    [
        ([], 100, True, LoadPlan("start")),
        ([held("a", 300)], 100, True, LoadPlan("start")),  # 400 of 400
        # Least recently used idle first, and only as many as needed.
        (
            [held("a", 200, last_used=5), held("b", 200, last_used=1)],
            150,
            True,
            LoadPlan("evict", ("b",)),
        ),
        ([held("a", 200, last_used=5), held("b", 200, last_used=1)], 350, True,
         LoadPlan("evict", ("b", "a"))),
        # Never one with a request in flight, queued requests, pinned, or still loading.
        ([held("a", 300, in_flight=1)], 200, True, LoadPlan("wait")),
        ([held("a", 300, queued=2)], 200, True, LoadPlan("wait")),
        ([held("a", 300, pinned=True)], 200, True, LoadPlan("wait")),
        ([held("a", 300, S.STARTING)], 200, True, LoadPlan("wait")),
        ([held("a", 300, draining=True)], 200, True, LoadPlan("wait")),
        # What is stopping makes room: wait for it rather than evict more.
        ([held("a", 300, S.STOPPING), held("b", 50)], 300, True, LoadPlan("wait")),
        # Autostarts (nobody waiting) never evict.
        ([held("a", 300)], 200, False, LoadPlan("wait")),
        # Evicting everything idle would still not be enough: wait.
        ([held("a", 100), held("b", 250, in_flight=1)], 300, True, LoadPlan("wait")),
    ],
)  # fmt: skip
def test_plan_load_table(
    instances: list[Held], need: int, may_evict: bool, expected: LoadPlan
) -> None:
    assert plan_load(instances, need, 400, may_evict=may_evict) == expected


@pytest.mark.parametrize(
    ("instance", "ttl", "now", "expired"),
    [
        (held("a", 1, last_used=0), 10.0, 10.0, True),
        (held("a", 1, last_used=0), 10.0, 9.9, False),
        (held("a", 1, last_used=0), None, 1e9, False),  # ttl 0 / unset: never
        (held("a", 1, last_used=0, in_flight=1), 10.0, 99.0, False),
        (held("a", 1, last_used=0, pinned=True), 10.0, 99.0, False),
        (held("a", 1, S.STARTING, last_used=0), 10.0, 99.0, False),
    ],
)
def test_idle_expired_table(instance: Held, ttl: float | None, now: float, expired: bool) -> None:
    assert idle_expired(instance, ttl, now) is expired


def test_memory_budget_is_three_quarters_of_memtotal_unless_set() -> None:
    meminfo = "MemTotal:       24576000 kB\nMemFree:        1000 kB\n"
    assert memory_budget_mb(0, meminfo) == 24576000 * 3 // 4 // 1024
    assert memory_budget_mb(512, meminfo) == 512
