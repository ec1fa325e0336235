"""The admission lane: slots, a first-come-first-served queue, and slots that change while
requests wait (a model's instances come and go)."""

from __future__ import annotations

import anyio
import pytest

from gateway.admission import Lane
from gateway.errors import BackendUnavailable, Overloaded


async def test_a_lane_queues_beyond_its_slots_and_serves_in_order() -> None:
    lane = Lane(1, max_queue=2, queue_timeout=10)
    order: list[int] = []
    release = anyio.Event()

    async def request(n: int) -> None:
        async with lane.slot():
            order.append(n)
            await release.wait()

    async with anyio.create_task_group() as tg:
        for n in range(3):
            tg.start_soon(request, n)
            await anyio.sleep(0.01)
        assert (lane.in_flight, lane.waiting) == (1, 2)
        with pytest.raises(Overloaded):  # the queue is full
            async with lane.slot():
                pass
        release.set()
    assert order == [0, 1, 2] and lane.in_flight == 0


async def test_a_lane_grows_and_shrinks_with_its_capacity() -> None:
    capacity = 1
    lane = Lane(lambda: capacity, max_queue=8, queue_timeout=10)
    inside = 0
    peak = 0
    release = anyio.Event()

    async def request() -> None:
        nonlocal inside, peak
        async with lane.slot():
            inside += 1
            peak = max(peak, inside)
            await release.wait()
            inside -= 1

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(request)
        await anyio.sleep(0.05)
        assert (lane.in_flight, lane.waiting) == (1, 2)
        capacity = 3  # an instance came back: the waiters get its slots at once
        lane.poke()
        await anyio.sleep(0.05)
        assert (lane.in_flight, lane.waiting) == (3, 0)
        capacity = 0  # every instance gone: one still goes through, to hear why
        assert lane.concurrency == 1
        release.set()
    assert peak == 3 and lane.in_flight == 0


async def test_a_waiter_that_times_out_leaves_no_slot_taken() -> None:
    lane = Lane(1, max_queue=4, queue_timeout=0.05)
    async with lane.slot():
        with pytest.raises(BackendUnavailable, match="in the queue"):
            async with lane.slot():
                pass
        assert lane.waiting == 0
    assert lane.in_flight == 0
