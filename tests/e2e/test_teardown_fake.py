"""A llama-server's pipes are closed by the gateway once it is gone, whatever still holds
their other ends: here a process it started outside its group (fake `linger`), which keeps
them open long after its group is killed. A pipe left open outlived the event loop: uvloop's
close failed with `OSError: [Errno 16] Device or resource busy` and "Fatal error on
transport ReadUnixTransport", failing whichever test owned the loop."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.e2e.conftest import fake_settings, recorded, serving
from tests.supervisor.conftest import behave


def lingering(log: Path) -> list[int]:
    """The pids of the processes that hold a fake llama-server's pipes (fake `linger`)."""
    return [e["linger"] for e in recorded(log) if "linger" in e]


def closed(log: Path) -> set[int]:
    """Those whose pipes' reading end was closed (a write failed with EPIPE)."""
    return {e["pipe_closed"] for e in recorded(log) if "pipe_closed" in e}


def children() -> set[int]:
    """Our own child processes, reaped or not."""
    found: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        found |= {int(p) for p in Path(f"/proc/self/task/{task}/children").read_text().split()}
    return found


@pytest.fixture
def log(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "calls.jsonl"
    yield path
    for pid in lingering(path):  # they give up on their own, later
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def test_stopping_the_gateway_while_loading_closes_its_llama_servers_pipes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log: Path
) -> None:
    behave(monkeypatch, load_delay=60, linger=60, record=str(log))
    for n in range(3):
        (tmp_path / str(n)).mkdir()
        async with serving(fake_settings(tmp_path / str(n))) as client:
            # The model loads at startup; the gateway stops while it is still loading.
            await wait_until(lambda n=n: len(lingering(log)) > n, within=20)  # type: ignore[misc]
            _, ready = await client.get("/ready")
            assert ready["processes"][0]["state"] == "starting", ready
        assert not children()  # reaped
        pid = lingering(log)[n]
        await wait_until(lambda pid=pid: pid in closed(log), within=10)  # type: ignore[misc]


async def test_a_llama_server_that_exits_has_its_pipes_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log: Path
) -> None:
    behave(monkeypatch, exit_at_start=1, linger=60, record=str(log))
    async with serving(fake_settings(tmp_path)):
        await wait_until(lambda: bool(lingering(log)), within=20)
        pid = lingering(log)[0]
        await wait_until(lambda: pid in closed(log), within=10)
