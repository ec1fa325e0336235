"""Admission control: a bounded number in flight, a bounded queue behind it. In server mode
each model has its lane (the slots of its available instances: `max_concurrency` per local
one, what a remote one reports; a queue per model); in cli mode one lane bounds the
processes of every model.

llama-server's own queue is unbounded; ours is not. Beyond the queue a request is refused
at once (429); one that waits longer than the queue timeout gives up (503). Both carry
Retry-After."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio

from gateway.config import Limits
from gateway.errors import BackendUnavailable, Overloaded


class Lane:
    """Slots and a first-come-first-served queue. The number of slots may change while
    requests wait: a model's lane has the slots of its available instances (a remote that
    cools down takes its slots away; one that comes back adds them), read from `capacity`
    at every admission and release, and after `poke()`."""

    def __init__(
        self, capacity: int | Callable[[], int], max_queue: int, queue_timeout: float
    ) -> None:
        self._capacity = capacity if callable(capacity) else (lambda: capacity)
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.in_flight = 0
        self._queue: deque[_Waiter] = deque()

    @property
    def concurrency(self) -> int:
        # At least one: with every instance down, a request goes through to hear why (503).
        return max(self._capacity(), 1)

    @property
    def waiting(self) -> int:
        return len(self._queue)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if not self._queue and self.in_flight < self.concurrency:  # no queue, no timer
            self.in_flight += 1
        else:
            await self._wait()
        try:
            yield
        finally:
            self.in_flight -= 1
            self.poke()

    def poke(self) -> None:
        """Hand free slots to the waiters, first come first served."""
        while self._queue and self.in_flight < self.concurrency:
            waiter = self._queue.popleft()
            self.in_flight += 1
            waiter.granted = True
            waiter.event.set()

    async def _wait(self) -> None:
        if len(self._queue) >= self.max_queue:
            raise Overloaded(
                f"{self.in_flight} requests in flight and {self.waiting} queued; try again",
                retry_after=2,
            )
        waiter = _Waiter()
        self._queue.append(waiter)
        try:
            with anyio.fail_after(self.queue_timeout):
                await waiter.event.wait()
        except BaseException as exc:
            if waiter.granted:  # handed a slot just as it gave up: pass the slot on
                self.in_flight -= 1
                self.poke()
            else:
                self._queue.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise BackendUnavailable(
                    f"waited {self.queue_timeout:.0f} s in the queue", retry_after=5
                ) from None
            raise


class _Waiter:
    __slots__ = ("event", "granted")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.granted = False


class Admission:
    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        # A model's slots: set by the router (the slots of its available instances).
        self.capacity_of: Callable[[str], int] | None = None
        self.cli = Lane(limits.cli_concurrency, limits.max_queue, limits.queue_timeout_s)
        self.models: dict[str, Lane] = {}  # server mode, by model name

    def lane(self, backend: str, model: str) -> Lane:
        if backend == "cli":
            return self.cli
        if (lane := self.models.get(model)) is None:
            limits = self._limits
            capacity_of = self.capacity_of
            capacity: int | Callable[[], int] = limits.max_concurrency
            if capacity_of is not None:
                capacity = lambda: capacity_of(model)  # noqa: E731
            lane = Lane(capacity, limits.max_queue, limits.queue_timeout_s)
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
