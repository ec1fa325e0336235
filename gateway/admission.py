"""Admission control: a bounded number in flight, bounded queues behind it, shared fairly
between clients. In server mode each model has its lane (the slots of its available
instances: `max_concurrency` per local one, what a remote one reports; a queue per model);
in cli mode one lane bounds the processes of every model.

llama-server's own queue is unbounded; ours is not. A lane's waiting requests stand in one
line per client, and freed slots go round-robin between the clients waiting (`grant_order`),
so one client's flood never stands between another client and the next free slot. A client
may hold at most `per_client_concurrency` slots of a lane (0: any number) and queue at most
`per_client_queue` requests (0: no bound of its own); the lane holds at most `max_queue`.
When the lane's queue is full, a client with a shorter line than the longest takes the place
of that line's newest request (`crowded_out`), so several flooding clients together cannot
lock out one more. Beyond a queue a request is refused at once (429); one that waits longer
than the queue timeout gives up (503). Both carry Retry-After."""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import TypeVar

import anyio

from core.config import Limits
from core.errors import BackendUnavailable, Overloaded

T = TypeVar("T")

log = logging.getLogger(__name__)


def grant_order(
    order: Sequence[str],
    waiting: Mapping[str, int],
    in_flight: Mapping[str, int],
    free: int,
    cap: int,
) -> tuple[list[str], list[str]]:
    """Which waiting clients get `free` slots, in turn, and the rotation after.

    `order` is the rotation: clients with requests waiting (`waiting`), the next to serve
    first. A client served moves to the back; one whose line empties leaves; one holding
    `cap` slots (`in_flight`; 0: no cap) is passed over and keeps its place."""
    rotation = list(order)
    left = dict(waiting)
    held = dict(in_flight)
    granted: list[str] = []
    while free > 0:
        client = next((c for c in rotation if left[c] and (not cap or held.get(c, 0) < cap)), None)
        if client is None:
            break
        granted.append(client)
        free -= 1
        left[client] -= 1
        held[client] = held.get(client, 0) + 1
        rotation.remove(client)
        if left[client]:
            rotation.append(client)
    return granted, rotation


def crowded_out(lines: Mapping[str, int], newcomer: str) -> str | None:
    """When the queue is full: whose newest waiting request gives its place to `newcomer`'s.

    The client with the longest line (the first in the rotation on a tie), if that line is
    longer than the newcomer's would be with its request in; None if none is (the newcomer
    is refused). Lines never swap lengths, so two clients never push each other out in turn."""
    longest = max(lines, key=lines.__getitem__, default=None)
    if longest is None or lines[longest] <= lines.get(newcomer, 0) + 1:
        return None
    return longest


