"""What goes into the supervisor's inbox: requests from callers (with a `Reply` to await) and
observations from the helper tasks it started (each tagged with the `Generation` it is about,
so news about a process that has since been replaced is recognised and dropped)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

import anyio
import msgspec

from supervisor.command import ServerSpec
from supervisor.health import Health
from supervisor.pool import Policy

T = TypeVar("T")


class Reply(Generic[T]):
    """A one-shot answer from the actor to a waiting caller."""

    def __init__(self) -> None:
        self._done = anyio.Event()
        self._value: T | None = None
        self._error: BaseException | None = None
        # Set by a caller that stopped waiting: the actor must not count it as a lease holder.
        self.abandoned = False
        self.since = time.monotonic()  # a wait for memory is bounded from here

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def succeeded(self) -> bool:
        return self._done.is_set() and self._error is None

    def set(self, value: T) -> None:
        self._value = value
        self._done.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._done.set()

    async def wait(self) -> T:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


class Generation:
    """One spawn of one process. Helper tasks loop while `alive`; the actor clears it when
    that process is gone."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.alive = True


class _Msg(msgspec.Struct, frozen=True):
    pass


# Requests.
class Acquire(_Msg, frozen=True):
    spec: ServerSpec
    reply: Reply[Any]  # a `supervisor.instance.Lease`
    replacing: int | None = None  # the pid the caller saw fail: wait for its successor


class Apply(_Msg, frozen=True):
    plan: Mapping[ServerSpec, Policy]
    reply: Reply[None]


class Unload(_Msg, frozen=True):
    spec: ServerSpec
    reply: Reply[None]


class KeepAlive(_Msg, frozen=True):
    spec: ServerSpec
    seconds: float | None  # how long it stays once idle; None: its policy's TTL again
    reply: Reply[None]


class Restart(_Msg, frozen=True):
    spec: ServerSpec | None
    reply: Reply[None]


class StopAll(_Msg, frozen=True):
    reply: Reply[None]


class SuspectWedge(_Msg, frozen=True):
    spec: ServerSpec


# Observations.
class BecameReady(_Msg, frozen=True):
    spec: ServerSpec
    gen: Generation
    rss_mb: int | None = None


class StartTimedOut(_Msg, frozen=True):
    spec: ServerSpec
    gen: Generation
    reason: str


class ChildExited(_Msg, frozen=True):
    spec: ServerSpec
    gen: Generation
    code: int


class HealthResult(_Msg, frozen=True):
    spec: ServerSpec
    gen: Generation
    health: Health
    rss_mb: int | None = None


class ProbeResult(_Msg, frozen=True):
    spec: ServerSpec
    gen: Generation
    ok: bool


class BackoffElapsed(_Msg, frozen=True):
    spec: ServerSpec
    gen: Generation


class WorkersChecked(_Msg, frozen=True):
    """The RPC workers of a llama-server that exited: which do not answer."""

    spec: ServerSpec
    gen: Generation
    missing: tuple[str, ...]


class DrainExpired(_Msg, frozen=True):
    spec: ServerSpec


class Tick(_Msg, frozen=True):
    pass


class Endpoint(msgspec.Struct, frozen=True):
    """Where a READY llama-server for `spec` listens."""

    spec: ServerSpec
    url: str
    port: int
    pid: int
