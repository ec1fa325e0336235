"""Which instance of a model serves a request: a pure choice over a snapshot of the
instances, so it is tested as a table and benchmarked in simulation (bench/routing.py).

An instance is a local llama-server (a replica, or one whose layers live on RPC workers) or
a remote one on another host. The gateway's admission lane of the model already bounds the
requests in flight to the slots of its available instances; the choice spreads them:

1. only available instances: READY (or loadable on demand), not cooling down, not down;
2. a loaded instance with an idle slot before anything else: one that must load first is
   chosen only when every loaded one is busy;
3. the most idle slots (as last polled, corrected by our own requests since), then the
   fewest requests in flight, then the highest weight; the first listed wins a full tie.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec


class Candidate(msgspec.Struct, frozen=True, kw_only=True):
    key: str  # "local/0", "http://host:port": the instance in logs and metrics
    available: bool = True
    loaded: bool = True  # answers now; False: a local instance that loads on this request
    slots: int = 1  # its parallel slots
    idle: int = 1  # of those, free now (an estimate for a remote one)
    in_flight: int = 0  # our requests on it now
    weight: int = 1


def _rank(c: Candidate) -> tuple[bool, int, int, int]:
    return (c.loaded and c.idle > 0, c.idle, -c.in_flight, c.weight)


def least_busy(
    candidates: Sequence[Candidate], exclude: frozenset[str] = frozenset()
) -> int | None:
    """The index of the instance to use, or None when none is available."""
    best: int | None = None
    for i, c in enumerate(candidates):
        if not c.available or c.key in exclude:
            continue
        if best is None or _rank(c) > _rank(candidates[best]):
            best = i
    return best


def capacity(candidates: Sequence[Candidate]) -> int:
    """How many requests the available instances take at once: their slots."""
    return sum(c.slots for c in candidates if c.available)


class RoundRobin:
    """The naive policy, for the benchmark's side-by-side: the next available instance in
    turn, busy or not."""

    def __init__(self) -> None:
        self._next = 0

    def __call__(
        self, candidates: Sequence[Candidate], exclude: frozenset[str] = frozenset()
    ) -> int | None:
        n = len(candidates)
        for step in range(n):
            i = (self._next + step) % n
            if candidates[i].available and candidates[i].key not in exclude:
                self._next = i + 1
                return i
        return None
