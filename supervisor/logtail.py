"""A bounded ring buffer of a child's last output lines, for errors and `/ready`."""

from __future__ import annotations

import time
from collections import deque


class LogTail:
    def __init__(self, max_lines: int = 50) -> None:
        self._lines: deque[str] = deque(maxlen=max_lines)
        self._partial = ""
        # When the child last said anything: a load deadline extends while it keeps talking.
        self.last_output = time.monotonic()

    def feed(self, text: str) -> None:
        self.last_output = time.monotonic()
        *complete, self._partial = (self._partial + text).split("\n")
        self._lines.extend(line.rstrip("\r") for line in complete)

    def lines(self) -> list[str]:
        return [*self._lines, self._partial] if self._partial else list(self._lines)

    def text(self, last: int = 20) -> str:
        return "\n".join(self.lines()[-last:])
