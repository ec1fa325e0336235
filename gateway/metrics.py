"""Prometheus metrics, in a registry of the app's own (nothing global).

Counted as requests happen: requests by route/method/status/backend, latency, rejections,
tokens generated and generation speed. Read at scrape time from their owners: in-flight
and queued per backend (admission), each llama-server's state and restarts (supervisor)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.admission import Admission
from supervisor.actor import Supervisor
from supervisor.states import State


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ai_server_requests", "HTTP requests", ["route", "method", "status", "backend"],
            registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "ai_server_request_duration_seconds", "Time to the end of the response",
            ["route", "backend"], registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )  # fmt: skip
        self.rejected = Counter(
            "ai_server_rejected", "Requests answered 429 or 503", ["status"], registry=r
        )
        self.tokens = Counter(
            "ai_server_tokens_generated", "Completion tokens generated", ["backend"], registry=r
        )
        self.tokens_per_second = Histogram(
            "ai_server_generation_tokens_per_second", "Generation speed reported by llama.cpp",
            ["backend"], registry=r, buckets=(1, 2, 5, 10, 20, 30, 45, 60, 80, 120, 200, 400),
        )  # fmt: skip

    def record_generation(self, backend: str, tokens: int, per_second: float | None) -> None:
        self.tokens.labels(backend).inc(tokens)
        if per_second:
            self.tokens_per_second.labels(backend).observe(per_second)

    def watch(self, supervisor: Supervisor, admission: Admission) -> Callable[[], None]:
        """Expose live state read at scrape time; returns the function that stops it."""
        collector = _Live(supervisor, admission)
        self.registry.register(collector)
        return lambda: self.registry.unregister(collector)


class _Live(Collector):
    def __init__(self, supervisor: Supervisor, admission: Admission) -> None:
        self.supervisor = supervisor
        self.admission = admission

    def collect(self) -> Iterator[Metric]:
        in_flight = GaugeMetricFamily(
            "ai_server_in_flight", "Requests being served", labels=["backend"]
        )
        queued = GaugeMetricFamily("ai_server_queued", "Requests waiting", labels=["backend"])
        for name, lane in self.admission.lanes.items():
            in_flight.add_metric([name], lane.in_flight)
            queued.add_metric([name], lane.waiting)
        state = GaugeMetricFamily(
            "ai_server_llama_server_state", "1 for the state each llama-server is in",
            labels=["port", "model", "state"],
        )  # fmt: skip
        restarts = GaugeMetricFamily(
            "ai_server_llama_server_restarts", "Restarts after failures", labels=["port", "model"]
        )
        for process in self.supervisor.snapshot():
            labels = [str(process.port), process.model]
            for candidate in State:
                state.add_metric([*labels, candidate], float(process.state is candidate))
            restarts.add_metric(labels, process.restarts)
        yield from (in_flight, queued, state, restarts)
