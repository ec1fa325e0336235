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


@pytest.mark.parametrize(
    ("pieces", "text"),
    [
        (["1, 2", ",\n", "\n"], "1, 2,"),  # cut at the length: the trailer is not text
        (["a\n\n", "\n\n"], "a\n\n"),  # the model's own blank line stays
        (["a [end of text]\n", "\n\n"], "a"),  # ended by the model: a stop
        (["a\n"], "a\n"),  # no trailer: nothing left off
        (["\n"], "\n"),  # shorter than the trailer
    ],
)
def test_a_trailer_is_held_back_and_left_off_at_the_end(pieces: list[str], text: str) -> None:
    """llama-completion writes "\n\n" after the text whenever it exits."""
    watch = StopWatch([" [end of text]"], trailer="\n\n")
    sent = [watch.feed(piece) for piece in pieces]
    assert "".join(sent) + watch.flush() == text
