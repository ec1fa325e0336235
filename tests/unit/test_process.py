from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import anyio

from supervisor.logtail import LogTail
from supervisor.process import spawn
from tests.conftest import wait_until
from tests.helpers import alive


def test_logtail_keeps_the_last_lines_and_partial() -> None:
    tail = LogTail(max_lines=2)
    tail.feed("one\ntwo\nthr")
    tail.feed("ee\nfour")
    assert tail.lines() == ["two", "three", "four"]
    assert tail.text(last=1) == "four"


async def test_spawn_drains_output_and_reports_exit() -> None:
    code = "import sys; print('out line'); print('err line', file=sys.stderr); sys.exit(3)"
    async with anyio.create_task_group() as tg:
        child = await spawn([sys.executable, "-c", code], tg)
        assert await child.wait() == 3
    assert sorted(child.tail.lines()) == ["err line", "out line"]


async def test_stop_escalates_to_sigkill_for_the_whole_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild"
    # The child ignores SIGTERM and leaves a grandchild that does too.
    code = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"p = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        f"signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    async with anyio.create_task_group() as tg:
        child = await spawn([sys.executable, "-c", code], tg)
        await wait_until(lambda: child.tail.lines() == ["ready"], within=10)
        grandchild = int(pidfile.read_text())
        assert await child.stop(grace=0.3) == -signal.SIGKILL
    assert not alive(child.pid)
    await wait_until(lambda: not alive(grandchild), within=5)


async def test_stop_survives_cancellation_of_the_caller() -> None:
    async with anyio.create_task_group() as tg:
        child = await spawn([sys.executable, "-c", "import time; time.sleep(60)"], tg)
        with anyio.CancelScope() as scope:
            scope.cancel()
            await child.stop(grace=1)
    assert child.returncode == -signal.SIGTERM
    assert not alive(child.pid)
    assert os.getpgid(os.getpid()) != child.pid
