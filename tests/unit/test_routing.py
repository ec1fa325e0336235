"""The routing choice as a table: a snapshot of instances in, the one chosen out."""

from __future__ import annotations

import pytest

from backends.routing import Candidate, RoundRobin, capacity, least_busy


def c(key: str, **kw: object) -> Candidate:
    return Candidate(key=key, **kw)  # type: ignore[arg-type]


CASES = [
    ("the most idle slots wins", [c("a", slots=4, idle=1), c("b", slots=4, idle=3)], "b"),
    (
        "a tie on idle slots: fewest in flight",
        [c("a", slots=4, idle=2, in_flight=2), c("b", slots=8, idle=2, in_flight=1)],
        "b",
    ),
    ("then the weight", [c("a", weight=1), c("b", weight=3)], "b"),
    ("a full tie: the first listed", [c("a"), c("b")], "a"),
    ("an unavailable one never", [c("a", available=False, idle=4), c("b", idle=0)], "b"),
    (
        "loaded with an idle slot before one that must load first",
        [c("a", loaded=False, slots=4, idle=4), c("b", slots=4, idle=1)],
        "b",
    ),
    (
        "every loaded one busy: load another",
        [c("a", slots=4, idle=0, in_flight=4), c("b", loaded=False, slots=4, idle=4)],
        "b",
    ),
    ("none available", [c("a", available=False), c("b", available=False)], None),
    ("nothing at all", [], None),
]


@pytest.mark.parametrize(("why", "candidates", "chosen"), CASES, ids=[w for w, _, _ in CASES])
def test_least_busy(why: str, candidates: list[Candidate], chosen: str | None) -> None:
    index = least_busy(candidates)
    assert (None if index is None else candidates[index].key) == chosen


def test_least_busy_skips_the_instances_already_tried() -> None:
    candidates = [c("a", idle=3), c("b", idle=1)]
    assert least_busy(candidates, frozenset({"a"})) == 1
    assert least_busy(candidates, frozenset({"a", "b"})) is None


def test_capacity_counts_the_slots_of_available_instances() -> None:
    assert capacity([c("a", slots=4), c("b", slots=2, available=False), c("c", slots=3)]) == 7


def test_round_robin_takes_turns_busy_or_not() -> None:
    rr = RoundRobin()
    candidates = [c("a", idle=0), c("b", available=False), c("c", idle=5)]
    assert [rr(candidates) for _ in range(4)] == [0, 2, 0, 2]
