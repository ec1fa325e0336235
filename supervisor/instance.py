"""The actor's record of one llama-server instance of a model, and the snapshot callers see.

A model (its name, files, parameters: `ServerSpec`, and its pool `Policy`) is configuration;
an instance is one running (or stopped) process of it, with a state, a port, leases in
flight and memory. Only the actor mutates an `Instance`.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Literal

import msgspec

from supervisor.command import ServerSpec
from supervisor.logtail import LogTail
from supervisor.messages import Endpoint, Generation, Reply
from supervisor.pool import HOLDING, STATUS, Held, Policy, Status
from supervisor.process import ChildProcess
from supervisor.states import State


class ProcessInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    model: str  # the GGUF path
    port: int
    state: State
    status: Status
    pid: int | None
    restarts: int
    last_error: str | None
    memory_mb: int
    memory_source: Literal["estimate", "measured"]
    in_flight: int
    last_used: float | None  # wall clock (time.time()), None if never used
    ttl_s: float | None
    pinned: bool
    loads: int
    evictions: int
    load_seconds: float | None  # the last load, from spawn to READY
    replica: int = 0
    url: str = ""
    rpc_workers: tuple[str, ...] = ()
    missing_workers: tuple[str, ...] = ()  # RPC workers it waits for (in BACKOFF)
    served: int = 0


class Instance:
    def __init__(self, spec: ServerSpec, url: str, port: int, policy: Policy) -> None:
        self.spec = spec
        self.url = url
        self.port = port
        self.policy = policy
        self.state = State.STOPPED
        self.gen = Generation(0)
        self.gen.alive = False
        self.child: ChildProcess | None = None
        # Every process's output in one log, kept across restarts for the live log view.
        self.log = LogTail(max_lines=500)
        self.restart_times: deque[float] = deque(maxlen=64)
        self.restarts = 0
        self.attempt = 0
        self.health_failures = 0
        self.probing = False
        self.last_error: str | None = None
        self.failure_reason: str | None = None  # why we are killing it, for last_error
        self.retry_at = 0.0
        self.waiters: list[Reply[Endpoint]] = []
        self.successors: list[Reply[Endpoint]] = []  # leases that wait through a restart
        self.unload_replies: list[Reply[None]] = []
        self.in_flight = 0
        self.last_used = 0.0
        self.draining = False  # stop once the leases in flight end (unload, reconfigure)
        self.retiring = False  # and forget this record then: its spec is no longer wanted
        self.start_after_stop = False
        self.too_big: str | None = None  # why it can never fit the memory budget
        self.measured_mb: int | None = None
        self.loads = 0
        self.evictions = 0
        self.load_started = 0.0
        self.load_seconds: float | None = None
        self.missing_workers: tuple[str, ...] = ()
        self.served = 0  # requests leased to it

    @property
    def memory_mb(self) -> int:
        if self.measured_mb is not None and self.state in (State.READY, State.UNHEALTHY):
            return self.measured_mb
        return self.policy.estimate_mb

    def held(self, queued: int) -> Held:
        return Held(
            key=self.spec,
            memory_mb=self.memory_mb,
            state=self.state,
            in_flight=self.in_flight,
            queued=queued,
            pinned=self.policy.pinned,
            draining=self.draining,
            last_used=self.last_used,
        )

    @property
    def holds_memory(self) -> bool:
        return self.state in HOLDING

    def info(self) -> ProcessInfo:
        measured = self.measured_mb is not None and self.state in (State.READY, State.UNHEALTHY)
        idle_for = time.monotonic() - self.last_used
        return ProcessInfo(
            name=self.spec.name,
            model=self.spec.model,
            port=self.port,
            state=self.state,
            status="failed" if self.too_big else STATUS[self.state],
            pid=self.child.pid if self.child else None,
            restarts=self.restarts,
            last_error=self.too_big or self.last_error,
            memory_mb=self.memory_mb,
            memory_source="measured" if measured else "estimate",
            in_flight=self.in_flight,
            last_used=time.time() - idle_for if self.last_used else None,
            ttl_s=self.policy.ttl_s,
            pinned=self.policy.pinned,
            loads=self.loads,
            evictions=self.evictions,
            load_seconds=self.load_seconds,
            replica=self.spec.replica,
            url=self.url,
            rpc_workers=self.spec.rpc,
            missing_workers=self.missing_workers,
            served=self.served,
        )
