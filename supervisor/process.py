"""One child process in its own process group, with its output drained into a `LogTail`.

Stopping is SIGTERM to the group → grace → SIGKILL to the group → reap, shielded from
cancellation so a cancelled caller never leaves a child behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Sequence
from typing import Literal

import anyio
import anyio.abc
from anyio.streams.text import TextReceiveStream

from supervisor.logtail import LogTail


class ChildProcess:
    def __init__(self, process: anyio.abc.Process, tail: LogTail) -> None:
        self.process = process
        self.tail = tail
        self.pid = process.pid

    async def wait(self) -> int:
        return await self.process.wait()

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def _signal_group(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass  # the whole group is already gone

    async def stop(self, grace: float = 5.0) -> int:
        """Stop the group and reap the child; returns its exit status."""
        with anyio.CancelScope(shield=True):
            if self.returncode is None:
                self._signal_group(signal.SIGTERM)
                self._signal_group(signal.SIGCONT)  # a stopped process acts on it (as systemd)
                with anyio.move_on_after(grace):
                    await self.wait()
                if self.returncode is None:
                    self._signal_group(signal.SIGKILL)
            code = await self.wait()
            # The leader may be gone while others in its group still run.
            self._signal_group(signal.SIGKILL)
        return code


def bind_error(host: str, port: int) -> OSError | None:
    """Why we could not listen on host:port now (None: we could). SO_REUSEADDR as servers
    set it, so a port in TIME_WAIT after our own child's exit counts as free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc
    return None


async def _drain(stream: anyio.abc.ByteReceiveStream | None, tail: LogTail) -> None:
    if stream is None:
        return
    async for text in TextReceiveStream(stream, errors="replace"):
        tail.feed(text)


async def _collect(stream: anyio.abc.ByteReceiveStream | None, sink: bytearray) -> None:
    if stream is None:
        return
    async for chunk in stream:
        sink += chunk


async def spawn(
    argv: Sequence[str],
    task_group: anyio.abc.TaskGroup,
    tail: LogTail | None = None,
    *,
    stdout: bytearray | Literal["tail", "caller"] = "tail",
) -> ChildProcess:
    """Start `argv` in a new session (so its whole group can be signalled). `task_group` owns
    the tasks that drain stderr into `tail` and stdout into the tail, into a bytearray, or
    not at all ("caller": the caller reads ``process.stdout`` as it arrives). Pipes are
    always drained, so a chatty child never blocks on a full pipe."""
    tail = tail or LogTail()
    process = await anyio.open_process(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    if stdout == "tail":
        task_group.start_soon(_drain, process.stdout, tail)
    elif isinstance(stdout, bytearray):
        task_group.start_soon(_collect, process.stdout, stdout)
    task_group.start_soon(_drain, process.stderr, tail)
    return ChildProcess(process, tail)


def resident_mb(pid: int) -> int | None:
    """VmRSS of process `pid` in MiB (rounded up); None if it is gone, a zombie or unreadable."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return -(-int(line.split()[1]) // 1024)  # reported in kB
    except (OSError, ValueError, IndexError):
        return None
    return None
