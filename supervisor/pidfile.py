"""Pidfiles in the state directory: how a gateway that was SIGKILLed finds, on its next start,
the llama-servers it left running (holding the port and the RAM) and stops them.

A pidfile is keyed by state directory, host and port, and a supervisor reclaims only its own
host's: an `ai-server worker` and a gateway on one machine never stop each other's
processes, even sharing a state directory."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
from pathlib import Path

import anyio


def pidfile_path(state_dir: Path, host: str, port: int) -> Path:
    return state_dir / f"server-{host}-{port}.pid"


def write_pidfile(state_dir: Path, host: str, port: int, pid: int) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = pidfile_path(state_dir, host, port).with_suffix(".tmp")
    tmp.write_text(str(pid))
    tmp.replace(pidfile_path(state_dir, host, port))


def remove_pidfile(state_dir: Path, host: str, port: int) -> None:
    pidfile_path(state_dir, host, port).unlink(missing_ok=True)


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")[:-1]


def is_our_server(pid: int, port: int, binary: str) -> bool:
    """Whether `pid` still is the server we started on `port` (pids get reused)."""
    args = cmdline(pid)
    return binary in args and any(
        a == "--port" and b == str(port) for a, b in itertools.pairwise(args)
    )


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"


async def _kill_group(pid: int, grace: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    with anyio.move_on_after(grace):
        while True:
            if _gone(pid):
                return
            await anyio.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _pidfiles(state_dir: Path, host: str) -> list[tuple[int, int]]:
    """(pid, port) of every pidfile of `host` (and of the old name, from before hosts),
    removing them: each is read once, by this start."""
    found = []
    paths = [*state_dir.glob(f"server-{host}-*.pid"), *state_dir.glob("llama-server-*.pid")]
    for path in sorted(paths):
        try:
            found.append((int(path.read_text()), int(path.stem.rsplit("-", 1)[1])))
        except (OSError, ValueError):
            pass
        path.unlink(missing_ok=True)
    return found


async def reclaim_orphans(state_dir: Path, host: str, binary: str, grace: float) -> list[int]:
    """Stop every server of ours on `host` named by a pidfile, all at once (the slowest
    bounds the wait, not their sum); return their pids."""
    found = await anyio.to_thread.run_sync(_pidfiles, state_dir, host)
    reclaimed = [pid for pid, port in found if is_our_server(pid, port, binary)]
    async with anyio.create_task_group() as tg:
        for pid in reclaimed:
            tg.start_soon(_kill_group, pid, grace)
    return reclaimed
