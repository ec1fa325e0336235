"""Routing between replicas, in simulation (issue 14): round-robin against least-busy; and
the router's own decision time per request, in process (bench/decision.py).

Four stub replicas, real HTTP servers in this process (aiohttp, each on its own loopback
address, 127.0.0.2-5), one slot each, with service times of 20, 40, 80 and 160 ms: a request
arriving while the slot is busy waits at the stub, as in llama-server's own queue. In front
of them, the gateway's part in miniature: an admission queue bounds the requests in flight to
the replicas' slots (`capacity`: 4), FIFO beyond; then the policy picks from a snapshot of
`Candidate`s (idle = 1 - our requests in flight on it), one request goes over the one shared
aiohttp session, and the admission is released. The policies are `backends.routing`'s own.

Open-loop arrivals at `--load` of the ideal, 1/0.02 + 1/0.04 + 1/0.08 + 1/0.16 = 93.75 req/s:
rate x span times drawn uniform over the span and sorted, for the warm-up and for the
measured window each (a Poisson process conditioned on its counts, so the window offers
exactly the nominal rate), from a fixed seed: the same times for every run. Rounds alternate
the policies, the order rotating, each on fresh stubs.

Throughput counts the answers received from the end of the warm-up (WARMUP s) to the end of
the arrivals, per second of that span: the steady-state rate; the backlog left at the end is
not counted. After the arrivals the backlog gets DRAIN s more, then is cut off. Latency
(arrival to answer) is over the requests arriving in the same span; one unanswered at the
cut-off counts as its age then, a lower bound, and a percentile that reaches one reads >=."""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import NamedTuple

import aiohttp
import anyio
from aiohttp import web

from backends.routing import Candidate, RoundRobin, capacity, least_busy
from bench import decision
from bench.common import Machine, write_section

SERVICE = (0.020, 0.040, 0.080, 0.160)  # seconds per request at each replica, one slot each
IDEAL = sum(1 / s for s in SERVICE)  # req/s with every slot always busy: 93.75
SEED = 14
WARMUP, DRAIN = 2.0, 5.0  # seconds
TARGET = 0.9  # least-busy's answered rate, of the ideal
ANSWER = {"content": "ok"}

Policy = Callable[[Sequence[Candidate]], int | None]
POLICIES: dict[str, Callable[[], Policy]] = {
    "round-robin": RoundRobin,
    "least-busy": lambda: least_busy,
}


class Stub:
    """One replica with one slot: requests served one at a time in arrival order, each in
    exactly `service` seconds. The slot's work runs on an ideal timeline (a request starts
    when it arrives or when the one before it ends, whichever is later) and the handler
    sleeps until its end: timer overshoot on a busy machine does not add up over a queue and
    eat the replica's capacity."""

    def __init__(self, service: float) -> None:
        self._service = service
        self._free_at = 0.0

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self._free_at = max(anyio.current_time(), self._free_at) + self._service
        await anyio.sleep_until(self._free_at)
        return web.json_response(ANSWER)


async def serve_stub(stub: Stub, host: str) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/completion", stub.handle)
    # A request cut off at the end of a run takes its handler with it (no 60 s grace).
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, host, 0).start()
    address, port = runner.addresses[0][:2]
    return runner, f"http://{address}:{port}/completion"


@asynccontextmanager
async def replicas(service: Sequence[float]) -> AsyncIterator[list[str]]:
    """Fresh stubs, one per service time, on 127.0.0.2, .3, ...: their URLs."""
    runners: list[web.AppRunner] = []
    urls: list[str] = []
    try:
        for i, seconds in enumerate(service):
            runner, url = await serve_stub(Stub(seconds), f"127.0.0.{i + 2}")
            runners.append(runner)
            urls.append(url)
        yield urls
    finally:
        with anyio.CancelScope(shield=True):
            for runner in runners:
                await runner.cleanup()


