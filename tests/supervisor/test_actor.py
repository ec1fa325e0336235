"""The supervisor actor against the fake llama-server: every lifecycle edge with a real process."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import anyio
import msgspec
import pytest

from core.errors import BackendUnavailable
from supervisor import pidfile
from supervisor.actor import LeaseError
from supervisor.pool import Policy
from supervisor.process import bind_error
from supervisor.states import State
from tests.conftest import wait_until
from tests.helpers import alive
from tests.supervisor.conftest import (
    FAKE,
    OTHER,
    SPEC,
    at_port,
    behave,
    fast_config,
    history,
    running,
    wait_state,
)

S = State
AUTO = Policy(autostart=True)  # loaded as soon as applied, as role defaults are


async def test_supervisor_starts_on_demand_and_reports_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    behave(monkeypatch, load_delay=0.3)
    config = fast_config(tmp_path)
    async with running(config) as sup:
        endpoint = await sup.ensure_ready(SPEC)
        assert endpoint.port == config.base_port
        assert endpoint.url == f"http://127.0.0.1:{config.base_port}"
        assert alive(endpoint.pid)
        assert history(sup, endpoint.port) == [S.STARTING, S.READY]
        assert pidfile.pidfile_path(
            Path(config.state_dir), config.host, endpoint.port
        ).read_text() == str(endpoint.pid)
    assert not alive(endpoint.pid)


async def test_supervisor_restarts_a_killed_child_with_backoff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    behave(monkeypatch)
    async with running(fast_config(tmp_path)) as sup:
        first = await sup.ensure_ready(SPEC)
        os.kill(first.pid, signal.SIGKILL)
        await wait_until(lambda: history(sup, first.port).count(S.READY) == 2, within=10)
        second = await sup.ensure_ready(SPEC)
        assert second.pid != first.pid
        assert history(sup, first.port) == [S.STARTING, S.READY, S.BACKOFF, S.STARTING, S.READY]
        process = at_port(sup, first.port)
        assert process.restarts == 1
        assert process.last_error is not None and "exited with status -9" in process.last_error


async def test_supervisor_gives_up_after_the_restart_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    behave(monkeypatch, exit_at_start=3)
    config = fast_config(tmp_path, restart_limit=2)
    async with running(config) as sup:
        with pytest.raises(BackendUnavailable):
            await sup.ensure_ready(SPEC)
        failed = await wait_state(sup, S.FAILED)
        # The first start and two restarts, then no more.
        assert history(sup, failed.port) == [S.STARTING, S.BACKOFF] * 2 + [S.STARTING, S.FAILED]
        assert failed.last_error is not None
        assert "exited with status 3" in failed.last_error
        assert "failed to load model" in failed.last_error  # the log tail
        with pytest.raises(BackendUnavailable, match="has failed") as caught:
            await sup.ensure_ready(SPEC)
        assert caught.value.retry_after > 0
        # An explicit restart re-arms it.
        behave(monkeypatch)
        await sup.restart(SPEC)
        assert (await sup.ensure_ready(SPEC)).port == failed.port


@pytest.mark.parametrize("how", ["exits", "is killed while unhealthy"])
async def test_a_ready_child_that_dies_past_the_budget_is_failed_and_the_actor_lives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Found by `make soak`: READY/UNHEALTHY -> FAILED was not an allowed edge, so the
    exception killed the supervisor and the gateway answered 503 from then on."""
    behave(monkeypatch)
    async with running(fast_config(tmp_path, restart_limit=1)) as sup:
        first = await sup.ensure_ready(SPEC)
        os.kill(first.pid, signal.SIGKILL)  # the one restart the budget allows
        await wait_until(lambda: history(sup, first.port).count(S.READY) == 2, within=10)
        second = await sup.ensure_ready(SPEC)
        if how == "exits":
            os.kill(second.pid, signal.SIGKILL)
        else:
            behave(monkeypatch, hang_completion=True)
            os.kill(second.pid, signal.SIGSTOP)  # the probe times out: UNHEALTHY, killed
            sup.report_failure(SPEC)
        failed = await wait_state(sup, S.FAILED)
        assert history(sup, failed.port)[-2:] == (
            [S.READY, S.FAILED] if how == "exits" else [S.UNHEALTHY, S.FAILED]
        )
        with pytest.raises(BackendUnavailable, match="has failed"):
            await sup.ensure_ready(SPEC)
        behave(monkeypatch)
        await sup.restart(SPEC)  # the actor still answers
        assert (await sup.ensure_ready(SPEC)).pid != second.pid


