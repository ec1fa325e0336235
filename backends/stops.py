"""Stop strings over text as it is generated (cli mode; llama-server does its own).

`StopWatch.feed` takes each piece as it arrives and returns what may be sent now: never any
part of a stop string, even one split across pieces. Text that could still be the start of
one is held back, and released as soon as it cannot be.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopWatch:
    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.held = ""
        self.stopped = False
        self.hit: str | None = None  # the stop string met

    def feed(self, text: str) -> str:
        """What of `text` (after what was held) can be sent; sets `stopped` at a stop."""
        if not self.stops or self.stopped:
            return "" if self.stopped else text
        buffer = self.held + text
        hits = [(i, stop) for stop in self.stops if (i := buffer.find(stop)) >= 0]
        if hits:
            at, self.hit = min(hits)
            self.stopped = True
            self.held = ""
            return buffer[:at]
        keep = max((self._prefix_at_end(buffer, stop) for stop in self.stops), default=0)
        self.held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """At the end of the text: what was held back was not a stop after all."""
        text, self.held = self.held, ""
        return "" if self.stopped else text

    @staticmethod
    def _prefix_at_end(buffer: str, stop: str) -> int:
        """The length of the longest end of `buffer` that begins `stop`."""
        for k in range(min(len(stop) - 1, len(buffer)), 0, -1):
            if buffer.endswith(stop[:k]):
                return k
        return 0