class Front:
    """The gateway's part: admission bounded to the replicas' slots (FIFO beyond), the
    policy's pick from a snapshot, one request, release. Counts per replica what it routed
    and what was answered; records when each request was answered, and each request's time
    from sending to its answer."""

    def __init__(self, urls: list[str], policy: Policy, http: aiohttp.ClientSession) -> None:
        self._urls, self._policy, self._http = urls, policy, http
        self._in_flight = [0] * len(urls)
        self._admission = anyio.Semaphore(capacity(self._snapshot()))  # FIFO hand-off
        self.routed = [0] * len(urls)
        self.answers = [0] * len(urls)
        self.answered: dict[int, float] = {}  # request index -> answer time
        self.trips: list[tuple[int, float]] = []  # (replica, seconds from send to answer)

    def _snapshot(self) -> list[Candidate]:
        return [
            Candidate(key=url, slots=1, idle=max(0, 1 - n), in_flight=n)
            for url, n in zip(self._urls, self._in_flight, strict=True)
        ]

    async def serve(self, index: int) -> None:
        async with self._admission:
            pick = self._policy(self._snapshot())
            assert pick is not None, "every stub is available"
            self._in_flight[pick] += 1
            self.routed[pick] += 1
            sent = anyio.current_time()
            try:
                async with self._http.post(self._urls[pick], json={"prompt": "Hi"}) as resp:
                    resp.raise_for_status()
                    await resp.read()
                self.trips.append((pick, anyio.current_time() - sent))
            finally:
                self._in_flight[pick] -= 1
        self.answered[index] = anyio.current_time()
        self.answers[pick] += 1


class Run(NamedTuple):
    offered: int  # requests arriving in the window
    completed: int  # answers received in the window
    latencies: list[tuple[float, bool]]  # of the requests offered: (seconds, cut off)
    routed: list[int]  # per replica, the whole run
    answers: list[int]
    beyond_service: list[float]  # per answer, its round trip less the replica's service time


def arrival_times(rate: float, seconds: float) -> list[float]:
    """Poisson arrivals conditioned on their counts: rate x span times, uniform over the span
    and sorted, for the warm-up and for the window each (so the window offers exactly the
    nominal rate)."""
    rng = random.Random(SEED)  # noqa: S311 (a simulation, not a secret)
    spans = ((0.0, WARMUP), (WARMUP, seconds))
    times = (a + (b - a) * rng.random() for a, b in spans for _ in range(round(rate * (b - a))))
    return sorted(times)


def window(
    arrivals: list[float], answered: dict[int, float], seconds: float
) -> tuple[int, int, list[tuple[float, bool]]]:
    """(offered, completed, latencies) in the window; `answered` (index -> time) on the
    arrivals' clock."""
    offered = [i for i, at in enumerate(arrivals) if WARMUP <= at < seconds]
    completed = sum(WARMUP <= t < seconds for t in answered.values())
    cut = seconds + DRAIN
    latencies = [(answered.get(i, cut) - arrivals[i], i not in answered) for i in offered]
    return len(offered), completed, latencies


async def run_once(policy: Policy, arrivals: list[float], seconds: float) -> Run:
    """One run on fresh stubs: the arrivals, open loop, then the drain and the cut-off."""
    async with replicas(SERVICE) as urls, aiohttp.ClientSession() as http:
        front = Front(urls, policy, http)
        start = anyio.current_time() + 0.1
        with anyio.CancelScope(deadline=start + seconds + DRAIN):
            async with anyio.create_task_group() as tg:
                for i, at in enumerate(arrivals):
                    await anyio.sleep_until(start + at)
                    tg.start_soon(front.serve, i)
    answered = {i: t - start for i, t in front.answered.items()}
    beyond = [t - SERVICE[k] for k, t in front.trips]
    return Run(*window(arrivals, answered, seconds), front.routed, front.answers, beyond)


async def rounds(seconds: float, n: int, load: float) -> dict[str, list[Run]]:
    arrivals = arrival_times(load * IDEAL, seconds)
    runs: dict[str, list[Run]] = {name: [] for name in POLICIES}
    for i in range(n):
        for name in list(POLICIES)[:: 1 if i % 2 == 0 else -1]:
            run = await run_once(POLICIES[name](), arrivals, seconds)
            runs[name].append(run)
            rate = run.completed / (seconds - WARMUP) / IDEAL
            print(f"bench.routing: round {i + 1} {name}: {rate:.3f} of ideal", file=sys.stderr)
    return runs


def percentile_ms(latencies: list[tuple[float, bool]], q: float) -> str:
    """The q-quantile, ms; '>=' when a request cut off (its age, a lower bound) ranks at or
    below it."""
    ordered = sorted(latencies)
    k = min(len(ordered) - 1, round(q * (len(ordered) - 1)))
    bound = any(cut for _, cut in ordered[: k + 1])
    return f"{'>= ' if bound else ''}{ordered[k][0] * 1000:.0f}"


def completed_rates(runs: list[Run], span: float) -> list[float]:
    return [r.completed / span / IDEAL for r in runs]


