"""One child process in its own process group, with its output drained into a `LogTail`.

Stopping is SIGTERM to the group → grace → SIGKILL to the group → reap → close our ends of
its pipes, shielded from cancellation so a cancelled caller never leaves a child behind.

We close the pipes ourselves instead of waiting for their end-of-file: the leader's exit
does not mean its pipes are at EOF. Another process of its group may hold them a moment
longer (the group's SIGKILL takes effect when the kernel next runs it), or one that left
the group, for good. A pipe still open when the event loop ended broke that loop's close
(uvloop: `OSError: [Errno 16] Device or resource busy`, then "Fatal error on transport
ReadUnixTransport" when its EOF arrived on the closed loop).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
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
        # Set when every drain task has ended (EOF, closed, or cancelled with its group).
        self.drained = anyio.Event()
        self._draining = 0
        self._closed = False

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
            await self.close()
        return code

    async def close(self, within: float = 1.0) -> None:
        """Close our ends of its pipes, once it has exited (idempotent, shielded). First
        give the drains up to `within` seconds to read what is left (its last lines, for
        errors): what a process still holding the pipes writes after that is dropped."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(within):
                await self.drained.wait()
            await self.process.aclose()

    def drain(self, task_group: anyio.abc.TaskGroup, read: Callable[[], Awaitable[None]]) -> None:
        """Run `read` (which reads one of its pipes to the end) in `task_group`; `drained`
        is set when every such task has ended."""
        self._draining += 1
        task_group.start_soon(self._drain_with, read)

    async def _drain_with(self, read: Callable[[], Awaitable[None]]) -> None:
        try:
            await read()
        except anyio.ClosedResourceError:
            pass  # `close` closed the pipe: what was left in it is dropped on purpose
        finally:
            self._draining -= 1
            if self._draining == 0:
                self.drained.set()


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


async def _drain(stream: anyio.abc.ByteReceiveStream, tail: LogTail) -> None:
    async for text in TextReceiveStream(stream, errors="replace"):
        tail.feed(text)


async def _collect(stream: anyio.abc.ByteReceiveStream, sink: bytearray) -> None:
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
    child = ChildProcess(process, tail)
    assert process.stdout is not None and process.stderr is not None  # both are PIPEs
    if stdout == "tail":
        child.drain(task_group, partial(_drain, process.stdout, tail))
    elif isinstance(stdout, bytearray):
        child.drain(task_group, partial(_collect, process.stdout, stdout))
    child.drain(task_group, partial(_drain, process.stderr, tail))
    return child


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