async def test_supervisor_kills_a_child_that_ignores_sigterm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    behave(monkeypatch, ignore_sigterm=True)
    async with running(fast_config(tmp_path, stop_grace=0.3)) as sup:
        endpoint = await sup.ensure_ready(SPEC)
        await sup.stop_all()
        assert at_port(sup, endpoint.port).state is S.STOPPED
        assert not alive(endpoint.pid)
        assert history(sup, endpoint.port)[-2:] == [S.STOPPING, S.STOPPED]


async def test_a_lease_replacing_a_killed_child_waits_for_its_successor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    behave(monkeypatch, load_delay=0.3)
    async with running(fast_config(tmp_path, backoff_initial=0.3)) as sup:
        first = await sup.ensure_ready(SPEC)
        os.kill(first.pid, signal.SIGKILL)
        # One replacing the dead pid, and a plain lease in BACKOFF (a 503 at once before
        # issue 29), both wait for the next process through the backoff and its load.
        await wait_state(sup, S.BACKOFF)
        async with sup.lease(SPEC) as plain, sup.lease(SPEC, replacing=first.pid) as second:
            assert second.pid == plain.pid != first.pid and alive(second.pid)
            assert at_port(sup, first.port).state is S.READY


async def test_a_lease_waits_through_a_crash_loop_until_the_budget_is_spent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lease waits while its model restarts within the budget; the one that spends it
    fails every waiter at once, with one sentence and no log line."""
    behave(monkeypatch, exit_at_start=3)
    async with running(fast_config(tmp_path, restart_limit=2)) as sup:
        with pytest.raises(BackendUnavailable) as caught:
            await sup.ensure_ready(SPEC)
        failed = await wait_state(sup, S.FAILED)
        assert history(sup, failed.port).count(S.BACKOFF) == 2  # waited through both
        assert caught.value.message == (
            "llama-server for a.gguf has failed and is not restarted (see /api/models)"
        )


async def test_a_wait_through_a_restart_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    behave(monkeypatch)
    config = fast_config(tmp_path, backoff_initial=30, backoff_max=30, memory_wait=0.3)
    async with running(config) as sup:
        first = await sup.ensure_ready(SPEC)
        os.kill(first.pid, signal.SIGKILL)
        await wait_state(sup, S.BACKOFF)
        with pytest.raises(BackendUnavailable, match="did not come back within 0 s") as caught:
            await sup.ensure_ready(SPEC)
        assert caught.value.retry_after == 5


async def test_a_lease_replacing_a_healthy_child_is_granted_after_a_probe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    behave(monkeypatch)
    async with running(fast_config(tmp_path)) as sup:
        first = await sup.ensure_ready(SPEC)
        async with sup.lease(SPEC, replacing=first.pid) as again:
            assert again.pid == first.pid
        assert history(sup, first.port) == [S.STARTING, S.READY]


async def test_supervisor_restarts_a_wedged_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    behave(monkeypatch, hang_completion=True)
    async with running(fast_config(tmp_path)) as sup:
        first = await sup.ensure_ready(SPEC)
        sup.report_failure(SPEC)  # what the dispatcher says after upstream errors
        await wait_until(lambda: history(sup, first.port).count(S.READY) == 2, within=10)
        assert history(sup, first.port)[1:4] == [S.READY, S.UNHEALTHY, S.BACKOFF]
        last_error = at_port(sup, first.port).last_error
        assert last_error is not None and "completion probe failed" in last_error
        assert not alive(first.pid)


async def test_supervisor_restarts_after_failed_health_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    behave(monkeypatch, health_fail_after=3)
    async with running(fast_config(tmp_path)) as sup:
        first = await sup.ensure_ready(SPEC)
        await wait_until(lambda: S.UNHEALTHY in history(sup, first.port), within=10)
        await wait_until(lambda: history(sup, first.port).count(S.READY) == 2, within=10)
        last_error = at_port(sup, first.port).last_error
        assert last_error is not None and "/health error 2 times in a row" in last_error


async def test_supervisor_stops_a_child_that_is_still_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    behave(monkeypatch, load_delay=60)
    async with running(fast_config(tmp_path)) as sup:
        await sup.apply({SPEC: AUTO})
        starting = await wait_state(sup, S.STARTING)
        assert starting.pid is not None
        await sup.stop_all()
        assert history(sup, starting.port) == [S.STARTING, S.STOPPING, S.STOPPED]
        assert not alive(starting.pid)


async def test_supervisor_gives_up_a_silent_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    behave(monkeypatch, silent=True)
    async with running(fast_config(tmp_path, load_timeout=0.5, restart_limit=0)) as sup:
        with pytest.raises(BackendUnavailable, match="has failed"):
            await sup.ensure_ready(SPEC)
        assert "without progress in its log" in (sup.snapshot()[0].last_error or "")


async def test_supervisor_names_a_port_held_by_a_foreign_process(tmp_path: Path) -> None:
    config = fast_config(tmp_path)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", config.base_port))
        holder.listen()
        async with running(config) as sup:
            with pytest.raises(BackendUnavailable, match=r"for a\.gguf cannot start"):
                await sup.ensure_ready(SPEC)
            failed = at_port(sup, config.base_port)
            assert failed.state is S.FAILED  # the port is named to admins, not to clients
            assert re.search(f"port {config.base_port} .* held by", failed.last_error or "")


def listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
    except OSError:
        return False
    return True


async def test_supervisor_reclaims_an_orphan_from_a_killed_gateway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    behave(monkeypatch)
    config = fast_config(tmp_path)
    state_dir = Path(config.state_dir)
    state_dir.mkdir()
    # What a SIGKILLed gateway leaves: our llama-server running, its pidfile.
    orphan = subprocess.Popen([str(FAKE), "--port", str(config.base_port)], start_new_session=True)
    pidfile.write_pidfile(state_dir, config.host, config.base_port, orphan.pid)
    # Serving, as an orphan is: on its way through env and pyenv's shims to python, the
    # fake's /proc cmdline is empty or names another program.
    await wait_until(lambda: listening(config.host, config.base_port), within=10)
    # A stale pidfile naming a process that is not ours must not be killed.
    pidfile.write_pidfile(state_dir, config.host, config.base_port + 1, os.getpid())
    try:
        async with running(config) as sup:
            assert orphan.wait(timeout=5) == -signal.SIGTERM
            endpoint = await sup.ensure_ready(SPEC)
            assert endpoint.port == config.base_port
        assert not list(state_dir.glob("*.pid"))
    finally:
        orphan.kill()
        orphan.wait()


async def test_supervisor_leaves_another_hosts_processes_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker and a gateway sharing a state directory: pidfiles are keyed by host, and
    the gateway never reclaims the worker's process."""
    behave(monkeypatch)
    config = fast_config(tmp_path)
    state_dir = Path(config.state_dir)
    state_dir.mkdir()
    worker = subprocess.Popen([str(FAKE), "--port", "9100"], start_new_session=True)
    pidfile.write_pidfile(state_dir, "10.231.1.2", 9100, worker.pid)
    await wait_until(lambda: listening("127.0.0.1", 9100), within=10)
    try:
        async with running(config) as sup:
            await sup.ensure_ready(SPEC)
            assert worker.poll() is None
        assert pidfile.pidfile_path(state_dir, "10.231.1.2", 9100).exists()
    finally:
        worker.kill()
        worker.wait()


