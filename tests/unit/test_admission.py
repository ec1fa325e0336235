"""The admission lane: slots, one waiting line per client served round-robin (the order is
a pure function, tested as a table), per-client caps, and slots that change while requests
wait (a model's instances come and go). A test waits for what a lane shows (requests in it,
a client's line), never for a fixed time."""

from __future__ import annotations

import anyio
import pytest

from core.errors import BackendUnavailable, Overloaded
from gateway.admission import Lane, crowded_out, grant_order
from tests.conftest import wait_until


async def entered(lane: Lane, requests: int) -> None:
    """Until `requests` requests are in `lane`, in flight or waiting."""
    await wait_until(lambda: lane.in_flight + lane.waiting == requests, within=5)


async def in_line(lane: Lane, client: str) -> None:
    """Until a request of `client` waits in `lane`."""
    await wait_until(lambda: client in lane.queued(), within=5)


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
            await entered(lane, n + 1)  # one by one: the order is theirs
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
        await entered(lane, 3)
        assert (lane.in_flight, lane.waiting) == (1, 2)
        capacity = 3  # an instance came back: the waiters get its slots at once
        lane.poke()
        assert (lane.in_flight, lane.waiting) == (3, 0)
        await wait_until(lambda: inside == 3, within=5)
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


@pytest.mark.parametrize(
    ("order", "waiting", "in_flight", "free", "cap", "granted", "after"),
    [
        # Nobody waits, or no slot is free: nothing happens.
        ([], {}, {}, 3, 0, [], []),
        (["a"], {"a": 2}, {"a": 4}, 0, 0, [], ["a"]),
        # One client alone takes every free slot (no cap).
        (["a"], {"a": 5}, {"a": 4}, 3, 0, ["a", "a", "a"], ["a"]),
        # Round-robin: a flood doesn't stand between b and the next slot.
        (["a", "b"], {"a": 8, "b": 1}, {"a": 4}, 1, 0, ["a"], ["b", "a"]),
        (["b", "a"], {"a": 8, "b": 1}, {"a": 4}, 1, 0, ["b"], ["a"]),
        (["a", "b", "c"], {"a": 3, "b": 1, "c": 2}, {}, 5, 0, ["a", "b", "c", "a", "c"], ["a"]),
        # A client at its cap is passed over and keeps its place.
        (["a", "b"], {"a": 3, "b": 2}, {"a": 2}, 3, 2, ["b", "b"], ["a"]),
        (["a", "b"], {"a": 3, "b": 2}, {"a": 1, "b": 2}, 3, 2, ["a"], ["b", "a"]),
        # Every waiting client at its cap: free slots stay free.
        (["a"], {"a": 3}, {"a": 2}, 2, 2, [], ["a"]),
    ],
)
def test_grant_order(
    order: list[str],
    waiting: dict[str, int],
    in_flight: dict[str, int],
    free: int,
    cap: int,
    granted: list[str],
    after: list[str],
) -> None:
    assert grant_order(order, waiting, in_flight, free, cap) == (granted, after)


@pytest.mark.parametrize(
    ("lines", "newcomer", "out"),
    [
        ({"a": 4}, "b", "a"),  # a flood gives one place to a client with none queued
        ({"a": 3, "b": 1}, "c", "a"),
        ({"a": 2, "b": 2}, "c", "a"),  # a tie: the first in the rotation
        ({"b": 2, "a": 2}, "c", "b"),
        ({"a": 2, "b": 1}, "b", None),  # b's line would be as long as a's: b is refused
        ({"a": 3, "b": 1}, "b", "a"),
        ({"a": 4}, "a", None),  # the longest line's own next request is refused
        ({"a": 1, "b": 1}, "c", None),  # every line as short as it gets: c is refused
        ({}, "a", None),
    ],
)
def test_crowded_out(lines: dict[str, int], newcomer: str, out: str | None) -> None:
    assert crowded_out(lines, newcomer) == out


async def hold(lane: Lane, client: str, release: anyio.Event) -> None:
    """One request of `client`: a slot of `lane` held until `release`."""
    async with lane.slot(client):
        await release.wait()


