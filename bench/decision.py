"""The router's decision time per request, in process (issue 16): part of the routing figure
(bench/routing.py), or alone with `python -m bench.decision`.

What a routed request adds, with 4 instances of its model: `Router.routes`, `Router.pick`
(a snapshot of the instances as Candidates, then `least_busy`) and `Router.capacity_of` (its
admission lane's size, read at admission). Against it, the same calls for a model with one
local instance, which is not routed. Local instances are measured on a supervisor that
is not running (each reads as STOPPED: the same lookups as a READY one); remote ones on
records marked READY by hand, never probed.

Method: ROUNDS rounds of CALLS calls of each case, the order rotating each round; per case the
median of the rounds' per-call times, with the 10th-90th percentile of the rounds as its
spread. An empty call is timed alongside: the loop's own cost, left in every figure."""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import aiohttp
import anyio

from backends.catalog import Catalog, ModelDef
from backends.router import Router
from bench.common import BENCH_MODEL
from core.config import LlmParams
from supervisor.actor import Supervisor, SupervisorConfig
from supervisor.remote import Fleet, Remote, RemoteSpec

ROUNDS, CALLS = 101, 1000
SLOTS = 4


def _models() -> dict[str, ModelDef]:
    remotes = tuple(RemoteSpec(url=f"http://127.0.0.{i + 2}:8080") for i in range(4))
    return {
        "one local": BENCH_MODEL,
        "4 local replicas": ModelDef(name="local4", path=BENCH_MODEL.path, replicas=4),
        "4 remote": ModelDef(name="remote4", path="", replicas=0, remotes=remotes),
    }


def _request(router: Router, model: ModelDef, params: LlmParams) -> Callable[[], None]:
    """A request's calls into the router: the pick when routed, and the lane's size."""
    none: frozenset[str] = frozenset()

    def calls() -> None:
        if router.routes(model):
            router.pick(model, params, none)
        router.capacity_of(model.name)

    return calls


def _time(cases: dict[str, Callable[[], None]]) -> dict[str, list[float]]:
    """Per case, each round's time per call, us."""
    out: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for r in range(ROUNDS):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            call = cases[name]
            started = time.perf_counter_ns()
            for _ in range(CALLS):
                call()
            out[name].append((time.perf_counter_ns() - started) / CALLS / 1000)
    return out


async def measure() -> dict[str, list[float]]:
    params = LlmParams()
    models = _models()
    with tempfile.TemporaryDirectory() as state:
        async with aiohttp.ClientSession() as http, anyio.create_task_group() as tg:
            supervisor = Supervisor(SupervisorConfig(binary="llama-server", state_dir=state), http)
            fleet = Fleet(
                http, connect_timeout=1, probe_interval=1, probe_timeout=1, default_slots=SLOTS
            )
            await tg.start(fleet.run)
            router = Router(supervisor, fleet, SLOTS)
            catalog = Catalog({m.name: m for m in models.values()}, {"chat": BENCH_MODEL.name})
            router.configure(catalog, params, server_mode=False)  # no probes: set by hand
            remote = models["4 remote"]
            fleet.remotes = {remote.name: [Remote(remote.name, s, SLOTS) for s in remote.remotes]}
            for i, r in enumerate(fleet.remotes[remote.name]):
                r.passed(SLOTS, idle=i)  # READY, unequally idle
            cases = {name: _request(router, m, params) for name, m in models.items()}
            timings = _time(cases | {"empty call": lambda: None})
            tg.cancel_scope.cancel()
    return timings


def lines(timings: dict[str, list[float]]) -> list[str]:
    base = statistics.median(timings["one local"])
    rows = []
    for name, values in timings.items():
        low, *_, high = statistics.quantiles(values, n=10)
        median = statistics.median(values)
        added = "" if name in ("one local", "empty call") else f"{median - base:+.1f}"
        rows.append(f"| {name} | {median:.1f} | {low:.1f}-{high:.1f} | {added} |")
    return [
        f"**The router's decision per request** (in process: `routes`, `pick` and "
        f"`capacity_of`, {ROUNDS} rounds of {CALLS} calls, the order rotating; us per request, "
        "median of the rounds and their 10th-90th percentile)",
        "",
        "| model's instances | us | p10-p90 | added over one local (not routed) |",
        "|---|---|---|---|",
        *rows,
        "",
        "Local instances on a supervisor that is not running (each reads as STOPPED: the same "
        "lookups as READY), remote ones marked READY by hand; the empty call is the loop's "
        "own cost, left in every row.",
    ]


def main() -> int:
    print("\n".join(lines(anyio.run(measure))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