async def test_supervisor_reconfigure_replaces_the_process_on_its_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    behave(monkeypatch)
    config = fast_config(tmp_path)
    async with running(config) as sup:
        old = await sup.ensure_ready(SPEC)
        async with sup.lease(SPEC):
            await sup.apply({OTHER: AUTO})
            # The old process keeps serving the lease it handed out.
            assert alive(old.pid)
            [serving] = [p for p in sup.snapshot() if p.pid == old.pid]
            assert serving.state is S.READY
        new = await sup.ensure_ready(OTHER)
        assert new.port == config.base_port and new.pid != old.pid
        assert not alive(old.pid)
        await sup.apply({})  # cli mode: nothing resident
        await wait_until(lambda: not alive(new.pid), within=5)


async def test_supervisor_unloads_an_idle_process_and_restarts_on_demand(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    behave(monkeypatch)
    async with running(fast_config(tmp_path)) as sup:
        await sup.apply({SPEC: Policy(ttl_s=0.2)})
        first = await sup.ensure_ready(SPEC)
        await wait_until(lambda: at_port(sup, first.port).state is S.STOPPED, within=5)
        assert not alive(first.pid)
        second = await sup.ensure_ready(SPEC)
        assert second.pid != first.pid
        assert history(sup, first.port) == [
            S.STARTING, S.READY, S.STOPPING, S.STOPPED, S.STARTING, S.READY
        ]  # fmt: skip


def held_port_above_a_free_one() -> tuple[socket.socket, int]:
    """A listening socket on a port P whose neighbour P - 1 was free when checked: never
    assume that the port next to a free one is free (an ephemeral port of another program
    may be there)."""
    for _ in range(50):
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        below = holder.getsockname()[1] - 1
        if below > 1024 and bind_error("127.0.0.1", below) is None:
            holder.listen()
            return holder, below
        holder.close()
    pytest.fail("no two adjacent ports with the lower one free in 50 tries")


async def test_a_second_model_moves_off_a_port_another_program_took(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    behave(monkeypatch)
    holder, base_port = held_port_above_a_free_one()  # e.g. an ephemeral client port
    config = fast_config(tmp_path, base_port=base_port)
    with holder:
        async with running(config) as sup:
            await sup.apply({SPEC: AUTO, OTHER: AUTO})
            first, second = await sup.ensure_ready(SPEC), await sup.ensure_ready(OTHER)
            assert first.port == config.base_port  # the configured one
            assert second.port not in (config.base_port, config.base_port + 1)
            assert alive(second.pid)


async def test_supervisor_waits_for_a_missing_rpc_worker_without_spending_its_restart_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """llama-server aborts when an RPC worker it uses dies: the instance waits (BACKOFF,
    naming the worker) until the worker answers again, then starts, and no restart of its
    budget was used; a crash with every worker up is still a crash."""
    behave(monkeypatch)
    worker = socket.create_server(("127.0.0.1", 0))
    address = f"127.0.0.1:{worker.getsockname()[1]}"
    spec = msgspec.structs.replace(SPEC, rpc=(address,), gpu_layers=99)
    config = fast_config(tmp_path, restart_limit=1)
    async with running(config) as sup:
        await sup.ensure_ready(spec)
        worker.close()  # the worker host goes away, and llama-server with it
        info = sup.instance(spec)
        assert info is not None and info.pid is not None
        os.kill(info.pid, signal.SIGKILL)
        await wait_until(lambda: bool(sup.instance(spec).missing_workers), within=10)  # type: ignore[union-attr]
        info = sup.instance(spec)
        assert info is not None and info.state is S.BACKOFF
        assert address in (info.last_error or "") and "does not answer" in (info.last_error or "")
        granted: list[int] = []

        async def lease() -> None:  # waits for the worker, then for the restarted process
            async with sup.lease(spec) as endpoint:
                granted.append(endpoint.pid)

        async with anyio.create_task_group() as tg:
            tg.start_soon(lease)
            await anyio.sleep(0.5)  # many checks, no restarts
            assert sup.instance(spec).restarts == 0  # type: ignore[union-attr]
            assert granted == []
            worker = socket.create_server(("127.0.0.1", int(address.rsplit(":", 1)[1])))
        await wait_state(sup, S.READY, within=10)
        assert granted == [sup.instance(spec).pid]  # type: ignore[union-attr]
        info = sup.instance(spec)
        assert info is not None and info.restarts == 0 and info.missing_workers == ()
        # Every worker up, llama-server dies anyway: that counts (and the budget is 1).
        os.kill(info.pid, signal.SIGKILL)  # type: ignore[arg-type]
        await wait_until(lambda: sup.instance(spec).restarts == 1, within=10)  # type: ignore[union-attr]
        await wait_until(lambda: sup.instance(spec).state is S.READY, within=10)  # type: ignore[union-attr]
    worker.close()


async def test_a_lease_released_twice_is_an_error_not_a_clamped_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    behave(monkeypatch)
    async with running(fast_config(tmp_path)) as sup:
        await sup.ensure_ready(SPEC)
        lease = sup._lease_ready(SPEC)
        assert lease is not None and sup.load_of(SPEC)[1] == 1
        assert sup._release_now(lease)
        with pytest.raises(LeaseError, match="released twice"):
            sup._release_now(lease)
        assert sup.load_of(SPEC)[1] == 0


async def test_a_child_that_exits_leaves_its_last_output_lines_in_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Under systemd the journal shows the gateway's log only: a child's exit must say why
    # there (a missing libgomp1 exits 127 with one loader line), not just its code.
    behave(monkeypatch, say="error while loading shared libraries: libgomp.so.1")
    async with running(fast_config(tmp_path)) as sup:
        first = await sup.ensure_ready(SPEC)
        os.kill(first.pid, signal.SIGKILL)
        await wait_until(lambda: history(sup, first.port).count(S.READY) == 2, within=10)
    [exited] = [r.getMessage() for r in caplog.records if "child_exited" in r.getMessage()]
    assert "code=-9 last_output=" in exited
    assert "error while loading shared libraries: libgomp.so.1" in exited
