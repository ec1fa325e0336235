"""The supervisor with the real llama-server and default model."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from supervisor.command import ServerSpec
from supervisor.states import State
from tests.conftest import wait_until
from tests.helpers import llama_servers_on
from tests.supervisor.conftest import fast_config, history, running

pytestmark = pytest.mark.llama


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
