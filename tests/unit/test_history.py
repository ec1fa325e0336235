"""The metrics history: readings of the registry, percentiles and intervals, pure."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.samples import Sample

from gateway.history import History, Totals, difference, quantile, read_totals

INF = math.inf


def sample(name: str, value: float, **labels: str) -> Sample:
    return Sample(name, labels, value)


def test_read_totals_sums_every_label_set_and_counts_5xx_as_errors() -> None:
    totals = read_totals(
        [
            sample("ai_server_requests_total", 3, route="/api/chat", status="200"),
            sample("ai_server_requests_total", 2, route="/api/chat", status="503"),
            sample("ai_server_requests_total", 1, route="other", status="404"),
            sample("ai_server_llama_server_restarts_total", 2, model="a"),
            sample("ai_server_llama_server_restarts_total", 1, model="b"),
            sample("ai_server_request_duration_seconds_bucket", 1, route="/api/chat", le="0.1"),
            sample("ai_server_request_duration_seconds_bucket", 4, route="/api/chat", le="+Inf"),
            sample("ai_server_request_duration_seconds_bucket", 9, route="other", le="+Inf"),
        ]
    )
    assert totals == Totals(6, 2, 3, ((0.1, 1), (INF, 4)))


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.5, ((0.1, 0), (0.2, 10), (INF, 10)), 0.15),
        (0.99, ((0.1, 5), (0.2, 5), (INF, 10)), 0.2),  # in +Inf: the highest finite bound
        (0.5, ((0.1, 0), (INF, 0)), None),  # nothing observed
        (0.5, (), None),
    ],
)
def test_quantile_interpolates_like_prometheus(
    q: float, buckets: tuple[tuple[float, float], ...], expected: float | None
) -> None:
    assert quantile(q, buckets) == pytest.approx(expected)


def test_difference_is_the_interval_and_never_negative() -> None:
    before = Totals(10, 1, 5, ((0.1, 4), (1.0, 8), (INF, 8)))
    after = Totals(14, 2, 3, ((0.1, 4), (1.0, 12), (INF, 12)))
    point = difference(before, after, 100.0)
    assert (point.requests, point.errors, point.restarts) == (4, 1, 0)
    assert point.p50_ms == pytest.approx(550.0)


def test_history_keeps_a_bounded_ring_of_intervals() -> None:
    registry = CollectorRegistry()
    requests = Counter("ai_server_requests", "HTTP requests", ["status"], registry=registry)
    history = History(registry, interval=10, keep=3)
    history.sample(0.0)
    assert history.view() == {"interval_s": 10, "points": []}
    for t in range(1, 6):
        requests.labels("500").inc()
        history.sample(float(t))
    points = history.view()["points"]
    assert [p["t"] for p in points] == [3.0, 4.0, 5.0]
    assert all(p["requests"] == 1 and p["errors"] == 1 for p in points)
