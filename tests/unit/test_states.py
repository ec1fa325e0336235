from __future__ import annotations

import itertools
import random

import pytest

from supervisor.backoff import backoff_delay, within_budget
from supervisor.states import TRANSITIONS, InvalidTransition, State, check_transition

S = State
ALLOWED = {
    (S.STOPPED, S.STARTING), (S.STOPPED, S.FAILED),
    (S.STARTING, S.READY), (S.STARTING, S.BACKOFF), (S.STARTING, S.FAILED),
    (S.STARTING, S.STOPPING),
    (S.READY, S.UNHEALTHY), (S.READY, S.BACKOFF), (S.READY, S.FAILED), (S.READY, S.STOPPING),
    (S.UNHEALTHY, S.BACKOFF), (S.UNHEALTHY, S.FAILED), (S.UNHEALTHY, S.STOPPING),
    (S.BACKOFF, S.STARTING), (S.BACKOFF, S.FAILED), (S.BACKOFF, S.STOPPED),
    (S.STOPPING, S.STOPPED),
    (S.FAILED, S.STARTING), (S.FAILED, S.STOPPED),
}  # fmt: skip


@pytest.mark.parametrize(("old", "new"), sorted(itertools.product(State, State)))
def test_check_transition_allows_exactly_the_table(old: State, new: State) -> None:
    if (old, new) in ALLOWED:
        check_transition(old, new)
    else:
        with pytest.raises(InvalidTransition, match=f"{old} -> {new}"):
            check_transition(old, new)


def test_transition_table_covers_every_state() -> None:
    assert set(TRANSITIONS) == set(State)


def test_backoff_delay_doubles_without_jitter_and_caps() -> None:
    delays = [backoff_delay(n, initial=0.5, maximum=5, jitter=0) for n in range(1, 8)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_backoff_delay_jitter_stays_within_its_spread() -> None:
    rand = random.Random(7)
    for n in range(1, 6):
        step = 0.5 * 2 ** (n - 1)
        delay = backoff_delay(n, initial=0.5, maximum=100, jitter=0.25, rand=rand)
        assert step <= delay <= step * 1.25


def test_within_budget_counts_only_the_window() -> None:
    assert within_budget([], now=100, limit=2, window=60)
    assert within_budget([10, 50], now=100, limit=2, window=60)  # 10 is outside the window
    assert not within_budget([50, 90], now=100, limit=2, window=60)