def row(name: str, runs: list[Run], span: float) -> str:
    offered = statistics.mean(r.offered / span / IDEAL for r in runs)
    rates = completed_rates(runs, span)
    latencies = [x for r in runs for x in r.latencies]
    cut = sum(c for _, c in latencies)
    per_replica = [
        f"{statistics.mean(r.routed[k] for r in runs):.0f} "
        f"({statistics.mean(r.answers[k] for r in runs):.0f})"
        for k in range(len(SERVICE))
    ]
    return (
        f"| {name} | {offered:.3f} | **{statistics.mean(rates):.3f}** "
        f"({', '.join(f'{x:.3f}' for x in rates)}) | {percentile_ms(latencies, 0.5)} | "
        f"{percentile_ms(latencies, 0.99)} | {cut} of {len(latencies)} | "
        f"{' | '.join(per_replica)} |"
    )


def figures(runs: dict[str, list[Run]], seconds: float, load: float) -> list[str]:
    span = seconds - WARMUP
    n = len(runs["least-busy"])
    best = statistics.mean(completed_rates(runs["least-busy"], span))
    verdict = "met" if best >= TARGET else "**not met**"
    stubs = [f"{s * 1000:.0f} ms" for s in SERVICE]
    rr_bound = len(SERVICE) / max(SERVICE) / IDEAL
    return [
        f"**Routing between replicas (simulation)** (four in-process stub replicas, one slot "
        f"each, {', '.join(stubs)} per request; admission bounded to the 4 slots, "
        f"FIFO beyond; open-loop Poisson arrivals at {load:.2f} of the ideal {IDEAL:.2f} "
        f"req/s, {seconds:.0f} s, the same arrival times for every run; rounds per policy: "
        f"{n}, alternating. Per replica, by its service time: requests routed to it per "
        "round, answered in parentheses)",
        "",
        "| policy | offered, of ideal | answered, of ideal (rounds) | latency p50, ms | p99, ms "
        f"| cut off unanswered | {' | '.join(stubs)} |",
        "|---|---|---|---|---|---|" + "---|" * len(SERVICE),
        *(row(name, each, span) for name, each in runs.items()),
        "",
        f"Target: least-busy answers >= {TARGET} of the ideal: {verdict} ({best:.3f}).",
        "",
        *round_trip(runs["least-busy"]),
        "",
        "The ideal is every slot always busy: the sum of 1 / service time. Answered: the "
        f"answers received from {WARMUP:.0f} s (the warm-up) to the end of the arrivals, per "
        "second of that span, so the backlog left at the end is not counted as throughput "
        "(answered below offered: the front carries no more, see the ceiling above); "
        f"the backlog then gets {DRAIN:.0f} s more and is cut off. Latency is from a request's "
        "arrival (admission queue included) to its answer, over the requests arriving in the "
        "same span; one cut off counts as its age then, and a percentile that reaches one "
        "reads >= (a lower bound). Round-robin sends every fourth request to the 160 ms "
        "replica, whose queue then holds the admission's slots: the front runs at four times "
        f"the slowest replica's rate, {rr_bound:.3f} of the ideal, the expected contrast. The "
        "stubs, the front and the load share one event loop on a shared, busy machine, so "
        "absolute times mean little; the ratios between the policies, measured side by side "
        "on the same arrivals, do.",
    ]


def round_trip(runs: list[Run]) -> list[str]:
    """What the front's round trip costs: least-busy never queues at a stub, so a request's
    time from sending to its answer less the service time is the front <-> replica trip (HTTP
    both ways, the event loop's lag), during which the slot is idle and counted in flight."""
    extra = statistics.median(x for r in runs for x in r.beyond_service)
    ceiling = sum(1 / (s + extra) for s in SERVICE) / IDEAL
    return [
        f"Least-busy's round trip beyond the service time, median: {extra * 1000:.1f} ms. "
        "Admission bounded to exactly the slots leaves each slot idle for that trip between "
        f"two requests: with it, the ceiling is {ceiling:.3f} of the ideal "
        "(sum of 1 / (service time + trip))."
    ]


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.routing", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="arrivals per run, s")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each policy")
    parser.add_argument("--load", type=float, default=0.95, help="offered rate, of the ideal")
    args = parser.parse_args()
    if args.seconds <= WARMUP or args.rounds < 1:
        parser.error(f"--seconds must exceed the {WARMUP:.0f} s warm-up; --rounds >= 1")
    return args


def main() -> int:
    args = parse()
    machine = Machine()
    decided = decision.lines(anyio.run(decision.measure))
    runs = anyio.run(rounds, args.seconds, args.rounds, args.load)
    lines = [*figures(runs, args.seconds, args.load), "", *decided, "", machine.line()]
    write_section("routing", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
