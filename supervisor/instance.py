"""The actor's record of one llama-server instance of a model, and the snapshot callers see.

A model (its name, files, parameters: `ServerSpec`, and its pool `Policy`) is configuration;
an instance is one running (or stopped) process of it: its lifecycle (`Life`, which only
`supervisor.decide` changes), its process, the requests waiting for it, leases in flight
and memory. Only the actor mutates an `Instance`.
"""

from __future__ import annotations

import math
import time
from typing import Literal

import msgspec

from supervisor.command import ServerSpec
from supervisor.lifecycle import Life
from supervisor.logtail import LogTail
from supervisor.messages import Endpoint, Generation, Reply
from supervisor.pool import HOLDING, STATUS, Held, Policy, Status
from supervisor.process import ChildProcess
from supervisor.states import DRAINING, State


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
        self.life = Life()
        self.gen = Generation(0)
        self.gen.alive = False
        self.child: ChildProcess | None = None
        # Every process's output in one log, kept across restarts for the live log view.
        self.log = LogTail(max_lines=500)
        self.waiters: list[Reply[Lease]] = []
        self.successors: list[Reply[Lease]] = []  # leases that wait through a restart
        self.unload_replies: list[Reply[None]] = []
        # Leases in flight. Counted by the actor's own methods, but two of them (the
        # shortcut lease and release) run in the caller's task: see `supervisor.actor`.
        self.in_flight = 0
        self.last_used = 0.0
        # How long it stays loaded once idle, as the last request that said so asked
        # (Ollama's keep_alive; math.inf: for ever); None: its policy's ttl_s.
        self.keep_alive_s: float | None = None
        self.measured_mb: int | None = None
        self.loads = 0
        self.evictions = 0
        self.load_started = 0.0
        self.load_seconds: float | None = None
        self.served = 0  # requests leased to it

    @property
    def state(self) -> State:
        return self.life.state

    @property
    def ttl_s(self) -> float | None:
        """Unload after this long idle: a request's keep_alive, else the policy's; None or
        math.inf: never."""
        return self.keep_alive_s if self.keep_alive_s is not None else self.policy.ttl_s

    @property
    def draining(self) -> bool:
        return self.life.goal in DRAINING

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
            status=STATUS[self.state],  # from the state alone: they cannot disagree
            pid=self.child.pid if self.child else None,
            restarts=self.life.restarts,
            last_error=self.life.last_error,
            memory_mb=self.memory_mb,
            memory_source="measured" if measured else "estimate",
            in_flight=self.in_flight,
            last_used=time.time() - idle_for if self.last_used else None,
            ttl_s=self.ttl_s if self.ttl_s != math.inf else None,
            pinned=self.policy.pinned,
            loads=self.loads,
            evictions=self.evictions,
            load_seconds=self.load_seconds,
            replica=self.spec.replica,
            url=self.url,
            rpc_workers=self.spec.rpc,
            missing_workers=self.life.missing_workers,
            served=self.served,
        )


class LeaseError(RuntimeError):
    """A lease released twice, or more releases than leases: a bug, never hidden."""


class Lease:
    """One granted lease: where to send the request, and the record it counts against (not
    the spec: a spec retired and configured again is a new record)."""

    def __init__(self, record: Instance, endpoint: Endpoint) -> None:
        self.record = record
        self.endpoint = endpoint
        self.released = False


class Release(msgspec.Struct, frozen=True):
    """A lease ended and the actor must act on it (see `Supervisor.lease`)."""

    lease: Lease
