"""The last hour of the gateway's own metrics, for the dashboard's charts.

Every `interval` seconds the sampler reads the app's Prometheus registry (the numbers
/metrics shows, nothing counted twice) and keeps what changed since the last reading in a
bounded ring: requests, errors (5xx), latency percentiles and llama-server restarts."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec
from prometheus_client import CollectorRegistry
from prometheus_client.samples import Sample
from starlette.applications import Starlette

from gateway.lifespan import Lifespan

INTERVAL_S = 10.0
KEEP = 360  # an hour of 10 s samples
QUANTILES = (0.5, 0.95, 0.99)


class Totals(msgspec.Struct, frozen=True):
    """Counters as read at one moment (cumulative since the gateway started)."""

    requests: float
    errors: float
    restarts: float
    buckets: tuple[tuple[float, float], ...]  # (upper bound, cumulative count), by bound


class Point(msgspec.Struct, frozen=True, kw_only=True):
    """What happened in one interval, ending at `t` (Unix seconds)."""

    t: float
    requests: int
    errors: int
    restarts: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


def read_totals(samples: Iterable[Sample]) -> Totals:
    """Sum over every label set; latency only of known routes (a long-lived log stream or a
    page is not an API request's latency)."""
    requests = errors = restarts = 0.0
    buckets: dict[float, float] = {}
    for s in samples:
        if s.name == "ai_server_requests_total":
            requests += s.value
            errors += s.value if s.labels.get("status", "").startswith("5") else 0
        elif s.name == "ai_server_llama_server_restarts_total":
            restarts += s.value
        elif s.name == "ai_server_request_duration_seconds_bucket":
            if s.labels.get("route") != "other":
                bound = float(s.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + s.value
    return Totals(requests, errors, restarts, tuple(sorted(buckets.items())))


def quantile(q: float, buckets: tuple[tuple[float, float], ...]) -> float | None:
    """Prometheus' histogram_quantile: linear within the bucket that holds rank q; None
    without observations; the highest finite bound when it falls in the +Inf bucket."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower


def difference(before: Totals, after: Totals, t: float) -> Point:
    """The interval between two readings. A counter that went down (a record was replaced)
    counts as zero, never negative."""
    old = dict(before.buckets)
    buckets = tuple((b, max(c - old.get(b, 0.0), 0.0)) for b, c in after.buckets)

    def ms(q: float) -> float | None:
        value = quantile(q, buckets)
        return None if value is None else round(value * 1000, 1)

    return Point(
        t=round(t, 3),
        requests=int(max(after.requests - before.requests, 0)),
        errors=int(max(after.errors - before.errors, 0)),
        restarts=int(max(after.restarts - before.restarts, 0)),
        p50_ms=ms(0.5),
        p95_ms=ms(0.95),
        p99_ms=ms(0.99),
    )


def _samples(registry: CollectorRegistry) -> Iterable[Sample]:
    for metric in registry.collect():
        yield from metric.samples


class History:
    """A ring of `Point`s, filled by `run` (one task in the lifespan's task group)."""

    def __init__(
        self, registry: CollectorRegistry, interval: float = INTERVAL_S, keep: int = KEEP
    ) -> None:
        self.registry = registry
        self.interval = interval
        self.points: deque[Point] = deque(maxlen=keep)
        self._last: Totals | None = None

    def sample(self, now: float) -> None:
        totals = read_totals(_samples(self.registry))
        if self._last is not None:
            self.points.append(difference(self._last, totals, now))
        self._last = totals

    async def run(self) -> None:
        while True:
            self.sample(time.time())
            await anyio.sleep(self.interval)

    def view(self) -> dict[str, Any]:
        return {"interval_s": self.interval, "points": msgspec.to_builtins(list(self.points))}


def with_history(lifespan: Lifespan, history: History) -> Lifespan:
    """`lifespan` plus the sampler, which also puts `history` in each request's state."""

    @asynccontextmanager
    async def wrapped(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with lifespan(app) as state, anyio.create_task_group() as tg:
            tg.start_soon(history.run)
            yield {**state, "history": history}
            tg.cancel_scope.cancel()

    return wrapped
