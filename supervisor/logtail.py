"""A bounded ring buffer of a child's last output lines, for errors, `/ready` and the live
log view (`/api/logs/{name}`), which follows it by line number."""

from __future__ import annotations

import time
from collections import deque

import anyio


class LogTail:
    def __init__(self, max_lines: int = 50, also: LogTail | None = None) -> None:
        self._lines: deque[str] = deque(maxlen=max_lines)
        self._partial = ""
        self._also = also  # an instance's log that outlives each of its processes
        self._grew: anyio.Event | None = None  # made only when someone waits
        # How many complete lines were ever fed: a follower's position.
        self.count = 0
        # When the child last said anything: a load deadline extends while it keeps talking.
        self.last_output = time.monotonic()

    def feed(self, text: str) -> None:
        self.last_output = time.monotonic()
        *complete, self._partial = (self._partial + text).split("\n")
        self._lines.extend(line.rstrip("\r") for line in complete)
        self.count += len(complete)
        if self._also is not None:
            self._also.feed(text)
        if complete and self._grew is not None:
            self._grew.set()
            self._grew = None

    def lines(self) -> list[str]:
        return [*self._lines, self._partial] if self._partial else list(self._lines)

    def text(self, last: int = 20) -> str:
        return "\n".join(self.lines()[-last:])

    def since(self, position: int) -> list[str]:
        """The complete lines after line number `position` that are still held."""
        missed = self.count - position
        return list(self._lines)[-missed:] if missed > 0 else []

    async def wait_past(self, position: int) -> None:
        """Return once there are complete lines after `position`."""
        while self.count <= position:
            if self._grew is None:
                self._grew = anyio.Event()
            await self._grew.wait()
