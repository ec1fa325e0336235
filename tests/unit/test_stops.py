"""Stop strings over streamed text: nothing of a stop is ever sent, a split one included,
and held text is released as soon as it cannot be a stop."""

from __future__ import annotations

import pytest

from backends.stops import StopWatch


def run(stops: list[str], pieces: list[str]) -> tuple[list[str], bool]:
    watch = StopWatch(stops)
    sent = [watch.feed(piece) for piece in pieces]
    if not watch.stopped:
        sent.append(watch.flush())
    return sent, watch.stopped


@pytest.mark.parametrize(
    ("stops", "pieces", "sent", "stopped"),
    [
        (["END"], ["Hello ", "world"], ["Hello ", "world", ""], False),
        (["END"], ["Hello END more"], ["Hello "], True),
        (["END"], ["Hello E", "N", "D!"], ["Hello ", "", ""], True),  # split over three
        (["END"], ["Hello E", "X"], ["Hello ", "EX", ""], False),  # released once it cannot be
        (["END"], ["abc EN"], ["abc ", "EN"], False),  # held to the end, then flushed
        (["\n\n", "###"], ["one\n", "two\n", "\nthree"], ["one", "\ntwo", ""], True),
        (["ab", "b"], ["xab"], ["x"], True),  # the earliest stop wins
        ([], ["anything"], ["anything", ""], False),
    ],
)
def test_stop_watch(stops: list[str], pieces: list[str], sent: list[str], stopped: bool) -> None:
    assert run(stops, pieces) == (sent, stopped)


def test_after_a_stop_nothing_more_is_sent() -> None:
    watch = StopWatch(["x"])
    assert watch.feed("ax") == "a"
    assert watch.feed("more") == "" and watch.flush() == ""