class Lane:
    """Slots, and one waiting line per client served round-robin. The number of slots may
    change while requests wait: a model's lane has the slots of its available instances (a
    remote that cools down takes its slots away; one that comes back adds them), read from
    `capacity` at every admission and release, and after `poke()`."""

    def __init__(
        self,
        capacity: int | Callable[[], int],
        max_queue: int,
        queue_timeout: float,
        per_client: int = 0,
        per_client_queue: int = 0,
        name: str = "",
    ) -> None:
        self._capacity = capacity if callable(capacity) else (lambda: capacity)
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.per_client = per_client
        self.per_client_queue = per_client_queue
        self.name = name
        self.in_flight = 0
        self.waiting = 0
        self.held: dict[str, int] = {}  # slots in use, by client
        self.refused: Counter[str] = Counter()  # 429s and queue timeouts, by client
        # The rotation: each waiting client's line, the next one to serve first.
        self._lines: dict[str, deque[_Waiter]] = {}

    @property
    def concurrency(self) -> int:
        # At least one: with every instance down, a request goes through to hear why (503).
        return max(self._capacity(), 1)

    def queued(self) -> dict[str, int]:
        return {client: len(line) for client, line in self._lines.items()}

    def slot(self, client: str = "") -> _Slot:
        """`async with lane.slot(client):` holds one of the lane's slots, waiting in the
        client's line for it if need be (429 past a queue's bound, 503 past the timeout)."""
        return _Slot(self, client)

    async def _admit(self, client: str) -> None:
        if (
            not self.waiting
            and self.in_flight < self.concurrency
            and (not self.per_client or self.held.get(client, 0) < self.per_client)
        ):  # no queue, no timer
            self._take(client)
        else:
            await self._wait(client)

    def _release(self, client: str) -> None:
        self._give_back(client)
        self.poke()

    def poke(self) -> None:
        """Hand free slots to the waiting clients in turn."""
        free = self.concurrency - self.in_flight
        if free <= 0 or not self._lines:
            return
        waiting = {client: len(line) for client, line in self._lines.items()}
        granted, order = grant_order(list(self._lines), waiting, self.held, free, self.per_client)
        for client in granted:
            waiter = self._lines[client].popleft()
            self.waiting -= 1
            self._take(client)
            waiter.granted = True
            waiter.event.set()
            log.debug("admission.granted lane=%s client=%s", self.name, client)
        self._lines = {client: self._lines[client] for client in order}

    def _take(self, client: str) -> None:
        self.in_flight += 1
        self.held[client] = self.held.get(client, 0) + 1

    def _give_back(self, client: str) -> None:
        self.in_flight -= 1
        if held := self.held[client] - 1:
            self.held[client] = held
        else:
            del self.held[client]

    def _refuse(self, client: str, message: str) -> Overloaded:
        self.refused[client] += 1
        return Overloaded(message, retry_after=2)

    async def _wait(self, client: str) -> None:
        line = self._lines.get(client)
        if self.per_client_queue and line and len(line) >= self.per_client_queue:
            raise self._refuse(
                client, f"{len(line)} of your requests are queued already; try again"
            )
        if self.waiting >= self.max_queue:
            if (longest := crowded_out(self.queued(), client)) is None:
                raise self._refuse(
                    client,
                    f"{self.in_flight} requests in flight and {self.waiting} queued; try again",
                )
            self._crowd_out(longest)
        waiter = _Waiter()
        self._lines.setdefault(client, deque()).append(waiter)
        self.waiting += 1
        log.debug("admission.queued lane=%s client=%s", self.name, client)
        self.poke()
        try:
            with anyio.fail_after(self.queue_timeout):
                await waiter.event.wait()
        except BaseException as exc:
            if waiter.granted:  # handed a slot just as it gave up: pass the slot on
                self._give_back(client)
                self.poke()
            elif not waiter.crowded_out:  # (one crowded out has left its line already)
                self._leave(client, waiter)
            if isinstance(exc, TimeoutError):
                self.refused[client] += 1
                raise BackendUnavailable(
                    f"waited {self.queue_timeout:.0f} s in the queue", retry_after=5
                ) from None
            raise
        if waiter.crowded_out:
            raise self._refuse(
                client, "the queue is full and your line in it was the longest; try again"
            )

    def _crowd_out(self, client: str) -> None:
        """Take `client`'s newest waiting request out of its line; it is refused (429)."""
        waiter = self._lines[client][-1]
        self._leave(client, waiter)
        waiter.crowded_out = True
        waiter.event.set()
        log.debug("admission.crowded_out lane=%s client=%s", self.name, client)

    def _leave(self, client: str, waiter: _Waiter) -> None:
        line = self._lines[client]
        line.remove(waiter)
        self.waiting -= 1
        if not line:
            del self._lines[client]


class _Slot:
    """A class, not an @asynccontextmanager generator: half the cost per admission
    (BENCHMARKS.md, per-call costs)."""

    __slots__ = ("client", "lane")

    def __init__(self, lane: Lane, client: str) -> None:
        self.lane, self.client = lane, client

    async def __aenter__(self) -> None:
        await self.lane._admit(self.client)

    async def __aexit__(self, *exc_info: object) -> None:
        self.lane._release(self.client)


class _Waiter:
    __slots__ = ("crowded_out", "event", "granted")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.granted = False  # handed a slot
        self.crowded_out = False  # its place given to another client's request


class Admission:
    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        # A model's slots: set by the router (the slots of its available instances).
        self.capacity_of: Callable[[str], int] | None = None
        self.cli = self._lane(limits.cli_concurrency, "cli")
        self.models: dict[str, Lane] = {}  # server mode, by model name

    def _lane(self, capacity: int | Callable[[], int], name: str) -> Lane:
        limits = self._limits
        return Lane(
            capacity,
            limits.max_queue,
            limits.queue_timeout_s,
            per_client=limits.per_client_concurrency,
            per_client_queue=limits.per_client_queue,
            name=name,
        )

    def lane(self, backend: str, model: str) -> Lane:
        if backend == "cli":
            return self.cli
        if (lane := self.models.get(model)) is None:
            capacity_of = self.capacity_of
            capacity: int | Callable[[], int] = self._limits.max_concurrency
            if capacity_of is not None:
                capacity = lambda: capacity_of(model)  # noqa: E731
            lane = self.models[model] = self._lane(capacity, model)
        return lane

    def lanes(self) -> list[tuple[str, str, Lane]]:
        """(backend, model, lane) of every lane: cli's ("cli", "") first."""
        return [("cli", "", self.cli), *(("server", m, lane) for m, lane in self.models.items())]

    def queued(self, model: str) -> int:
        """Server-mode requests of `model` waiting for a slot (the pool's anti-thrash)."""
        lane = self.models.get(model)
        return lane.waiting if lane else 0


async def admitted(
    lane: Lane, events: AsyncGenerator[T, None], client: str = ""
) -> AsyncGenerator[T, None]:
    """`events` holding a slot of `lane` from before the first event to the last."""
    async with lane.slot(client):
        async for event in events:
            yield event