async def test_a_full_queue_takes_a_newcomer_in_place_of_the_longest_lines_newest() -> None:
    """Two flooders fill the whole queue (no line bound of their own); b, c and d still get
    in, each in place of the newest request of the longest line, which is refused (429)."""
    lane = Lane(1, max_queue=4, queue_timeout=10)
    release = anyio.Event()
    outcomes: dict[str, str] = {}

    async def request(client: str, tag: str) -> None:
        try:
            await hold(lane, client, release)
            outcomes[tag] = "served"
        except Overloaded as refused:
            outcomes[tag] = str(refused)

    async with anyio.create_task_group() as tg:
        for n in range(5):  # one in flight, four waiting: the queue is full
            tg.start_soon(request, "a", f"a{n}")
            await entered(lane, n + 1)
        for client in "bcd":
            tg.start_soon(request, client, client)
            await in_line(lane, client)
        assert lane.queued() == {"a": 1, "b": 1, "c": 1, "d": 1}
        with pytest.raises(Overloaded, match="4 queued"):  # every line as short as can be
            async with lane.slot("e"):
                pass
        release.set()
    crowded = "the queue is full and your line in it was the longest; try again"
    assert outcomes == {"a0": "served", "a1": "served", "a2": crowded, "a3": crowded,
                        "a4": crowded, "b": "served", "c": "served", "d": "served"}  # fmt: skip
    assert lane.refused == {"a": 3, "e": 1}
    assert lane.in_flight == lane.waiting == 0 and not lane.held


async def test_freed_slots_go_round_robin_between_waiting_clients() -> None:
    """a floods, b and c ask once each: each gets the next slot after at most one of a's."""
    lane = Lane(2, max_queue=16, queue_timeout=10, per_client_queue=8)
    admitted: list[str] = []
    done = {name: anyio.Event() for name in ("a0", "a1")}

    async def request(client: str, tag: str) -> None:
        async with lane.slot(client):
            admitted.append(tag)
            if tag in done:
                await done[tag].wait()

    async with anyio.create_task_group() as tg:
        for n in range(6):
            tg.start_soon(request, "a", f"a{n}")
            await entered(lane, n + 1)
        for client in ("b", "c"):
            tg.start_soon(request, client, client)
            await in_line(lane, client)
        assert lane.queued() == {"a": 4, "b": 1, "c": 1}
        done["a0"].set()  # one slot: a's line is first in the rotation, then b's, then c's
        await wait_until(lambda: len(admitted) == 8, within=5)  # all through it, a1 holding
        done["a1"].set()
    assert admitted == ["a0", "a1", "a2", "b", "c", "a3", "a4", "a5"]
    assert lane.in_flight == lane.waiting == 0 and not lane.held


async def test_a_client_past_its_own_line_gets_429_while_others_still_queue() -> None:
    lane = Lane(1, max_queue=16, queue_timeout=10, per_client_queue=2)
    release = anyio.Event()

    async with anyio.create_task_group() as tg:
        for _ in range(3):  # one in flight, two waiting: a's line is full
            tg.start_soon(hold, lane, "a", release)
        await entered(lane, 3)
        with pytest.raises(Overloaded, match="2 of your requests are queued"):
            async with lane.slot("a"):
                pass
        tg.start_soon(hold, lane, "b", release)
        await in_line(lane, "b")
        assert lane.queued() == {"a": 2, "b": 1}
        assert lane.refused == {"a": 1}
        release.set()
    assert lane.in_flight == 0


async def test_a_client_at_its_cap_waits_while_another_takes_a_free_slot() -> None:
    lane = Lane(4, max_queue=16, queue_timeout=10, per_client=2)
    release = anyio.Event()

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(hold, lane, "a", release)
        await entered(lane, 3)
        assert (lane.held, lane.queued()) == ({"a": 2}, {"a": 1})  # two slots stay free
        tg.start_soon(hold, lane, "b", release)
        await wait_until(lambda: "b" in lane.held, within=5)
        assert lane.held == {"a": 2, "b": 1}
        release.set()
    assert lane.in_flight == 0 and not lane.held


async def test_a_cancelled_waiter_leaves_its_line_and_the_rotation() -> None:
    lane = Lane(1, max_queue=4, queue_timeout=10)
    async with lane.slot("a"):
        with anyio.move_on_after(0.05):
            async with lane.slot("b"):
                pass
        assert lane.queued() == {} and lane.waiting == 0
    assert lane.in_flight == 0 and not lane.held
