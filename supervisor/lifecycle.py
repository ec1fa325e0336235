"""One instance's process lifecycle, as the actor runs it: start, ready, health, kill, stop,
exit, backoff. The base of `Supervisor`; every method runs inside the actor's loop, so none
of them can interleave with another (the only awaits are spawning and follow-up starts).

Edges are in `supervisor.states`; each goes through `_transition`, which checks it, logs
`supervisor.state_changed` and records a `StateEvent`.
"""

from __future__ import annotations

import errno
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.abc
import msgspec

from core.errors import BackendUnavailable
from supervisor import pidfile, tasks
from supervisor.backoff import backoff_delay, within_budget
from supervisor.command import ServerSpec, build_server_argv
from supervisor.health import Health
from supervisor.instance import Instance
from supervisor.logtail import LogTail
from supervisor.messages import BackoffElapsed, Generation, Reply
from supervisor.process import bind_error, spawn
from supervisor.states import LIVE, State, check_transition

log = logging.getLogger("ai_server.supervisor")


class SupervisorConfig(msgspec.Struct, frozen=True, kw_only=True):
    binary: str
    state_dir: str
    host: str = "127.0.0.1"
    base_port: int = 8080
    # A load is given up only after this long without any output from the child, so a big
    # model on a slow disk that keeps logging progress is never killed mid-load.
    load_timeout: float = 60.0
    start_wait: float = 120.0  # how long a caller waits for a process to become READY
    health_interval: float = 5.0
    health_timeout: float = 3.0
    health_failures: int = 3
    probe_timeout: float = 20.0
    restart_limit: int = 5
    restart_window: float = 300.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    stop_grace: float = 5.0
    drain_timeout: float = 30.0
    memory_budget_mb: int = 1 << 40  # the pool's budget; the default is no limit
    memory_wait: float = 60.0  # a request waits this long for memory to load its model


class StateEvent(msgspec.Struct, frozen=True):
    port: int
    old: State
    new: State
    at: float
    name: str = ""


