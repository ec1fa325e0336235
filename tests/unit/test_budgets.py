"""Rate budgets: token buckets on a fake clock, the up-front charge and its settlement, and
OpenAI's header forms."""

from __future__ import annotations

import pytest

from core.errors import BadRequest
from gateway.budgets import Bucket, Budget, RateLimited, duration


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0, "0ms"), (0.2501, "251ms"), (1.0, "1s"), (12.2, "13s"), (60, "1m0s"), (90.5, "1m31s")],
)
def test_durations_read_as_openai_writes_them(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_a_bucket_refills_continuously_up_to_its_limit() -> None:
    clock = Clock()
    bucket = Bucket(60, clock)  # one a second
    bucket.take(60)
    assert bucket.level == 0 and bucket.wait_for(3) == 3
    clock.now += 1.5
    assert bucket.level == 1.5 and bucket.wait_for(1) == 0
    clock.now += 3600
    assert bucket.level == 60  # never above its limit
    assert bucket.headers("requests") == [
        ("x-ratelimit-limit-requests", "60"),
        ("x-ratelimit-remaining-requests", "60"),
        ("x-ratelimit-reset-requests", "0ms"),
    ]


def test_a_charge_takes_both_or_neither_and_says_how_long_to_wait() -> None:
    clock = Clock()
    budget = Budget(Bucket(10, clock), Bucket(600, clock))  # tokens: 10 a second
    budget.charge(500)
    with pytest.raises(RateLimited, match="tokens per minute are spent") as caught:
        budget.charge(200)  # 100 left: 100 more take 10 s
    assert caught.value.retry_after == pytest.approx(10)
    assert budget.requests is not None and budget.requests.level == 9  # nothing taken
    budget.settle(500, 20)  # it used 20: 480 back
    budget.charge(200)
    assert budget.tokens is not None and budget.tokens.level == pytest.approx(380)


def test_settling_above_the_charge_can_go_below_zero() -> None:
    clock = Clock()
    budget = Budget(None, Bucket(60, clock))
    budget.charge(50)
    budget.settle(50, 70)  # a long prompt: 70 in all
    assert budget.tokens is not None and budget.tokens.level == -10
    with pytest.raises(RateLimited) as caught:
        budget.charge(1)
    assert caught.value.retry_after == pytest.approx(11)


def test_requests_per_minute_alone() -> None:
    clock = Clock()
    budget = Budget(Bucket(2, clock), None)
    budget.charge(10_000)
    budget.charge(10_000)
    with pytest.raises(RateLimited, match="requests per minute"):
        budget.charge(0)
    clock.now += 30
    budget.charge(0)


def test_max_tokens_over_the_whole_budget_is_a_bad_request() -> None:
    budget = Budget(None, Bucket(100))
    with pytest.raises(BadRequest, match="max_tokens 101 is more than") as caught:
        budget.charge(101)
    assert caught.value.param == "max_tokens"
