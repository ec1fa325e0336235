"""Restart pacing as pure functions: exponential backoff with jitter, and a restart budget."""

from __future__ import annotations

import random
from collections.abc import Sequence


def backoff_delay(
    attempt: int,
    *,
    initial: float = 0.5,
    base: float = 2.0,
    maximum: float = 30.0,
    jitter: float = 0.25,
    rand: random.Random | None = None,
    sample: float | None = None,
) -> float:
    """Delay before restart number `attempt` (1-based): ``min(max, initial * base**(n-1) + j)``
    with ``j`` uniform in ``[0, jitter * initial * base**(n-1)]``, so restarts of several
    processes don't fire in lockstep. `sample` (in [0, 1)) replaces the random draw, for a
    caller that must stay deterministic (`supervisor.decide`)."""
    step = initial * base ** (max(attempt, 1) - 1)
    draw = (rand or random).random() if sample is None else sample
    spread = draw * jitter * step
    return min(maximum, step + spread)


def within_budget(restarts: Sequence[float], now: float, *, limit: int, window: float) -> bool:
    """Whether one more restart fits: fewer than `limit` restarts in the last `window` s."""
    return sum(1 for t in restarts if now - t < window) < limit
