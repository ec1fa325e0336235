"""Ollama's `keep_alive` on the pool: `Supervisor.keep_alive(spec, seconds)` replaces a
model's TTL, from now: 0 unloads it once idle, `math.inf` keeps it for ever, None gives it
back its policy's TTL."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from supervisor.pool import Policy
from supervisor.states import State
from tests.conftest import wait_until
from tests.helpers import alive
from tests.supervisor.conftest import OTHER, SPEC, at_port, behave, fast_config, running


async def test_keep_alive_zero_unloads_an_idle_model_without_a_ttl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    behave(monkeypatch)
    async with running(fast_config(tmp_path)) as sup:
        await sup.apply({SPEC: Policy()})
        first = await sup.ensure_ready(SPEC)
        async with sup.lease(SPEC):
            await sup.keep_alive(SPEC, 0)
            assert at_port(sup, first.port).state is State.READY  # busy: not yet
        await wait_until(lambda: at_port(sup, first.port).state is State.STOPPED, within=5)
        assert not alive(first.pid)


async def test_keep_alive_for_ever_outlasts_the_ttl_and_none_restores_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    behave(monkeypatch)
    async with running(fast_config(tmp_path)) as sup:
        await sup.apply({SPEC: Policy(ttl_s=0.2), OTHER: Policy(ttl_s=0.2)})
        await sup.keep_alive(SPEC, math.inf)  # before its load: 0.2 s is soon gone
        kept, other = await sup.ensure_ready(SPEC), await sup.ensure_ready(OTHER)
        assert at_port(sup, kept.port).ttl_s is None  # shown as "never"
        # The same TTL unloads the other; the one kept for ever is still there after it.
        await wait_until(lambda: at_port(sup, other.port).state is State.STOPPED, within=5)
        assert at_port(sup, kept.port).state is State.READY
        await sup.keep_alive(SPEC, None)
        assert at_port(sup, kept.port).ttl_s == 0.2
        await wait_until(lambda: at_port(sup, kept.port).state is State.STOPPED, within=5)


async def test_keep_alive_duration_is_shown_as_the_models_ttl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    behave(monkeypatch)
    async with running(fast_config(tmp_path)) as sup:
        await sup.apply({SPEC: Policy()})
        await sup.ensure_ready(SPEC)
        await sup.keep_alive(SPEC, 300)
        (info,) = sup.snapshot()
        assert info.ttl_s == 300 and info.state is State.READY
        await sup.keep_alive(OTHER, 5)  # not in the plan: nothing to keep
        assert len(sup.snapshot()) == 1
