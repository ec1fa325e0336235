"""What the actor does to the world when `supervisor.decide` asks: spawn a process (on a free
port), stop one, start the helper tasks that watch it, write and remove pidfiles (in a worker
thread: the event loop never waits on the disk), and stop every child at once on the way
out. Nothing here decides a state; everything runs on behalf of the actor's loop."""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterable
from pathlib import Path

import aiohttp
import anyio
import anyio.abc
import anyio.to_thread

from supervisor import pidfile, tasks
from supervisor.command import build_server_argv
from supervisor.config import SupervisorConfig
from supervisor.instance import Instance
from supervisor.logtail import LogTail
from supervisor.messages import BackoffElapsed, DrainExpired, Generation
from supervisor.process import bind_error, spawn

log = logging.getLogger("ai_server.supervisor")


class Effects:
    def __init__(
        self, config: SupervisorConfig, http: aiohttp.ClientSession, send: tasks.Send
    ) -> None:
        self.config = config
        self.http = http
        self.send = send
        self.state_dir = Path(config.state_dir).expanduser()
        self.tg: anyio.abc.TaskGroup | None = None  # the actor's, while it runs

    def _group(self) -> anyio.abc.TaskGroup:
        assert self.tg is not None, "the actor is not running"
        return self.tg

    async def spawn(self, m: Instance, taken: Iterable[int]) -> str | None:
        """Start `m`'s process and its watchers; None, or why it cannot start at all. A port
        another program took since it was assigned moves `m` to a free one above the
        configured port (`taken`: the ports of our other records); the configured port is
        a promise, so losing it is a failure that says so."""
        c = self.config
        m.gen.alive = False
        m.gen = Generation(m.gen.number + 1)
        m.measured_mb = None
        if (held := _port_problem(c.host, m.port)) is not None:
            if m.port == c.base_port or (port := _other_port(c, set(taken))) is None:
                return held
            log.warning("supervisor.port_moved model=%s %s; now %d", m.spec.name, held, port)
            m.port, m.url = port, f"http://{c.host}:{port}"
        argv = build_server_argv(c.binary, m.spec, host=c.host, port=m.port)
        try:
            m.child = await spawn(argv, self._group(), LogTail(max_lines=100, also=m.log))
        except OSError as exc:
            return f"cannot start {c.binary}: {exc.strerror or exc}"
        await anyio.to_thread.run_sync(
            pidfile.write_pidfile, self.state_dir, c.host, m.port, m.child.pid
        )
        m.log.feed(f"[ai-server] started pid {m.child.pid} on port {m.port}\n")
        log.info("supervisor.spawned port=%d model=%s pid=%d", m.port, m.spec.name, m.child.pid)
        tg, child = self._group(), m.child
        tg.start_soon(tasks.watch_exit, self.send, m.spec, m.gen, child)
        tg.start_soon(lambda: tasks.await_ready(
            self.send, self.http, m.spec, m.gen, child, m.url,
            load_timeout=c.load_timeout, health_timeout=c.health_timeout,
        ))  # fmt: skip
        return None

    async def exited(self, m: Instance) -> str:
        """The bookkeeping of an exit: its generation is over, the rest of its group is
        killed and its pipes closed (`ChildProcess.stop`, at once: it has exited), its
        pidfile goes; returns the last lines it wrote."""
        m.gen.alive = False
        if m.child is not None:
            await m.child.stop(self.config.stop_grace)
        await anyio.to_thread.run_sync(
            pidfile.remove_pidfile, self.state_dir, self.config.host, m.port
        )
        tail = m.child.tail.text(last=15) if m.child else ""
        m.child = None
        return tail

    def kill(self, m: Instance) -> None:
        if m.child is not None:
            self._group().start_soon(m.child.stop, self.config.stop_grace)

    def watch(self, m: Instance) -> None:
        assert m.child is not None
        c, child = self.config, m.child
        self._group().start_soon(lambda: tasks.health_loop(
            self.send, self.http, m.spec, m.gen, child, m.url,
            interval=c.health_interval, within=c.health_timeout,
        ))  # fmt: skip

    def probe(self, m: Instance) -> None:
        self._group().start_soon(
            tasks.probe, self.send, self.http, m.spec, m.gen, m.url, self.config.probe_timeout
        )

    def retry(self, m: Instance, delay: float) -> None:
        log.info("supervisor.restart_scheduled port=%d delay_s=%.2f", m.port, delay)
        self._group().start_soon(tasks.after, self.send, delay, BackoffElapsed(m.spec, m.gen))

    def await_workers(self, m: Instance) -> None:
        m.gen = Generation(m.gen.number + 1)  # the waiting task's, ended by a stop
        c = self.config
        self._group().start_soon(lambda: tasks.await_workers(
            self.send, m.spec, m.gen, within=c.health_timeout, interval=c.backoff_initial
        ))  # fmt: skip

    def drain_timer(self, m: Instance) -> None:
        self._group().start_soon(
            tasks.after, self.send, self.config.drain_timeout, DrainExpired(m.spec)
        )

    async def kill_all(self, records: Iterable[Instance]) -> None:
        """On the way out: stop every child at once (the loop is no longer running), each
        SIGTERM, grace, SIGKILL; the slowest bounds the wait, not their sum."""
        async with anyio.create_task_group() as tg:
            for m in records:
                m.gen.alive = False
                if m.child is not None:
                    tg.start_soon(self._kill_now, m)

    async def _kill_now(self, m: Instance) -> None:
        assert m.child is not None
        await m.child.stop(self.config.stop_grace)
        await anyio.to_thread.run_sync(
            pidfile.remove_pidfile, self.state_dir, self.config.host, m.port
        )


def _other_port(c: SupervisorConfig, taken: set[int]) -> int | None:
    """A free port above the configured one, not one of our records'."""
    for port in range(c.base_port + 1, 65536):
        if port not in taken and bind_error(c.host, port) is None:
            return port
    return None


def _port_problem(host: str, port: int) -> str | None:
    """None if we can listen on host:port, else a sentence naming the port."""
    if (exc := bind_error(host, port)) is None:
        return None
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is held by another process (not a llama-server of ours)"
    return f"cannot listen on {host}:{port}: {exc.strerror}"
