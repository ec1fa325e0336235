"""Prometheus metrics, in a registry of the app's own (nothing global).

Counted as requests happen: requests by route/method/status/backend, latency, rejections,
tokens generated and generation speed. Read at scrape time from their owners: in-flight
and queued per backend and model (admission); each model instance's state, restarts,
memory, loads, evictions and load time, and the pool's swaps and memory (supervisor); every
instance's requests, and each remote's state, slots and cooldown (supervisor, fleet)."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.admission import Admission
from supervisor.actor import Supervisor
from supervisor.remote import Fleet, RemoteState
from supervisor.states import State

# Clients by address (no keys): so many get a label of their own, the rest are "other".
ADDRESS_LABELS = 20


class Metrics:
    def __init__(self, key_names: frozenset[str] = frozenset()) -> None:
        self.key_names = key_names  # clients named by their key: every one gets its label
        self.client_label = ClientLabels(key_names)
        # Requests by client (as labelled) and dialect, for /api/clients and the dashboard.
        self.dialects: Tally[tuple[str, str]] = Tally()
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ai_server_requests", "HTTP requests",
            ["route", "method", "status", "backend", "dialect"], registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "ai_server_request_duration_seconds", "Time to the end of the response",
            ["route", "backend"], registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )  # fmt: skip
        self.rejected = Counter(
            "ai_server_rejected", "Requests answered 429 or 503", ["status"], registry=r
        )
        # Slow clients, counted by the HTTP protocol layer (gateway.protocol).
        self.deadlines_missed = Counter(
            "ai_server_deadlines_missed", "Requests closed for missing the header or body deadline",
            ["deadline"], registry=r,
        )  # fmt: skip
        self.connections_refused = Counter(
            "ai_server_connections_refused", "Connections refused over [limits] max_connections",
            registry=r,
        )  # fmt: skip
        self.tokens = Counter(
            "ai_server_tokens_generated", "Completion tokens generated", ["backend"], registry=r
        )
        self.tool_call_failures = Counter(
            "ai_server_tool_call_failures", "Answers meant as a tool call, sent as text",
            ["model"], registry=r,
        )  # fmt: skip
        self.tokens_per_second = Histogram(
            "ai_server_generation_tokens_per_second", "Generation speed reported by llama.cpp",
            ["backend"], registry=r, buckets=(1, 2, 5, 10, 20, 30, 45, 60, 80, 120, 200, 400),
        )  # fmt: skip

    def record_generation(
        self, backend: str, tokens: int | None, per_second: float | None = None
    ) -> None:
        if tokens:
            self.tokens.labels(backend).inc(tokens)
        if per_second:
            self.tokens_per_second.labels(backend).observe(per_second)

    def count_dialect(self, client: str, dialect: str) -> None:
        self.dialects[self.client_label(client), dialect] += 1

    def watch(
        self, supervisor: Supervisor, admission: Admission, fleet: Fleet
    ) -> Callable[[], None]:
        """Expose live state read at scrape time; returns the function that stops it."""
        collector = _Live(supervisor, admission, fleet, self.client_label)
        self.registry.register(collector)
        return lambda: self.registry.unregister(collector)


def dialect_of(path: str, listener: str) -> str:
    """The API a request spoke, by its path and the listener it came in on (the Ollama port
    serves `/api/...` in Ollama's dialect): "openai", "anthropic", "responses", "ollama", "api"
    (the gateway's own), or "-" for the dashboard, probes and /metrics."""
    if path.startswith("/v1/"):
        if path.startswith("/v1/messages"):
            return "anthropic"
        return "responses" if path.startswith("/v1/responses") else "openai"
    if listener == "ollama":
        return "ollama"
    return "api" if path.startswith("/api/") else "-"


class ClientLabels:
    """A client's label: its key's name, or its address. The first ADDRESS_LABELS addresses
    keep theirs for good (so counters stay monotonic); any later one is "other"."""

    def __init__(self, key_names: frozenset[str]) -> None:
        self.key_names = key_names
        self.addresses: set[str] = set()

    def __call__(self, client: str) -> str:
        if client in self.key_names or client in self.addresses:
            return client
        if len(self.addresses) < ADDRESS_LABELS:
            self.addresses.add(client)
            return client
        return "other"


class _Live(Collector):
    def __init__(
        self, supervisor: Supervisor, admission: Admission, fleet: Fleet, label: ClientLabels
    ) -> None:
        self.supervisor = supervisor
        self.admission = admission
        self.fleet = fleet
        self.label = label

    def collect(self) -> Iterator[Metric]:
        in_flight = GaugeMetricFamily(
            "ai_server_in_flight", "Requests being served", labels=["backend", "model"]
        )
        queued = GaugeMetricFamily(
            "ai_server_queued", "Requests waiting", labels=["backend", "model"]
        )
        for backend, model, lane in self.admission.lanes():
            in_flight.add_metric([backend, model], lane.in_flight)
            queued.add_metric([backend, model], lane.waiting)
        yield from (in_flight, queued)
        yield from self._clients()
        yield from _pool(self.supervisor)
        yield from _instances(self.supervisor, self.fleet)

    def _clients(self) -> Iterator[Metric]:
        """In flight, queued and refused (429 or queue timeout) by client, over all lanes."""
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "in_flight": GaugeMetricFamily(
                "ai_server_client_in_flight", "Requests in flight by client", labels=["client"]
            ),
            "queued": GaugeMetricFamily(
                "ai_server_client_queued", "Requests waiting by client", labels=["client"]
            ),
            "refused": CounterMetricFamily(
                "ai_server_client_refused", "Requests refused (429) or timed out in the queue",
                labels=["client"],
            ),
        }  # fmt: skip
        totals: dict[str, dict[str, int]] = {field: {} for field in families}
        for _, _, lane in self.admission.lanes():
            for field, counts in (
                ("in_flight", lane.held), ("queued", lane.queued()), ("refused", lane.refused)
            ):  # fmt: skip
                for client, n in counts.items():
                    label = self.label(client)
                    totals[field][label] = totals[field].get(label, 0) + n
        for field, family in families.items():
            for label, n in sorted(totals[field].items()):
                family.add_metric([label], n)
        yield from families.values()


def _instances(supervisor: Supervisor, fleet: Fleet) -> Iterator[Metric]:
    """Every instance, local ("local/N", N its replica) or remote (its URL): requests in
    flight and served; for remote ones their state, idle slots and cooldown."""
    labels = ["model", "instance"]
    in_flight = GaugeMetricFamily(
        "ai_server_instance_in_flight", "Requests in flight per instance", labels=labels
    )
    served = CounterMetricFamily(
        "ai_server_instance_served", "Requests sent to each instance", labels=labels
    )
    idle = GaugeMetricFamily(
        "ai_server_remote_idle_slots", "Idle slots of a remote instance (polled)", labels=labels
    )
    cooldown = GaugeMetricFamily(
        "ai_server_remote_cooldown_seconds", "Left of a remote's cooldown", labels=labels
    )
    state = GaugeMetricFamily(
        "ai_server_remote_state", "1 for the state each remote instance is in",
        labels=[*labels, "state"],
    )  # fmt: skip
    for process in supervisor.snapshot():
        key = [process.name, f"local/{process.replica}"]
        in_flight.add_metric(key, process.in_flight)
        served.add_metric(key, process.served)
    for model, remotes in fleet.remotes.items():
        for r in remotes:
            info = r.info()
            key = [model, info.url]
            in_flight.add_metric(key, info.in_flight)
            served.add_metric(key, info.served)
            idle.add_metric(key, info.idle)
            cooldown.add_metric(key, info.cooldown_s or 0)
            for candidate in RemoteState:
                state.add_metric([*key, candidate], float(info.state is candidate))
    yield from (in_flight, served, idle, cooldown, state)


def _pool(supervisor: Supervisor) -> Iterator[Metric]:
    """Every model instance: state, memory, loads, evictions, load time; and swaps."""
    state = GaugeMetricFamily(
        "ai_server_llama_server_state", "1 for the state each llama-server is in",
        labels=["port", "model", "state"],
    )  # fmt: skip
    families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
        "restarts": CounterMetricFamily(
            "ai_server_llama_server_restarts", "Restarts after failures", labels=["port", "model"]
        ),
        "memory_mb": GaugeMetricFamily(
            "ai_server_model_memory_mb", "Memory held: measured RSS once loaded, else the estimate",
            labels=["port", "model"],
        ),
        "loads": CounterMetricFamily(
            "ai_server_model_loads", "Loads that reached READY", labels=["port", "model"]
        ),
        "evictions": CounterMetricFamily(
            "ai_server_model_evictions", "Unloads to make room for another model",
            labels=["port", "model"],
        ),
        "load_seconds": GaugeMetricFamily(
            "ai_server_model_load_seconds", "The last load, from spawn to READY",
            labels=["port", "model"],
        ),
    }  # fmt: skip
    for process in supervisor.snapshot():
        labels = [str(process.port), process.name or process.model]
        for candidate in State:
            state.add_metric([*labels, candidate], float(process.state is candidate))
        for field, family in families.items():
            value = getattr(process, field)
            if value is not None:
                family.add_metric(labels, value)
    swaps = CounterMetricFamily("ai_server_model_swaps", "Loads that had to evict a model")
    swaps.add_metric([], supervisor.swaps)
    budget = GaugeMetricFamily("ai_server_memory_used_mb", "Memory the model pool holds")
    budget.add_metric([], supervisor.memory_used_mb())
    limit = GaugeMetricFamily("ai_server_memory_budget_mb", "The pool's memory budget")
    limit.add_metric([], supervisor.config.memory_budget_mb)
    yield from (state, *families.values(), swaps, budget, limit)
