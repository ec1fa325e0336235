"""Stop strings over text as it is generated (cli mode; llama-server does its own).

`StopWatch.feed` takes each piece as it arrives and returns what may be sent now: never any
part of a stop string, even one split across pieces. Text that could still be the start of
one is held back, and released as soon as it cannot be. A `trailer` the process writes
after the text when it exits is held back too, and left off at the end.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopWatch:
    def __init__(self, stops: Sequence[str], trailer: str = "") -> None:
        self.stops = [s for s in stops if s]
        self.trailer = trailer
        self.held = ""
        self.stopped = False
        self.hit: str | None = None  # the stop string met

    def feed(self, text: str) -> str:
        """What of `text` (after what was held) can be sent; sets `stopped` at a stop."""
        if self.stopped:
            return ""
        buffer = self.held + text
        hits = [(i, stop) for stop in self.stops if (i := buffer.find(stop)) >= 0]
        if hits:
            at, self.hit = min(hits)
            self.stopped = True
            self.held = ""
            return buffer[:at]
        keep = max((_start_at_end(buffer, stop, len(stop) - 1) for stop in self.stops), default=0)
        keep = max(keep, _start_at_end(buffer, self.trailer, len(self.trailer)))
        self.held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """At the end of the text: what was held back was not a stop after all (but for
        the trailer)."""
        text, self.held = self.held, ""
        return "" if self.stopped else text.removesuffix(self.trailer)


def _start_at_end(buffer: str, text: str, longest: int) -> int:
    """The length of the longest end of `buffer`, up to `longest`, that begins `text`."""
    for k in range(min(longest, len(buffer)), 0, -1):
        if buffer.endswith(text[:k]):
            return k
    return 0
