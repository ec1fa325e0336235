"""The supervisor with the real llama-server and default model."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from supervisor.command import ServerSpec
from supervisor.pidfile import cmdline
from supervisor.states import State
from tests.conftest import wait_until
from tests.supervisor.conftest import fast_config, history, running
from tests.unit.test_process import alive

pytestmark = pytest.mark.llama


def llama_pids(binaries: tuple[str, ...]) -> dict[int, list[str]]:
    """Every live process on this machine running one of `binaries`, from /proc: its argv."""
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    return {
        pid: args
        for pid in pids
        if (args := cmdline(pid)) and Path(args[0]).name in binaries and alive(pid)
    }


def llama_servers_on(port: int) -> list[int]:
    """Pids of every llama-server on this machine listening on `port`."""
    return [pid for pid, args in llama_pids(("llama-server",)).items() if str(port) in args]


async def test_supervisor_recovers_the_real_llama_server_from_kill_9(
    tmp_path: Path, llama_bin: Path, default_model: Path
) -> None:
    # The default backoff (0.5 s first delay): the recovery time printed is the real one.
    config = fast_config(
        tmp_path, binary=str(llama_bin / "llama-server"), health_interval=1.0, backoff_initial=0.5
    )
    spec = ServerSpec(
        model=str(default_model), ctx_size=2048, batch_size=512, ubatch_size=512, embeddings=True
    )
    async with running(config) as sup:
        first = await sup.ensure_ready(spec)
        killed_at = time.monotonic()
        os.kill(first.pid, signal.SIGKILL)
        await wait_until(lambda: history(sup, first.port).count(State.READY) == 2, within=60)
        print(f"\nkill -9 -> READY again in {time.monotonic() - killed_at:.2f} s")
        async with sup.lease(spec) as endpoint:
            assert endpoint.pid != first.pid
            body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
            async with sup.http.post(endpoint.url + "/v1/chat/completions", json=body) as resp:
                assert resp.status == 200
                assert (await resp.json())["usage"]["completion_tokens"] >= 1
        assert llama_servers_on(first.port) == [endpoint.pid]
    assert llama_servers_on(first.port) == []
