"""Admission control: a bounded number in flight, a bounded queue behind it. In server mode
each model has its lane (`max_concurrency` per running instance, a queue per model); in cli
mode one lane bounds the processes of every model.

llama-server's own queue is unbounded; ours is not. Beyond the queue a request is refused
at once (429); one that waits longer than the queue timeout gives up (503). Both carry
Retry-After."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager

import anyio

from gateway.config import Limits
from gateway.errors import BackendUnavailable, Overloaded


class Lane:
    def __init__(self, concurrency: int, max_queue: int, queue_timeout: float) -> None:
        self.concurrency = concurrency
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self._slots = anyio.Semaphore(concurrency)
        self.waiting = 0

    @property
    def in_flight(self) -> int:
        return self.concurrency - self._slots.value

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._slots.value > 0:  # a free slot (nobody waits then): no queue, no timer
            self._slots.acquire_nowait()
        else:
            await self._queue()
        try:
            yield
        finally:
            self._slots.release()

    async def _queue(self) -> None:
        if self.waiting >= self.max_queue:
            raise Overloaded(
                f"{self.in_flight} requests in flight and {self.waiting} queued; try again",
                retry_after=2,
            )
        self.waiting += 1
        try:
            with anyio.fail_after(self.queue_timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise BackendUnavailable(
                f"waited {self.queue_timeout:.0f} s in the queue", retry_after=5
            ) from None
        finally:
            self.waiting -= 1


class Admission:
    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self.cli = Lane(limits.cli_concurrency, limits.max_queue, limits.queue_timeout_s)
        self.models: dict[str, Lane] = {}  # server mode, by model name

    def lane(self, backend: str, model: str) -> Lane:
        if backend == "cli":
            return self.cli
        if (lane := self.models.get(model)) is None:
            limits = self._limits
            lane = Lane(limits.max_concurrency, limits.max_queue, limits.queue_timeout_s)
            self.models[model] = lane
        return lane

    def queued(self, model: str) -> int:
        """Server-mode requests of `model` waiting for a slot (the pool's anti-thrash)."""
        lane = self.models.get(model)
        return lane.waiting if lane else 0


async def admitted(lane: Lane, events: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
    """`events` holding a slot of `lane` from before the first event to the last."""
    async with lane.slot():
        async for event in events:
            yield event
