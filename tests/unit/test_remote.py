"""A remote instance's record: cooldown from 5 s doubling to 60 s, ended by a passing probe;
a refused key is its own state; idle slots corrected by our own requests between polls."""

from __future__ import annotations

import anyio

from supervisor.remote import Remote, RemoteSpec, RemoteState


def remote() -> Remote:
    return Remote("m", RemoteSpec(url="http://10.0.0.2:8080", api_key="k"), default_slots=4)


def test_cooldown_doubles_to_its_cap_and_a_passing_probe_ends_it() -> None:
    r = remote()
    assert r.state is RemoteState.UNKNOWN and not r.available
    cooldowns = []
    for _ in range(6):
        r.failed("no answer")
        cooldowns.append(r.cooldown)
    assert cooldowns == [5, 10, 20, 40, 60, 60]
    assert r.info().state is RemoteState.COOLING and r.reason == "no answer"
    assert r.passed(slots=2, idle=2)  # a state change
    assert r.available and r.cooldown == 0 and r.reason is None
    r.failed("connection refused")
    assert r.cooldown == 5  # a fresh failure starts over


def test_a_refused_key_is_unauthorized_never_available() -> None:
    r = remote()
    r.failed("the API key was refused (HTTP 401)", refused=True)
    assert r.state is RemoteState.UNAUTHORIZED and not r.available
    assert r.info().cooldown_s is None and "401" in (r.info().reason or "")
    assert "k" not in str(r.spec.public().values())


def test_idle_slots_follow_our_own_requests_between_polls() -> None:
    r = remote()
    r.passed(slots=4, idle=3)  # someone else holds one
    assert r.idle == 3
    r.in_flight += 2
    assert r.idle == 1
    r.in_flight -= 2
    assert r.idle == 3
    r.passed(slots=4, idle=None)  # a server without /slots: only our own count
    r.in_flight += 1
    assert r.idle == 3


async def test_going_down_cancels_the_requests_waiting_for_a_first_byte() -> None:
    r = remote()
    r.passed(slots=4, idle=4)
    with anyio.CancelScope() as scope:
        r.pending.add(scope)
        r.failed("no answer to a probe within 2 s")
        await anyio.sleep(1)  # cancelled at once
    assert scope.cancelled_caught