class Lifecycle:
    def __init__(self, config: SupervisorConfig, http: aiohttp.ClientSession) -> None:
        self.config = config
        self.http = http  # the one shared client for every upstream call, health included
        self._state_dir = Path(config.state_dir).expanduser()
        self._records: dict[ServerSpec, Instance] = {}
        self._send, self._inbox = anyio.create_memory_object_stream[Any](math.inf)
        self._tg: anyio.abc.TaskGroup | None = None
        self.events: deque[StateEvent] = deque(maxlen=1000)
        self._stopping_all = False
        self._stop_all_replies: list[Reply[None]] = []

    def _transition(self, m: Instance, new: State) -> None:
        check_transition(m.state, new)
        log.info(
            "supervisor.state_changed port=%d model=%s %s -> %s", m.port, m.spec.name, m.state, new
        )
        self.events.append(StateEvent(m.port, m.state, new, time.monotonic(), m.spec.name))
        m.state = new

    def _spawn_task(self, fn: Callable[..., Any], *args: object, **kwargs: object) -> None:
        assert self._tg is not None
        if kwargs:
            self._tg.start_soon(lambda: fn(*args, **kwargs))
        else:
            self._tg.start_soon(fn, *args)

    def _unavailable(self, m: Instance, what: str, retry_after: float) -> BackendUnavailable:
        detail = f": {m.last_error}" if m.last_error else ""
        return BackendUnavailable(
            f"llama-server for {m.spec.name or Path(m.spec.model).name} {what}{detail}",
            retry_after=retry_after,
        )

    # Hooks for the actor.
    def _grant_all(self, m: Instance) -> None:
        raise NotImplementedError

    async def _memory_freed(self) -> None:
        raise NotImplementedError

    async def _want(self, m: Instance) -> None:
        raise NotImplementedError

    async def _start(self, m: Instance) -> None:
        if any(r is not m and r.port == m.port and r.state in LIVE for r in self._records.values()):
            m.start_after_stop = True  # the retiring holder of our port stops first
            return
        self._transition(m, State.STARTING)
        m.gen = Generation(m.gen.number + 1)
        m.health_failures = 0
        m.failure_reason = None
        m.measured_mb = None
        m.load_started = time.monotonic()
        if (held := _port_problem(self.config.host, m.port)) is not None:
            if m.port == self.config.base_port or (port := self._other_port(m)) is None:
                await self._fail(m, held)  # the configured port is a promise: say so
                return
            log.warning("supervisor.port_moved model=%s %s; now %d", m.spec.name, held, port)
            m.port, m.url = port, f"http://{self.config.host}:{port}"
        argv = build_server_argv(self.config.binary, m.spec, host=self.config.host, port=m.port)
        assert self._tg is not None
        try:
            m.child = await spawn(argv, self._tg, LogTail(max_lines=100, also=m.log))
        except OSError as exc:
            await self._fail(m, f"cannot start {self.config.binary}: {exc.strerror or exc}")
            return
        pidfile.write_pidfile(self._state_dir, self.config.host, m.port, m.child.pid)
        m.log.feed(f"[ai-server] started pid {m.child.pid} on port {m.port}\n")
        log.info("supervisor.spawned port=%d model=%s pid=%d", m.port, m.spec.name, m.child.pid)
        self._spawn_task(tasks.watch_exit, self._send, m.spec, m.gen, m.child)
        self._spawn_task(
            tasks.await_ready, self._send, self.http, m.spec, m.gen, m.child, m.url,
            load_timeout=self.config.load_timeout, health_timeout=self.config.health_timeout,
        )  # fmt: skip

    def _other_port(self, m: Instance) -> int | None:
        """A free port above the configured one for `m`, whose own was taken by another
        program (an ephemeral client port, say) since it was assigned."""
        taken = {r.port for r in self._records.values() if r is not m and not r.retiring}
        for port in range(self.config.base_port + 1, 65536):
            if port not in taken and bind_error(self.config.host, port) is None:
                return port
        return None

    def _on_ready(self, m: Instance, rss_mb: int | None) -> None:
        if m.state is not State.STARTING:
            return
        self._transition(m, State.READY)
        m.attempt = 0
        m.loads += 1
        m.load_seconds = time.monotonic() - m.load_started
        m.measured_mb = rss_mb
        log.info(
            "supervisor.loaded model=%s seconds=%.2f rss_mb=%s", m.spec.name, m.load_seconds, rss_mb
        )
        self._grant_all(m)
        assert m.child is not None
        self._spawn_task(
            tasks.health_loop, self._send, self.http, m.spec, m.gen, m.child, m.url,
            interval=self.config.health_interval, within=self.config.health_timeout,
        )  # fmt: skip

    def _on_health(self, m: Instance, health: Health, rss_mb: int | None) -> None:
        if m.state is not State.READY:
            return
        if rss_mb is not None:
            m.measured_mb = rss_mb
        if health is Health.OK:
            m.health_failures = 0
            return
        m.health_failures += 1
        if m.health_failures >= self.config.health_failures:
            self._unhealthy(m, f"/health {health} {m.health_failures} times in a row")

    def _unhealthy(self, m: Instance, reason: str) -> None:
        self._transition(m, State.UNHEALTHY)
        self._kill(m, reason)

    def _kill(self, m: Instance, reason: str) -> None:
        """Stop a process that failed; its exit then schedules the restart."""
        m.failure_reason = reason
        if m.child is not None:
            self._spawn_task(m.child.stop, self.config.stop_grace)

    async def _stop(self, m: Instance) -> None:
        """Stop on purpose: no restart unless `start_after_stop` asks for one."""
        if m.state in (State.STARTING, State.READY, State.UNHEALTHY):
            self._transition(m, State.STOPPING)
            assert m.child is not None
            self._spawn_task(m.child.stop, self.config.stop_grace)
        elif m.state in (State.BACKOFF, State.FAILED):
            m.gen.alive = False
            self._transition(m, State.STOPPED)
            await self._after_stopped(m)
        elif m.state is State.STOPPED:
            await self._after_stopped(m)

    async def _on_exit(self, m: Instance, code: int) -> None:
        m.gen.alive = False
        pidfile.remove_pidfile(self._state_dir, self.config.host, m.port)
        tail = m.child.tail.text(last=15) if m.child else ""
        m.child = None
        if m.state is State.STOPPING:
            self._transition(m, State.STOPPED)
            await self._after_stopped(m)
            return
        why = f"{m.failure_reason}; " if m.failure_reason else ""
        m.last_error = f"{why}exited with status {code}\n{tail}".strip()
        log.warning("supervisor.child_exited port=%d model=%s code=%d", m.port, m.spec.name, code)
        if m.spec.rpc:
            self._await_workers(m)
            return
        await self._crashed(m)

    def _await_workers(self, m: Instance) -> None:
        """llama-server aborts when one of its RPC workers dies. Before the restart budget is
        spent on that, find out: wait (in BACKOFF) for every worker to answer again."""
        self._transition(m, State.BACKOFF)
        m.gen = Generation(m.gen.number + 1)  # the waiting task's, ended by a stop
        m.retry_at = time.monotonic() + self.config.backoff_max
        error = self._unavailable(m, "is restarting after a failure", 1)
        self._fail_waiters(m, error, keep_successors=True)
        self._spawn_task(
            tasks.await_workers, self._send, m.spec, m.gen,
            within=self.config.health_timeout, interval=self.config.backoff_initial,
        )  # fmt: skip

    async def _on_workers(self, m: Instance, missing: tuple[str, ...]) -> None:
        if m.state is not State.BACKOFF:
            return
        if missing:
            m.missing_workers = missing
            m.last_error = (
                f"RPC worker {', '.join(missing)} does not answer; waiting for it (llama-server "
                "stops when a worker it uses is gone)"
            )
            log.warning("supervisor.rpc_worker_missing model=%s %s", m.spec.name, missing)
            return
        if m.missing_workers:  # a worker was gone and is back: not a crash of ours
            m.missing_workers = ()
            m.gen.alive = False
            await self._start(m)
            return
        await self._crashed(m)  # every worker answered: the exit was llama-server's own

    async def _crashed(self, m: Instance) -> None:
        """Restart with backoff, unless the restart budget is spent (FAILED)."""
        now = time.monotonic()
        if within_budget(
            m.restart_times, now, limit=self.config.restart_limit, window=self.config.restart_window
        ):
            m.attempt += 1
            m.restarts += 1
            m.restart_times.append(now)
            delay = backoff_delay(
                m.attempt, initial=self.config.backoff_initial, maximum=self.config.backoff_max
            )
            m.retry_at = now + delay
            if m.state is not State.BACKOFF:
                self._transition(m, State.BACKOFF)
            log.info("supervisor.restart_scheduled port=%d delay_s=%.2f", m.port, delay)
            error = self._unavailable(m, "is restarting after a failure", delay)
            self._fail_waiters(m, error, keep_successors=True)
            self._spawn_task(tasks.after, self._send, delay, BackoffElapsed(m.spec, m.gen))
        else:
            self._transition(m, State.FAILED)
            self._fail_waiters(m, self._unavailable(m, "has failed", 30))
            await self._memory_freed()

    async def _fail(self, m: Instance, reason: str) -> None:
        """A start that cannot succeed by retrying (port held, binary missing)."""
        m.last_error = reason
        self._transition(m, State.FAILED)
        self._fail_waiters(m, self._unavailable(m, "cannot start", 30))
        await self._memory_freed()

    def _fail_waiters(
        self, m: Instance, error: Exception, *, keep_successors: bool = False
    ) -> None:
        replies, m.waiters = m.waiters, []
        if not keep_successors:
            replies, m.successors = replies + m.successors, []
        for reply in replies:
            reply.fail(error)

    async def _after_stopped(self, m: Instance) -> None:
        m.draining = False
        replies, m.unload_replies = m.unload_replies, []
        for done in replies:
            done.set(None)
        if m.retiring:
            del self._records[m.spec]
            self._fail_waiters(
                m, BackendUnavailable("llama-server was reconfigured", retry_after=1)
            )
        elif m.start_after_stop:
            m.start_after_stop = False
            await self._start(m)
        elif not m.waiters or self._stopping_all:
            self._fail_waiters(m, BackendUnavailable("llama-server was stopped", retry_after=1))
        else:
            await self._want(m)  # requests came while it was stopping: load it again
        # A successor may have been waiting for this port.
        for other in list(self._records.values()):
            if other.state is State.STOPPED and other.start_after_stop and other is not m:
                other.start_after_stop = False
                await self._start(other)
        await self._memory_freed()
        self._check_all_stopped()

    def _check_all_stopped(self) -> None:
        if all(m.state is State.STOPPED for m in self._records.values()):
            self._stopping_all = False
            replies, self._stop_all_replies = self._stop_all_replies, []
            for reply in replies:
                reply.set(None)

    async def _kill_all(self) -> None:
        """On the way out: stop every child directly (the loop is no longer running)."""
        for m in self._records.values():
            m.gen.alive = False
            if m.child is not None:
                await m.child.stop(self.config.stop_grace)
                pidfile.remove_pidfile(self._state_dir, self.config.host, m.port)
            self._fail_waiters(m, BackendUnavailable("the gateway is shutting down"))


def _port_problem(host: str, port: int) -> str | None:
    """None if we can listen on host:port, else a sentence naming the port."""
    if (exc := bind_error(host, port)) is None:
        return None
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is held by another process (not a llama-server of ours)"
    return f"cannot listen on {host}:{port}: {exc.strerror}"
